"""Batch-system options for dask-jobqueue, built from settings (pure; no batch system needed)."""

from __future__ import annotations

import pytest

from emlive.config import ClusterSettings
from emlive.runtime.cluster import jobqueue_options, walltime_s


def test_workers_retire_before_the_walltime_staggered_so_walltime_kills_no_task():
    options = jobqueue_options(ClusterSettings(kind="slurm", walltime="04:00:00", threads_per_worker=4))
    assert options["worker_extra_args"] == ["--lifetime=13800s", "--lifetime-stagger=1380s"]
    assert options["cores"] == 4 and options["processes"] == 1 and options["walltime"] == "04:00:00"


def test_gpus_queue_account_and_extra_directives_reach_the_job():
    settings = ClusterSettings(
        kind="slurm", queue="gpu", account="cryoem", gpus_per_job=2, job_extra_directives=["--qos=high"],
        worker_lifetime_s=3600, scheduler_host="10.0.0.5",
    )
    options = jobqueue_options(settings)
    assert options["queue"] == "gpu" and options["account"] == "cryoem"
    assert options["job_extra_directives"] == ["--qos=high", "--gres=gpu:2"]
    assert options["worker_extra_args"] == ["--lifetime=3600s", "--lifetime-stagger=360s", "--resources=GPU=2"]
    assert options["scheduler_options"] == {"host": "10.0.0.5"}


@pytest.mark.parametrize(("text", "seconds"), [("02:00:00", 7200), ("1-00:00:30", 86430), ("45:00", 2700)])
def test_walltimes_are_read_as_batch_systems_write_them(text, seconds):
    assert walltime_s(text) == seconds


def test_a_bad_walltime_is_a_clear_error():
    with pytest.raises(ValueError, match="not \\[D-\\]HH:MM:SS"):
        walltime_s("two hours")


def test_local_workers_keep_glibcs_malloc_thresholds_and_skip_dasks_profiler(monkeypatch):
    """Dask's MALLOC_TRIM_THRESHOLD_=65536 doubled a worker's CPU on small movies (mmap per array)."""
    import os

    import dask

    from emlive.runtime.cluster import open_cluster

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with open_cluster(ClusterSettings(n_workers=1)) as cluster:
        seen = cluster.client.run(
            lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), dask.config.get("distributed.worker.profile.enabled"))
        )
    assert list(seen.values()) == [(None, False)]
    assert dask.config.get("distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_") == 65536  # only there


def test_a_worker_shows_each_kind_of_warning_once_then_counts():
    import logging

    from emlive.runtime.cluster import RepeatedWarnings

    shown: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: shown.append(record.getMessage())  # type: ignore[method-assign]
    handler.addFilter(RepeatedWarnings())
    log = logging.getLogger("emlive.test_repeats")
    log.addHandler(handler)
    try:
        for i in range(100):
            log.warning("%s: patches would be under %d px", f"m{i}.mrc", 48)
        log.warning("%s: no Thon rings found", "m0.mrc")
        log.error("%s: failed", "m1.mrc")
        log.error("%s: failed", "m2.mrc")
    finally:
        log.removeHandler(handler)
    assert shown == [
        "m0.mrc: patches would be under 48 px",
        "m9.mrc: patches would be under 48 px (the 10th warning like this; the others are not shown)",
        "m99.mrc: patches would be under 48 px (the 100th warning like this; the others are not shown)",
        "m0.mrc: no Thon rings found", "m1.mrc: failed", "m2.mrc: failed",
    ]
