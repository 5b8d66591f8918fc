"""Local Dask workers SIGKILLed while they compute: the task is retried, never waited on for ever."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest
from distributed import Client, LocalCluster

from emlive.acquisition import Acquisition
from emlive.config import load_settings
from emlive.db.setup import sqlite_url
from emlive.pipeline.exposure import PipelineParams
from emlive.runtime.cluster import Cluster
from emlive.runtime.loop import run_sessions

from ..db.conftest import activate
from .test_sessions import _movies, timed_result

pytestmark = pytest.mark.slow

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the worker processes cannot import tests/


def announced_result(spec, params):
    """Says which process computes which movie (a file ``<movie>.<pid>`` in ``started/``), then
    computes (:func:`timed_result`)."""
    started = spec.out_dir.parent / "started"
    (started / f"{spec.movie_path.name}.{os.getpid()}").touch()
    return timed_result(spec, params)


def _killer(started: Path, kills: dict[str, int], done: threading.Event) -> threading.Thread:
    """SIGKILLs the worker process computing each movie named in ``kills``, that many times."""

    def run() -> None:
        killed: set[str] = set()
        while not done.is_set():
            for marker in started.iterdir():
                movie, pid = marker.name.rsplit(".", 1)
                if marker.name not in killed and kills.get(movie, 0) > 0:
                    killed.add(marker.name)
                    kills[movie] -= 1
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.02)

    return threading.Thread(target=run, daemon=True)


def test_a_task_whose_worker_is_killed_is_retried_and_one_killed_every_time_fails_with_a_reason(tmp_path):
    activate(sqlite_url(tmp_path / "emlive.sqlite3"))
    from emlive.db import store

    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    session = store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acq)
    _movies(tmp_path / "raw", [f"m{i}.mrc" for i in range(4)])
    (tmp_path / "started").mkdir()
    settings = load_settings(
        watch={"settle_s": 0, "poll_interval_s": 0.1}, cluster={"n_workers": 2},
        scheduler={"retry_backoff_s": 0, "max_attempts": 2},
    )
    kills = {"m1.mrc": 1, "m2.mrc": 100}  # m1: killed once, then computed; m2: killed every time
    done = threading.Event()
    killer = _killer(tmp_path / "started", kills, done)
    killer.start()
    outcome: dict = {}

    def control() -> None:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local:
            with Client(local) as client:
                outcome["counts"] = run_sessions(
                    [(session, PipelineParams(acquisition=acq))], settings, watch=False,
                    cluster=Cluster(client, None, 1), task=announced_result,
                )

    controlling = threading.Thread(target=control, daemon=True)
    controlling.start()
    controlling.join(timeout=180)
    done.set()
    assert not controlling.is_alive(), "the controller still waits for tasks whose workers were killed"
    counts = outcome["counts"][session.pk]
    assert (counts.get("processed"), counts.get("failed")) == (3, 1), counts
    failed = session.exposures.get(path="m2.mrc")
    assert "worker" in failed.fail_reason.lower() and "2 attempts" in failed.fail_reason, failed.fail_reason


def test_a_local_worker_its_nanny_failed_to_restart_is_started_anew_and_nothing_waits_for_ever(tmp_path, caplog, monkeypatch):
    """A worker SIGKILLed mid-task whose nanny then fails to start a new process (killed again as
    it started, or out of memory): the nanny gives up on it and the cluster keeps it as if it
    were there. With no worker left the tasks in flight would wait for ever; the controller
    starts a new one in its place."""
    import psutil
    from distributed.nanny import Nanny

    from emlive.runtime import cluster as cluster_module

    monkeypatch.setattr(cluster_module, "_LOCAL_RESTART_GRACE_S", 2.0)  # 20 s in service
    activate(sqlite_url(tmp_path / "emlive.sqlite3"))
    from emlive.db import store

    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    session = store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acq)
    _movies(tmp_path / "raw", [f"m{i}.mrc" for i in range(4)])
    (tmp_path / "started").mkdir()
    settings = load_settings(
        watch={"settle_s": 0, "poll_interval_s": 0.1}, cluster={"n_workers": 1},
        scheduler={"retry_backoff_s": 0, "max_attempts": 3},
    )
    restarts_to_fail = [0]
    instantiate = Nanny.instantiate

    async def failing_once(self):  # the nannies run in this process (a local cluster)
        if restarts_to_fail[0] > 0:
            restarts_to_fail[0] -= 1
            raise RuntimeError("the new worker process was killed as it started")
        return await instantiate(self)

    monkeypatch.setattr(Nanny, "instantiate", failing_once)

    def kill_the_worker_once_it_computes() -> None:
        while not any((tmp_path / "started").iterdir()):
            time.sleep(0.02)
        restarts_to_fail[0] = 1
        for child in psutil.Process().children():
            if "resource_tracker" not in " ".join(child.cmdline()):
                child.kill()

    outcome: dict = {}

    def control() -> None:
        with cluster_module.open_cluster(settings.cluster) as cluster:  # local, as `emlive process` has it
            outcome["counts"] = run_sessions(
                [(session, PipelineParams(acquisition=acq))], settings, watch=False, cluster=cluster,
                task=announced_result,
            )

    killer = threading.Thread(target=kill_the_worker_once_it_computes, daemon=True)
    killer.start()
    controlling = threading.Thread(target=control, daemon=True)
    controlling.start()
    controlling.join(timeout=120)
    assert restarts_to_fail == [0], "the nanny was never asked to restart the worker"
    assert not controlling.is_alive(), "the controller still waits for a worker that was never started again"
    assert outcome["counts"][session.pk]["processed"] == 4, outcome["counts"]
    assert any("were lost" in r.getMessage() for r in caplog.records)


def test_a_worker_dying_while_it_is_given_the_plugin_does_not_stop_the_controller(caplog):
    """Seen in the soak: a worker SIGKILLed as the service started made ``register_plugin``
    raise CommClosedError, and the service stopped. The plugin is asked for again."""
    from distributed.comm.core import CommClosedError

    from emlive.runtime.cluster import ToolsPlugin, register_worker_plugin
    from emlive.tools import ToolsSettings

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as local:
        with Client(local) as client:
            register = client.register_plugin
            calls: list[str] = []

            def dying_once(plugin, *args, **kwargs):
                calls.append(plugin.name)
                if len(calls) == 1:
                    raise CommClosedError("in <TCP (closed) ConnectionPool.register_worker_plugin>: Stream is closed")
                return register(plugin, *args, **kwargs)

            client.register_plugin = dying_once
            register_worker_plugin(client, ToolsPlugin(ToolsSettings(), []), wait_s=0.0)
            assert calls == ["emlive-tools", "emlive-tools"]
            assert "emlive-tools" in client.run(lambda dask_worker: list(dask_worker.plugins))[next(iter(local.scheduler_info["workers"]))]
            client.register_plugin = lambda plugin, *a, **k: (_ for _ in ()).throw(CommClosedError("gone"))
            with pytest.raises(CommClosedError):  # a cluster that keeps failing is still an error
                register_worker_plugin(client, ToolsPlugin(ToolsSettings(), []), attempts=2, wait_s=0.0)
    assert sum("asking again" in r.getMessage() for r in caplog.records) == 2
