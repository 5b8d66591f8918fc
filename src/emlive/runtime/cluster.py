"""Where the work runs: a Dask client on a local cluster, a batch system or a given scheduler.

Batch systems come from dask-jobqueue (one job = one worker process); their worker count is
set by the controller's scaling decisions (``Cluster.scale``), never by Dask's ``adapt``, so the
hysteresis that keeps workers through short lulls is ours and tested.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster, SpecCluster

from distributed.diagnostics.plugin import WorkerPlugin

from emlive.config import ClusterSettings
from emlive.pipeline.registry import registry
from emlive.tools import ToolsSettings, configure_tools

_WALLTIME_MARGIN_S = 600.0
_LOCAL_RESTART_GRACE_S = 20.0  # a local worker gone this long is started anew (a nanny restarts one in 1-3 s)
_LOCAL_WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}
"""Dask settings of local workers. Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``;
setting it turns off glibc's dynamic mmap threshold, so every array over 128 kB is mmapped and
unmapped anew (page faults each time): on 128x128 movies that doubled a worker's CPU per
exposure (benchmarks/tiny.py). Local workers get glibc's defaults, as ``emlive motioncorr`` has
(a MALLOC_TRIM_THRESHOLD_ in the environment still reaches them). Dask's statistical profiler
(its dashboard's profile page) sampled each task's stack every 10 ms."""


@dataclass(frozen=True)
class Cluster:
    """A client; how to ask for a number of workers and to replace lost ones (None: fixed size)."""

    client: Client
    scale: Callable[[int], None] | None
    threads_per_worker: int
    replace_lost: Callable[[], list[str]] | None = None


def worker_count(settings: ClusterSettings) -> int:
    """Local workers, or the most a batch system may be asked for."""
    return settings.n_workers or len(settings.gpu_ids) or os.cpu_count() or 1


def walltime_s(walltime: str) -> float:
    """Seconds in a ``[D-]HH:MM:SS`` / ``MM:SS`` walltime."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", walltime.strip())
    if match is None:
        raise ValueError(f"walltime {walltime!r} is not [D-]HH:MM:SS")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def jobqueue_options(settings: ClusterSettings) -> dict[str, object]:
    """Keyword arguments of a dask-jobqueue cluster (pure: tested without a batch system)."""
    lifetime_s = settings.worker_lifetime_s or max(60.0, walltime_s(settings.walltime) - _WALLTIME_MARGIN_S)
    directives = list(settings.job_extra_directives)
    if settings.gpus_per_job and settings.kind == "slurm":
        directives.append(f"--gres=gpu:{settings.gpus_per_job}")
    options: dict[str, object] = {
        "cores": settings.threads_per_worker,
        "processes": 1,
        "memory": settings.memory,
        "walltime": settings.walltime,
        "queue": settings.queue,
        "account": settings.account,
        "job_extra_directives": directives,
        "python": settings.python or sys.executable,
        "log_directory": settings.log_directory,
        "interface": settings.interface,
        "worker_extra_args": [
            f"--lifetime={int(lifetime_s)}s",
            f"--lifetime-stagger={int(lifetime_s * 0.1)}s",
        ]
        + ([f"--resources=GPU={settings.gpus_per_job}"] if settings.gpus_per_job else []),
    }
    if settings.scheduler_host:
        options["scheduler_options"] = {"host": settings.scheduler_host}
    return {key: value for key, value in options.items() if value is not None}


def import_batch_system(settings: ClusterSettings) -> None:
    """Import dask-jobqueue now when a batch system is configured. Its import sets a SIGINT
    handler, which only the main thread may do: a service that opens the cluster in its
    controller's thread (``emlive serve``) imports it first, in the main thread (its own signal
    handlers, set afterwards, win)."""
    if settings.kind not in ("local", "address"):
        import dask_jobqueue  # noqa: F401


def _jobqueue_class(kind: str) -> type:
    import dask_jobqueue

    return {
        "slurm": dask_jobqueue.SLURMCluster,
        "pbs": dask_jobqueue.PBSCluster,
        "sge": dask_jobqueue.SGECluster,
        "lsf": dask_jobqueue.LSFCluster,
        "htcondor": dask_jobqueue.HTCondorCluster,
    }[kind]


@contextlib.contextmanager
def open_cluster(settings: ClusterSettings) -> Iterator[Cluster]:
    """The configured cluster, closed on exit (its batch jobs cancelled)."""
    if settings.kind == "address":
        if not settings.address:
            raise ValueError("cluster.kind = 'address' needs cluster.address (e.g. tcp://host:8786)")
        with Client(settings.address) as client:
            yield Cluster(client, None, settings.threads_per_worker)
        return
    if settings.kind == "local":
        with dask.config.set(_LOCAL_WORKER_CONFIG):
            cluster = LocalCluster(
                n_workers=worker_count(settings),
                threads_per_worker=settings.threads_per_worker,
                processes=True,
                resources={"GPU": 1} if settings.gpu_ids else None,
                memory_limit=settings.memory_limit,
                dashboard_address=":0",  # a free port: several controllers (and their tests) on one machine
                silence_logs=logging.ERROR,
                preload=[__name__],  # dask_setup: workers ignore the terminal's Ctrl+C
            )
        scale = None
        replace_lost = _dead_worker_restarter(cluster, grace_s=_LOCAL_RESTART_GRACE_S)
    else:
        cluster = _jobqueue_class(settings.kind)(**jobqueue_options(settings))
        scale, replace_lost = cluster.scale, _lost_worker_replacer(cluster)
    try:
        with Client(cluster) as client:
            yield Cluster(client, scale, settings.threads_per_worker, replace_lost)
    finally:
        cluster.close()


def dask_setup(worker: Any) -> None:
    """Run in each local worker process as it starts (this module is its Dask ``preload``):
    SIGINT is ignored there, so only the controller decides when to stop.

    Ctrl+C in a terminal sends SIGINT to the whole foreground process group, the local Dask
    workers included: each would die with a KeyboardInterrupt traceback while the controller
    was finishing their tasks (and then waited for ever). Runs in the worker's main thread,
    before any task. Tools a worker runs get SIGINT too (they are in the terminal's process
    group) unless they ignore it themselves; SIGTERM and SIGKILL still reach every process.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not logging.getLogger("emlive").handlers:  # emlive's warnings in the terminal, each kind once
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        handler.addFilter(RepeatedWarnings())
        logging.getLogger("emlive").addHandler(handler)


class RepeatedWarnings(logging.Filter):
    """Shows a warning the first time its kind (logger and message template) is logged, then only
    counts: the 10th, 100th, 1000th … say how many there were so far. Errors always pass.

    A worker processing many small movies of one session would otherwise print the same warning
    for each (``5x5 patches would be under 48 px …``) over the controller's progress bar; each
    exposure's own outcome is in the database and the tables anyway.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        key = (record.name, record.msg)
        n = self._seen[key] = self._seen.get(key, 0) + 1
        if n == 1:
            return True
        if n >= 10 and str(n).rstrip("0") == "1":
            record.msg, record.args = f"{record.getMessage()} (the {n}th warning like this; the others are not shown)", None
            return True
        return False


def _lost_worker_replacer(cluster: SpecCluster) -> Callable[[], list[str]]:
    """A function that replaces workers whose jobs ended (cancelled, walltime, node failure).

    dask-jobqueue keeps asking for the workers it was told to, but does not notice that a job
    died; a worker that was connected once and is gone now has its job submitted anew. Jobs still
    waiting in the queue (never connected) keep their place.
    """
    seen: set[str] = set()

    def replace_lost() -> list[str]:
        connected = {str(worker["name"]) for worker in cluster.scheduler_info["workers"].values()}
        seen.update(connected)
        lost = [name for name in cluster.worker_spec if str(name) in seen and str(name) not in connected]
        for name in lost:  # forget the dead job, so a new one is started under a fresh spec
            del cluster.worker_spec[name]
            cluster.workers.pop(name, None)
            seen.discard(str(name))
        if lost:
            cluster.scale(len(cluster.worker_spec) + len(lost))
        return [str(name) for name in lost]

    return replace_lost


def _dead_worker_restarter(cluster: SpecCluster, *, grace_s: float) -> Callable[[], list[str]]:
    """A function that starts anew the local workers that have been gone for ``grace_s``.

    A local worker's nanny restarts its process when it dies; but when the new process is killed
    too while it starts (a worker SIGKILLed again and again, or the machine out of memory), the
    nanny gives up and the cluster keeps it as if it were there: with every worker gone, the
    tasks in flight would wait for ever. Such a nanny is closed and a new one started in its
    place (same name, same resources).
    """
    missing_since: dict[object, float] = {}

    def restart_dead() -> list[str]:
        connected = {str(worker["name"]) for worker in cluster.scheduler_info["workers"].values()}
        now_s = time.monotonic()
        dead = []
        for name in list(cluster.worker_spec):
            if str(name) in connected:
                missing_since.pop(name, None)
            elif now_s - missing_since.setdefault(name, now_s) >= grace_s:
                dead.append(name)
        for name in dead:
            del missing_since[name]
            if (nanny := cluster.workers.pop(name, None)) is not None:
                cluster.loop.add_callback(nanny.close)
        if dead:
            cluster.scale(len(cluster.worker_spec))  # starts the spec's workers that are not there
        return [str(name) for name in dead]

    return restart_dead


def register_worker_plugin(client: Client, plugin: WorkerPlugin, *, attempts: int = 5, wait_s: float = 1.0) -> None:
    """Give ``plugin`` to every worker, those up now and those to come.

    The scheduler keeps the plugin and tells each worker; a worker that dies while it is told
    (SIGKILLed, out of memory, its job cancelled) makes the call raise, although the plugin is
    kept for the workers that start later (the dead one's replacement too). It is asked again,
    rather than a service stopping because a worker died as it started.
    """
    for attempt in range(1, attempts + 1):
        try:
            client.register_plugin(plugin)
            return
        except OSError as err:  # distributed's CommClosedError is one
            if attempt == attempts:
                raise
            logging.getLogger(__name__).warning(
                "a worker went away while it was given the %s plugin (%s); asking again", plugin.name, err
            )
            time.sleep(wait_s)


class ToolsPlugin(WorkerPlugin):
    """Gives every worker process the ``[tools]`` settings and, on a local GPU worker, its GPU,
    and loads the installed steps (their engines' imports are paid once, when the worker
    starts, not by its first exposure; a plugin that fails to load is logged there).

    Local workers are numbered 0…n-1; worker ``i`` uses ``gpu_ids[i % len(gpu_ids)]``, which
    reaches the tools as ``CUDA_VISIBLE_DEVICES`` (:func:`emlive.tools.run_tool`). Batch-system
    workers get their GPUs from the batch system, which sets that variable itself.
    """

    name = "emlive-tools"

    def __init__(self, tools: ToolsSettings, gpu_ids: list[int]) -> None:
        self.tools = tools
        self.gpu_ids = list(gpu_ids)

    def setup(self, worker: Any) -> None:
        index = worker.name
        gpu_id = self.gpu_ids[index % len(self.gpu_ids)] if self.gpu_ids and isinstance(index, int) else None
        configure_tools(self.tools, gpu_id=gpu_id)
        registry()
