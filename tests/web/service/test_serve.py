"""`emlive serve` end to end, as a facility runs it: a real process on a free port, a user and a
token made with the CLI, a session in the facility layout processed through the compatible
routes, results in the database and the exports, a clean exit on SIGTERM, a restart that takes
the session up again where it was, and the webhook told when the session completes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import starfile

from emlive.synth.session import write_session

from ...conftest import emlive_command

pytestmark = pytest.mark.slow

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(url: str, token: str | None = None, *, method: str = "GET") -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, {}


def wait_for(predicate: Callable[[], T | None], *, timeout_s: float, what: str, proc: subprocess.Popen) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"emlive serve exited with {proc.returncode} while waiting for {what}")
        if value := predicate():
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@contextmanager
def serving(env: dict[str, str], log_path: Path, token: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``emlive serve`` on a free port until the block ends, then SIGTERM; it must exit 0."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log_file:  # a file, not a pipe: a full pipe would block the server
        proc = subprocess.Popen(
            emlive_command("serve", "--host", "127.0.0.1", "--port", port), env=env, stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: _reachable(f"{base}/p1/ann/sessions", token), timeout_s=60, what="the server", proc=proc)
            yield base, proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    output = log_path.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "SIGTERM" in output and "stopped cleanly" in output, output[-3000:]


def _reachable(url: str, token: str) -> bool:
    try:
        return call(url, token)[0] == 200
    except OSError:  # not listening yet
        return False


def test_serve_processes_a_session_started_through_the_compatible_routes(tmp_path, hook):
    root = tmp_path / "facility"
    folder = root / "p1" / "sessions" / "ann" / "grid1"
    staging = tmp_path / "microscope"
    truth = write_session(staging, n_movies=3, formats=("mrc", "tiff"), seed=11, shape=(512, 512), n_frames=12)
    (folder / "raw").mkdir(parents=True)
    for movie in truth.movies[:2]:
        shutil.move(staging / "raw" / movie.name, folder / "raw" / movie.name)
    env = {key: value for key, value in os.environ.items() if not key.startswith("EMLIVE_")} | {
        "EMLIVE_DATA_ROOT": str(root),
        "EMLIVE_CLUSTER__N_WORKERS": "1",
        "EMLIVE_WATCH__SETTLE_S": "0.5",
        "EMLIVE_WATCH__POLL_INTERVAL_S": "0.5",
        "EMLIVE_SCHEDULER__EXPORT_INTERVAL_S": "0",
        "HOME": str(tmp_path),  # no ~/.config/emlive/emlive.toml of the machine's
        "COLUMNS": "200",
    }
    added = subprocess.run(emlive_command("user", "add", "ann", "--project", "p1"), env=env, capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    created = subprocess.run(emlive_command("token", "create", "ann"), env=env, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    session_url = "{base}/p1/ann/session/grid1"

    def state(base: str, wanted: str, n_processed: int) -> Callable[[], dict | None]:
        def check() -> dict | None:
            body = call(session_url.format(base=base), token)[1]
            return body if body.get("state") == wanted and body.get("processed_files") == n_processed else None

        return check

    with serving(env, tmp_path / "serve-1.log", token) as (base, proc):
        assert call(f"{base}/p1/ann/sessions")[0] == 401
        status, listed = call(f"{base}/p1/ann/sessions", token)
        assert status == 200 and "grid1" in json.dumps(listed)
        assert call(session_url.format(base=base), token)[1]["state"] == "needs_processing"
        start = f"{session_url.format(base=base)}/start-processing?apix=1.0&fmdose=1.0&kev=300"
        assert call(start, token, method="POST")[0] == 200
        body = wait_for(state(base, "processing_complete", 2), timeout_s=120, what="2 processed", proc=proc)
        assert body["raw_files"] == 2 and body["failed_jobs"] == 0 and body["percent_done_total"] == 100.0
    assert "p1/grid1: taken up" in (tmp_path / "serve-1.log").read_text()

    # The microscope writes another movie while the service is down; the restarted service takes
    # the session (still processing) up again, and this time tells the webhook it is complete.
    shutil.move(staging / "raw" / truth.movies[2].name, folder / "raw" / truth.movies[2].name)
    env |= {"EMLIVE_WEB__WEBHOOK_URL": hook.url, "EMLIVE_WEB__COMPLETE_AFTER_S": "5"}
    with serving(env, tmp_path / "serve-2.log", token) as (base, proc):
        wait_for(state(base, "processing_complete", 3), timeout_s=120, what="3 processed", proc=proc)
        wait_for(lambda: hook.bodies, timeout_s=30, what="the webhook", proc=proc)
    assert len(hook.bodies) == 1 and "p1/ann/grid1 is complete: 3 exposures processed" in hook.bodies[0]["text"]

    database = root / ".emlive" / "emlive.sqlite3"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as con:
        (session_state,) = con.execute("SELECT state FROM emlive_session").fetchone()
        rows = con.execute(
            "SELECT e.path, e.state, c.defocus_u_a, c.defocus_v_a FROM emlive_exposure e "
            "JOIN emlive_ctfestimate c ON c.exposure_id = e.id ORDER BY e.path"
        ).fetchall()
    assert session_state == "complete"
    assert [(path, state) for path, state, *_ in rows] == [(movie.name, "processed") for movie in truth.movies]
    for (_, _, defocus_u_a, defocus_v_a), movie in zip(rows, truth.movies, strict=True):
        true_mean = (movie.defocus_u_a + movie.defocus_v_a) / 2
        assert abs((defocus_u_a + defocus_v_a) / 2 - true_mean) / true_mean < 0.02
    star = starfile.read(folder / "processed" / "exports" / "micrographs_ctf.star", always_dict=True)
    assert sorted(Path(name).stem.removesuffix("_DW") for name in star["micrographs"]["rlnMicrographName"]) == [
        Path(movie.name).stem for movie in truth.movies
    ]
