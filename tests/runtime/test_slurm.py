"""A session on a real Slurm cluster through dask-jobqueue's SLURMCluster.

Needs a running Slurm (CI starts one with scripts/start-slurm.sh); skipped with the reason
where there is none, failed instead when EMLIVE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from emlive.synth.session import write_session

from ..conftest import emlive_command, skip_or_fail

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

DEFAULT_CONF = Path("/tmp/emlive-slurm/slurm.conf")


@pytest.fixture
def slurm_env():
    env = dict(os.environ)
    if "SLURM_CONF" not in env and DEFAULT_CONF.exists():
        env["SLURM_CONF"] = str(DEFAULT_CONF)
    if shutil.which("sbatch") is None:
        skip_or_fail("Slurm is not installed (sbatch not on PATH); run scripts/start-slurm.sh")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=env)
    if "UP" not in ping.stdout:
        skip_or_fail(f"no Slurm controller answers (scontrol ping: {ping.stdout.strip() or ping.stderr.strip()})")
    return env


def _jobs(env, name: str) -> list[tuple[str, str]]:
    out = subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True, env=env, check=True
    ).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


def _counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        try:
            return dict(con.execute("SELECT state, count(*) FROM emlive_exposure GROUP BY state").fetchall())
        except sqlite3.OperationalError:
            return {}


def _wait_for(predicate, *, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_slurm_workers_scale_with_the_backlog_and_a_cancelled_job_loses_nothing(slurm_env, tmp_path):
    source = tmp_path / "source"
    truth = write_session(source, n_movies=4, formats=("mrc",), seed=2, shape=(1536, 1536), n_frames=24)
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    job_name = f"emlive-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    config = tmp_path / "emlive.toml"
    config.write_text(
        "[cluster]\n"
        'kind = "slurm"\n'
        "n_workers = 2\n"
        "min_workers = 0\n"
        "scale_down_after_s = 3\n"
        'memory = "3GiB"\n'
        'walltime = "00:15:00"\n'
        'scheduler_host = "127.0.0.1"\n'
        f'log_directory = "{tmp_path / "jobs"}"\n'
        f'job_extra_directives = ["--job-name={job_name}"]\n'
        "[scheduler]\n"
        "retry_backoff_s = 0\n"
    )
    db = out / "emlive.sqlite3"
    proc = subprocess.Popen(
        emlive_command(
            "process", raw, "-o", out, "--apix", 1.0, "--dose-per-frame", 1.0, "--watch", "--settle-s", 0.5,
            "--config", config,
        ),
        env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(lambda: db.exists() and "found" in _counts(db) or db.exists(), timeout_s=60, what="the database")
        time.sleep(3)
        assert _jobs(slurm_env, job_name) == [], "workers were asked for with nothing to do"

        for movie in truth.movies:  # a burst
            os.replace(source / "raw" / movie.name, raw / movie.name)
        jobs = _wait_for(
            lambda: (j := _jobs(slurm_env, job_name)) and len(j) == 2 and j, timeout_s=90, what="two worker jobs"
        )
        # both workers took a movie each when they connected; once one is done, the other is
        # still working on its movie: cancel that worker's job
        _wait_for(lambda: _counts(db).get("processed", 0) >= 1, timeout_s=180, what="a first result")
        running = _wait_for(
            lambda: [job for job, state in _jobs(slurm_env, job_name) if state == "RUNNING"],
            timeout_s=60, what="a running worker job",
        )
        subprocess.run(["scancel", running[-1]], env=slurm_env, check=True)

        seen = set()

        def all_done():
            seen.update(job for job, _ in _jobs(slurm_env, job_name))
            return _counts(db).get("processed", 0) == 4

        _wait_for(all_done, timeout_s=300, what="all four exposures")
        assert seen - {job for job, _ in jobs}, "the cancelled worker's job was not replaced"
        # idle: the workers are released after the hysteresis window
        _wait_for(lambda: _jobs(slurm_env, job_name) == [], timeout_s=90, what="the workers to be released")
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
        for job, _ in _jobs(slurm_env, job_name):
            subprocess.run(["scancel", job], env=slurm_env)
    assert proc.returncode == 0, stderr
    assert "were lost" in stderr
    assert _counts(db) == {"processed": 4}
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*), count(DISTINCT exposure_id) FROM emlive_motioncorrection").fetchone() == (4, 4)
