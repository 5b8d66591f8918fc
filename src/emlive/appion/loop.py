"""What the drop-in commands share: the run folder's lock, the cluster, the following loop.

The loop asks for the images still to do (``pending``), submits each as one Dask task,
stores each result as it comes back (``store``: the Appion sink, in this process — workers
never touch a database), and polls again for images Leginon added meanwhile; it ends when
nothing is left and nothing is in flight (``--no-wait``), after ``--limit`` images, or on
SIGTERM/SIGINT once the tasks in flight are stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, Future, wait

from emlive.config import ClusterSettings, Settings

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"  # classic Appion's name for it


class RunLocked(RuntimeError):
    """Another run holds the run folder."""


@contextlib.contextmanager
def run_lock(rundir: Path, prog: str) -> Iterator[Path]:
    """Hold ``rundir/.lock`` (an exclusive ``flock``, freed by the kernel however the process
    ends) for the run; :class:`RunLocked` when another process holds it."""
    rundir.mkdir(parents=True, exist_ok=True)
    path = rundir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLocked(
            f"{rundir} is in use by another {prog} (pid {holder}, lock {path}): a second run on the same run "
            "folder is refused; wait for that one to finish or stop it, or give another --rundir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


def cluster_settings(settings: Settings, *, nproc: int | None, gpu_ids: list[int] | None = None) -> Settings:
    """The cluster to run on: ``DASK_CLUSTER_CONFIG`` (a TOML file of emlive's ``[cluster]``
    keys) when set, else emlive's ``[cluster]``; ``--nproc`` sets the local worker count."""
    cluster = settings.cluster
    if path := os.environ.get("DASK_CLUSTER_CONFIG"):
        try:
            table = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"DASK_CLUSTER_CONFIG={path}: cannot be read as TOML ({err})") from None
        cluster = ClusterSettings.model_validate(table.get("cluster", table))
    update: dict[str, Any] = {}
    if nproc is not None:
        update["n_workers"] = nproc
    if gpu_ids:
        update["gpu_ids"] = gpu_ids
    return settings.model_copy(update={"cluster": cluster.model_copy(update=update)})


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: finish what is in flight, then stop."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("%s: finishing the images in flight, then stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@dataclass(frozen=True)
class Task:
    """One image's work: ``function(*args)`` on a worker."""

    image_id: int
    function: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass
class Outcome:
    done: int = 0
    failed: dict[int, str] = field(default_factory=dict)


def follow(
    client: Client,
    *,
    pending: Callable[[int, set[int]], list[Task]],
    store: Callable[[int, Any], None],
    wait_for_new: bool,
    limit: int | None,
    stop: threading.Event,
    max_in_flight: int,
    poll_interval_s: float = 5.0,
) -> Outcome:
    """Run the tasks ``pending(room, skip)`` gives (at most ``room``, none of ``skip``) and
    ``store`` their results, until done (see the module doc). A task that raises is logged
    and not tried again in this run (the next run, ``--continue``, tries it again)."""
    outcome = Outcome()
    in_flight: dict[Future, int] = {}
    started = 0
    next_poll_s = 0.0
    while True:
        room = min(max_in_flight - len(in_flight), max(0, limit - started) if limit is not None else max_in_flight)
        if not stop.is_set() and room > 0 and time.monotonic() >= next_poll_s:
            skip = set(in_flight.values()) | set(outcome.failed)
            tasks = pending(room, skip)[:room]
            for task in tasks:
                in_flight[client.submit(task.function, *task.args, pure=False)] = task.image_id
            started += len(tasks)
            if len(tasks) < room:  # all there is: ask again after the poll interval
                next_poll_s = time.monotonic() + poll_interval_s
        if not in_flight:
            if stop.is_set() or not wait_for_new or (limit is not None and started >= limit):
                return outcome
            stop.wait(max(0.0, min(poll_interval_s, next_poll_s - time.monotonic())))
            continue
        try:
            finished = wait(list(in_flight), timeout=min(poll_interval_s, 1.0), return_when="FIRST_COMPLETED").done
        except TimeoutError:
            continue
        for future in finished:
            image_id = in_flight.pop(future)
            if future.status == "finished":
                store(image_id, future.result())
                outcome.done += 1
            else:
                error = future.exception()
                log.error("image %d failed: %s: %s", image_id, type(error).__name__, error)
                outcome.failed[image_id] = f"{type(error).__name__}: {error}"


def follow_on_cluster(
    settings: Settings,
    *,
    pending: Callable[[int, set[int]], list[Task]],
    store: Callable[[int, Any], None],
    wait_for_new: bool,
    limit: int | None,
) -> Outcome:
    """:func:`follow` on the configured cluster (opened and closed here), its workers given the
    ``[tools]`` settings, stopping on SIGTERM/SIGINT; two tasks in flight per worker thread."""
    from emlive.runtime.cluster import ToolsPlugin, open_cluster, register_worker_plugin, worker_count

    stop = stop_on_signals()
    with open_cluster(settings.cluster) as cluster:
        register_worker_plugin(cluster.client, ToolsPlugin(settings.tools, settings.cluster.gpu_ids))
        return follow(
            cluster.client, pending=pending, store=store, wait_for_new=wait_for_new, limit=limit, stop=stop,
            max_in_flight=2 * worker_count(settings.cluster) * cluster.threads_per_worker,
        )
