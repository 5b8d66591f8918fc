"""The soak campaign, short: 200 movies through ``emlive serve`` on PostgreSQL while the service
is SIGKILLed, workers are killed, PostgreSQL restarts, the output folder fills up and turns
read-only (benchmarks/soak.py; docs/reliability.md has the full run). Nothing may be lost,
duplicated, stuck or left half-written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from ..conftest import skip_or_fail

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
SLURM_CONF = Path("/tmp/emlive-slurm/slurm.conf")  # scripts/start-slurm.sh
POSTGRES_URL = os.environ.get("EMLIVE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def test_200_movies_through_8_faults_lose_and_duplicate_nothing():
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except psycopg.OperationalError as err:
        skip_or_fail(f"PostgreSQL is not reachable at {POSTGRES_URL}: {err}")
    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None:
        skip_or_fail("the soak needs root (a tmpfs output folder, read-only remounts) and pg_ctlcluster to restart PostgreSQL")
    env = os.environ | {"EMLIVE_TEST_POSTGRES_URL": POSTGRES_URL, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        run = subprocess.run(
            [sys.executable, str(SOAK), "--movies", "200", "--faults", "8", "--seed", "16", "--rate", "2",
             "--workers", "2", "--bound-s", "240"],
            capture_output=True, text=True, timeout=900, env=env,
        )
    finally:
        _reconnect_after_the_restart()
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    report = run.stdout[-6000:] + run.stderr[-3000:]
    assert re.fullmatch(
        r"lost 0, duplicated 0, stuck 0, faults 8, movies 200, recovery p50 [\d.]+ s max [\d.]+ s, extra work [\d.]+ %", last
    ), report
    assert run.returncode == 0, report  # and no half-written file left
    for kind in ("service", "worker", "postgres", "disk-full", "read-only"):
        assert re.search(rf"^\s*[\d.]+\s+{kind}\s", run.stdout, re.M), f"no {kind} fault struck:\n{report}"
    assert "did not bite" not in run.stdout, report  # the disk faults made writes fail


def _reconnect_after_the_restart() -> None:
    """PostgreSQL was restarted: this process's Django connections (other tests') are dead."""
    from django.conf import settings
    from django.db import Error, connections

    if settings.configured:
        for connection in connections.all(initialized_only=True):
            try:
                connection.close()
            except Error:  # already broken by the restart: closing it is all that was needed
                pass


@pytest.mark.slurm
def test_a_service_on_slurm_whose_worker_jobs_are_cancelled_loses_nothing():
    """The workers are Slurm jobs; one is cancelled (scancel) among the other faults."""
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except psycopg.OperationalError as err:
        skip_or_fail(f"PostgreSQL is not reachable at {POSTGRES_URL}: {err}")
    env = os.environ | {"EMLIVE_TEST_POSTGRES_URL": POSTGRES_URL, "PYTHONPATH": os.pathsep.join(sys.path)}
    if "SLURM_CONF" not in env and SLURM_CONF.exists():
        env["SLURM_CONF"] = str(SLURM_CONF)
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=env) if shutil.which("scontrol") else None
    if ping is None or "UP" not in ping.stdout:
        skip_or_fail("no Slurm controller answers; run scripts/start-slurm.sh")
    try:
        run = subprocess.run(
            [sys.executable, str(SOAK), "--movies", "60", "--faults", "4", "--seed", "4", "--rate", "1",
             "--workers", "2", "--slurm", "--bound-s", "240"],
            capture_output=True, text=True, timeout=600, env=env,
        )
    finally:
        _reconnect_after_the_restart()
    report = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1].startswith("lost 0, duplicated 0, stuck 0, faults 4, movies 60,"), report
    assert run.returncode == 0, report
    assert re.search(r"slurm +job \d+", run.stdout), f"no worker job was cancelled:\n{report}"
