"""``emlive process s3://…/raw -o s3://…/processed --watch`` against a real S3 API server: movies
uploaded one by one while it runs, the same results as a local run, SIGKILL and a restart on a
machine without the working copy that loses and redoes nothing, and clear errors for a missing
bucket or bad credentials — with the credentials never in the database or the logs."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from emlive.synth.session import write_session

from ..conftest import emlive_command, run_emlive
from .conftest import S3

SMALL = {"n_movies": 3, "shape": (256, 256), "n_frames": 6, "formats": ("mrc", "tiff"), "seed": 11}
PROCESS = ("--apix", "1.0", "--dose-per-frame", "1.0", "--kv", "300", "--settle-s", "0", "--workers", "1")
RAW = "s3://bucket/session/raw"
OUT = "s3://bucket/session/processed"


def _results(db: Path) -> dict[str, tuple]:
    """Each processed exposure's motion and CTF values, by its path under raw/."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT e.path, e.state, m.n_frames, round(m.total_drift_a, 6), round(c.defocus_u_a, 3), "
            "round(c.defocus_v_a, 3) FROM emlive_exposure e LEFT JOIN emlive_motioncorrection m ON m.exposure_id = e.id "
            "LEFT JOIN emlive_ctfestimate c ON c.exposure_id = e.id"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def _objects(s3: S3, prefix: str) -> dict[str, tuple[str, object]]:
    listing = s3.client().list_objects_v2(Bucket="bucket", Prefix=prefix).get("Contents", [])
    return {item["Key"]: (item["ETag"], item["LastModified"]) for item in listing}


def _no_change_but_exports(s3: S3, before: dict[str, tuple[str, object]]) -> bool:
    now = _objects(s3, "session/processed/")
    return now.keys() == before.keys() and all(now[k] == v for k, v in before.items() if "/exports/" not in k)


def _wait(predicate, what: str, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _working_db(cache: Path) -> Path:
    [db] = list(cache.glob("*/bucket/session/processed/emlive.sqlite3"))
    return db


def test_watch_upload_kill_restart_same_as_local(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "local"
    write_session(local, workers=1, **SMALL)
    movies = sorted(p for p in (local / "raw").iterdir() if p.is_file())
    done = run_emlive("process", local / "raw", "-o", local / "out", *PROCESS)
    assert done.returncode == 0, done.stderr
    expected = _results(local / "out" / "emlive.sqlite3")
    assert len(expected) == 3 and all(row[0] == "processed" for row in expected.values())

    client = s3.client()
    log_path = tmp_path / "watch.log"
    with log_path.open("w") as log:
        env = os.environ | {"COLUMNS": "200", "EMLIVE_CONFIG": ""}
        watcher = subprocess.Popen(emlive_command("process", RAW, "-o", OUT, *PROCESS, "--watch"),
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            for movie in movies[:2]:  # uploaded one by one while it runs
                client.upload_file(str(movie), "bucket", f"session/raw/{movie.name}")
                stem = movie.name.split(".")[0]
                _wait(lambda: any(k.endswith(f"{stem}.ctf.json") for k in _objects(s3, "session/processed/")),
                      f"{movie.name}'s checkpoints on the remote")
        finally:
            watcher.send_signal(signal.SIGKILL)
            watcher.wait(timeout=10)
    before = {k: v for k, v in _objects(s3, "session/processed/").items() if "/exports/" not in k}
    sidecars = [k for k in before if k.endswith((".motion.json", ".ctf.json", ".thumbnail.json"))]
    assert len(sidecars) == 6, sorted(before)

    # a machine without the working copy (another cache folder: the sidecars' paths are rewritten
    # to it); the third movie comes meanwhile
    old_cache = Path(os.environ["EMLIVE_REMOTE__CACHE_DIR"])
    cache = tmp_path / "other-machine-cache"
    monkeypatch.setenv("EMLIVE_REMOTE__CACHE_DIR", str(cache))
    client.upload_file(str(movies[2]), "bucket", f"session/raw/{movies[2].name}")
    again = run_emlive("process", RAW, "-o", OUT, *PROCESS)
    assert again.returncode == 0, again.stdout + again.stderr

    after = _objects(s3, "session/processed/")
    assert {k: after[k] for k in before} == before  # nothing redone: the same objects, untouched
    new_sidecars = [k for k in after if k.endswith(".json") and k not in before and "/.emlive-remote/" not in k]
    assert len(new_sidecars) == 3, new_sidecars  # only the third movie's three steps
    assert any(k.startswith("session/processed/exports/") for k in after)
    assert _results(_working_db(cache)) == expected

    assert not [p for p in (cache / "scratch").rglob("*") if p.is_file()]  # the staged movies were deleted

    # and a restart with the working copy kept: nothing computed, uploaded or downloaded again
    third = run_emlive("process", RAW, "-o", OUT, *PROCESS)
    assert third.returncode == 0, third.stdout + third.stderr
    assert _no_change_but_exports(s3, after)  # (the exports are rewritten by each run)
    assert _results(_working_db(cache)) == expected

    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for db in [_working_db(cache), _working_db(old_cache)]:
        assert secret.encode() not in db.read_bytes()
    assert secret not in log_path.read_text() + again.stdout + again.stderr + third.stdout + third.stderr


@pytest.mark.parametrize("endpoint_variable", ["AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"])
def test_missing_bucket_is_a_clear_error(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, endpoint_variable: str
) -> None:
    """(The endpoint from either variable: the server answers that the bucket is missing.)"""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv(endpoint_variable, s3.endpoint)
    done = run_emlive("process", "s3://no-such-bucket/session/raw", "-o", tmp_path / "out", *PROCESS)
    assert done.returncode == 2
    assert "s3://no-such-bucket/session/raw" in done.stderr and "does not exist" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_bad_credentials_are_a_clear_error(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-emlive")
    done = run_emlive("process", RAW, "-o", OUT, *PROCESS)
    assert done.returncode == 2
    assert RAW in done.stderr and "access denied" in done.stderr and "AWS_SECRET_ACCESS_KEY" in done.stderr, done.stderr
    assert "wrong-secret-emlive" not in done.stdout + done.stderr


def test_credentials_in_the_url_are_refused(s3: S3, tmp_path: Path) -> None:
    done = run_emlive("process", "s3://key:hunter2secret@bucket/session/raw", "-o", tmp_path / "out", *PROCESS)
    assert done.returncode == 2
    assert "credentials in the URL are refused" in done.stderr and "hunter2secret" not in done.stdout + done.stderr


def test_local_movies_remote_out_uploads_checkpoints_it_missed(s3: S3, tmp_path: Path) -> None:
    """A run killed after an exposure's checkpoints were written and before they were uploaded:
    the next run uploads them, without recomputing."""
    write_session(tmp_path / "local", workers=1, **SMALL | {"n_movies": 1})
    raw = tmp_path / "local" / "raw"
    done = run_emlive("process", raw, "-o", OUT, *PROCESS)
    assert done.returncode == 0, done.stdout + done.stderr
    client = s3.client()
    sidecars = [k for k in _objects(s3, "session/processed/") if k.endswith((".motion.json", ".ctf.json"))]
    assert len(sidecars) == 2
    cache = Path(os.environ["EMLIVE_REMOTE__CACHE_DIR"])
    local = {p: p.stat().st_mtime_ns for p in cache.glob("*/bucket/session/processed/*/*.json")}
    for key in sidecars:
        client.delete_object(Bucket="bucket", Key=key)
    again = run_emlive("process", raw, "-o", OUT, *PROCESS)
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(k in _objects(s3, "session/processed/") for k in sidecars)
    assert {p: p.stat().st_mtime_ns for p in local} == local  # nothing recomputed

    dataset = run_emlive("dataset", OUT, "-o", "s3://bucket/session/dataset")  # the session named by its OUT URL
    assert dataset.returncode == 0, dataset.stdout + dataset.stderr
    assert "1 micrographs" in dataset.stdout, dataset.stdout
    assert "session/dataset/manifest.csv" in _objects(s3, "session/dataset/")


def test_an_unreachable_endpoint_is_a_clear_error(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")
    done = run_emlive("process", RAW, "-o", tmp_path / "out", *PROCESS)
    assert done.returncode == 2
    assert RAW in done.stderr and "cannot be reached" in done.stderr and "AWS_ENDPOINT_URL" in done.stderr, done.stderr
