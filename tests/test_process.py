"""`emlive process` end to end: real CLI processes, a real local Dask cluster, SQLite.

Covers the issue's acceptance: bad input fails that exposure with a reason and the session goes
on; a growing file is processed once complete; SIGTERM finishes cleanly; SIGKILL half way and a
rerun leave every exposure processed exactly once, no half-written file, no step recomputed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import tifffile

from emlive.io.atomic import is_temporary_name
from emlive.synth.session import write_session

from .conftest import emlive_command, run_emlive

pytestmark = pytest.mark.slow

SMALL = {"shape": (512, 512), "n_frames": 12}
ACQ = ("--apix", "1.0", "--dose-per-frame", "1.0", "--kv", "300")


def _counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        try:
            return dict(con.execute("SELECT state, count(*) FROM emlive_exposure GROUP BY state").fetchall())
        except sqlite3.OperationalError:  # not migrated yet
            return {}


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        return con.execute(sql).fetchall()


def _wait_for(predicate, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _no_half_written_files(out: Path) -> None:
    leftovers = [p for p in out.rglob("*") if is_temporary_name(p)]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    for path in out.rglob("*.mrc"):
        with mrcfile.open(path, permissive=False) as mrc:  # header and size agree
            assert mrc.data is not None


def _write_bad_movies(raw: Path) -> None:
    (raw / "zero.mrc").write_bytes(b"")
    with mrcfile.new(raw / "truncated.mrc") as mrc:
        mrc.set_data(np.ones((8, 256, 256), np.int8))
    with open(raw / "truncated.mrc", "r+b") as fh:
        fh.truncate(1024 + 3 * 256 * 256)
    frames = np.random.default_rng(1).integers(0, 4, (5, 256, 256), dtype=np.uint8)
    tifffile.imwrite(raw / "corrupt.tif", frames, compression="lzw", photometric="minisblack")
    data = bytearray((raw / "corrupt.tif").read_bytes())
    data[200:4000] = os.urandom(3800)  # scramble the first LZW strip
    (raw / "corrupt.tif").write_bytes(bytes(data))
    old = time.time() - 60
    for name in ("zero.mrc", "truncated.mrc", "corrupt.tif"):
        os.utime(raw / name, (old, old))


def test_bad_movies_fail_with_a_reason_and_the_session_goes_on(tmp_path):
    truth = write_session(tmp_path, n_movies=2, formats=("mrc", "tiff"), seed=3, **SMALL)
    raw, out = tmp_path / "raw", tmp_path / "out"
    _write_bad_movies(raw)
    good = [movie.name for movie in truth.movies]

    proc = run_emlive("process", raw, "-o", out, *ACQ, "--settle-s", "0.5", "--workers", "2")

    assert proc.returncode == 0, proc.stderr
    db = out / "emlive.sqlite3"
    states = dict(_rows(db, "SELECT path, state FROM emlive_exposure"))
    assert states == {
        good[0]: "processed",
        good[1]: "processed",
        "zero.mrc": "failed",
        "truncated.mrc": "failed",
        "corrupt.tif": "failed",
    }
    reasons = dict(_rows(db, "SELECT path, fail_reason FROM emlive_exposure WHERE state = 'failed'"))
    assert "zero.mrc" in reasons["zero.mrc"] and "empty" in reasons["zero.mrc"].lower()
    assert "truncated.mrc" in reasons["truncated.mrc"] and "truncated" in reasons["truncated.mrc"].lower()
    assert "corrupt.tif" in reasons["corrupt.tif"]
    for name in ("micrographs_ctf.star", "corrected_micrographs.star"):
        star = starfile.read(out / "exports" / name, always_dict=True)
        micrographs = star["micrographs"]
        assert len(micrographs) == 2
        assert all((out / "exports" / m).resolve().exists() or Path(m).exists() for m in micrographs["rlnMicrographName"])
        assert {"rlnOpticsGroup", "rlnVoltage", "rlnMicrographOriginalPixelSize"} <= set(star["optics"].columns)
    assert {"rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution"} <= set(
        starfile.read(out / "exports" / "micrographs_ctf.star")["micrographs"].columns
    )
    assert good[0] in proc.stdout and "failed" in proc.stdout
    _no_half_written_files(out)


def _sidecars(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.json")}


def test_sigkill_half_way_then_rerun_processes_everything_exactly_once(tmp_path):
    write_session(tmp_path, n_movies=6, formats=("mrc", "tiff"), seed=5, **SMALL)
    raw, out = tmp_path / "raw", tmp_path / "out"
    db = out / "emlive.sqlite3"
    args = ("process", raw, "-o", out, *ACQ, "--settle-s", "0", "--workers", "1")

    proc = subprocess.Popen(
        emlive_command(*args), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(lambda: _counts(db).get("processed", 0) >= 2, timeout_s=180, what="two processed exposures")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: controller and workers
        proc.wait()
    assert _counts(db).get("processed", 0) < 6, "the kill came too late to test anything"
    before = _sidecars(out)
    stored_before = dict(_rows(db, "SELECT exposure_id, id FROM emlive_motioncorrection"))

    rerun = run_emlive(*args)

    assert rerun.returncode == 0, rerun.stderr
    assert _counts(db) == {"processed": 6}
    assert _rows(db, "SELECT count(*), count(DISTINCT exposure_id) FROM emlive_motioncorrection") == [(6, 6)]
    assert _rows(db, "SELECT count(*), count(DISTINCT exposure_id) FROM emlive_ctfestimate") == [(6, 6)]
    # rows stored before the kill are the same rows, not re-inserted
    after_rows = dict(_rows(db, "SELECT exposure_id, id FROM emlive_motioncorrection"))
    assert {k: after_rows[k] for k in stored_before} == stored_before
    # every checkpoint that existed at the kill is untouched: finished steps were not recomputed
    after = _sidecars(out)
    assert before, "no step had finished before the kill"
    assert {name: after[name] for name in before} == before
    _no_half_written_files(out)


def test_watch_processes_a_growing_file_once_complete_and_sigterm_exits_cleanly(tmp_path):
    session = write_session(tmp_path / "src", n_movies=2, formats=("mrc",), seed=7, **SMALL)
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    db = out / "emlive.sqlite3"
    proc = subprocess.Popen(
        emlive_command("process", raw, "-o", out, *ACQ, "--watch", "--settle-s", "1.5", "--workers", "1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # A movie copied in slowly, non-atomically, as a microscope PC's transfer would.
        source = (tmp_path / "src" / "raw" / session.movies[0].name).read_bytes()
        with open(raw / "growing.mrc", "wb") as fh:
            for start in range(0, len(source), len(source) // 6):
                fh.write(source[start : start + len(source) // 6])
                fh.flush()
                time.sleep(0.5)
        _wait_for(lambda: _counts(db).get("processed", 0) == 1, timeout_s=120, what="the grown movie")
        # a second movie arriving later is picked up too
        second = tmp_path / "src" / "raw" / session.movies[1].name
        os.replace(second, raw / "later.mrc")
        _wait_for(lambda: _counts(db).get("processed", 0) == 2, timeout_s=120, what="the later movie")
        assert (out / "exports" / "micrographs_ctf.star").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert _counts(db) == {"processed": 2}
    assert _rows(db, "SELECT fail_count FROM emlive_exposure") == [(0,), (0,)]
    assert len(starfile.read(out / "exports" / "micrographs_ctf.star", always_dict=True)["micrographs"]) == 2
    _no_half_written_files(out)


def test_ctrl_c_in_a_terminal_finishes_in_flight_work_without_worker_tracebacks(tmp_path):
    """SIGINT to the whole foreground process group, as a terminal's Ctrl+C sends it: the local
    workers ignore it, the controller finishes the exposures in flight and exits 0."""
    write_session(tmp_path, n_movies=2, formats=("mrc",), seed=11, **SMALL)
    raw, out = tmp_path / "raw", tmp_path / "out"
    db = out / "emlive.sqlite3"
    proc = subprocess.Popen(
        emlive_command("process", raw, "-o", out, *ACQ, "--watch", "--settle-s", "0", "--workers", "2"),
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(lambda: _counts(db).get("submitted", 0) >= 1, timeout_s=180, what="an exposure in flight")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # the process group: controller and its local workers
        stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "finishing exposures in flight" in stderr
    assert _counts(db).get("submitted", 0) == 0 and _counts(db).get("processed", 0) >= 1
    _no_half_written_files(out)
