"""Tilt series live, end to end: ``emlive process --watch`` while a synthetic SerialEM session
collects (a movie per tilt and a growing mdoc), then a killed controller restarted.

TS_01: 21 tilts of 512² px movies (4 frames) in dose-symmetric order, two dark tilts and one
movie truncated by its transfer. TS_02: 9 tilts, one section of its mdoc malformed, one movie
that never comes, and SerialEM's own stack of the series beside its mdoc (not a movie). The acceptance: TS_01 done with a tomogram, the dark tilts and the
truncated one left out with their reasons; TS_02 partial with the missing movie's reason and
the mdoc's problem stored; RELION 5's STAR files read with ``starfile``; after SIGKILL and a
restart nothing is recomputed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import starfile

from emlive.io.mrc import write_mrc_atomic
from emlive.synth.tomo_session import collect, plan_collection

from ..conftest import emlive_command

pytestmark = pytest.mark.slow

CONFIG = """\
[watch]
incomplete_timeout_s = 2
[tomo]
tilts_per_series = 21
settle_s = 5
missing_timeout_s = 8
[tomo.series]
thickness_a = 320
"""


def _rows(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        try:
            return con.execute(sql).fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return []


def _wait_for(predicate, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _states(db: Path) -> dict[str, str]:
    return dict(_rows(db, "SELECT name, state FROM emlive_tiltseries"))


def _process(raw: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return emlive_command("process", raw, "-o", out, "--apix", "2.5", "--dose-per-frame", "1.0", "--kv", "300",
                          "--settle-s", "1", "--workers", "2", "--config", config, *extra)


def test_tilt_series_are_grouped_aligned_reconstructed_and_exported_live(tmp_path):
    raw, out, db = tmp_path / "raw", tmp_path / "out", tmp_path / "out" / "emlive.sqlite3"
    raw.mkdir()
    config = tmp_path / "emlive.toml"
    config.write_text(CONFIG)
    ts1 = plan_collection(1, tilt_angles_deg=np.arange(-60.0, 61.0, 6.0), dark=(3, 16))
    ts2 = plan_collection(2, name="TS_02", tilt_angles_deg=np.arange(-24.0, 25.0, 6.0), dark=(),
                          movie_shape=(256, 256))
    env = os.environ | {"COLUMNS": "200", "EMLIVE_CONFIG": ""}
    log = open(tmp_path / "watch.log", "w")
    proc = subprocess.Popen(_process(raw, out, config, "--watch"), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for(lambda: out.joinpath("emlive.sqlite3").exists(), timeout_s=120, what="the controller to start")
        # TS_02: all its tilts but one, then a malformed line in the mdoc's 3rd section
        list(collect(tmp_path, ts2, never=(4,)))
        # SerialEM's own stack of the series' sums beside its mdoc: not a movie
        write_mrc_atomic(raw / "TS_02.mrc", np.ones((7, 64, 64), dtype=np.int8), pixel_size_a=2.5)
        mdoc2 = raw / "TS_02.mrc.mdoc"
        text = mdoc2.read_text().split("[ZValue = 2]")
        angle_line = next(line for line in text[1].splitlines() if line.startswith("TiltAngle"))
        mdoc2.write_text(text[0] + "[ZValue = 2]" + text[1].replace(angle_line, "TiltAngle = 6.0.0", 1))
        # TS_01, a tilt every half second; its 8th movie is cut short
        for _ in collect(tmp_path, ts1, interval_s=0.5, truncate=(7,)):
            pass
        _wait_for(lambda: _states(db).get("TS_01") == "done" and _states(db).get("TS_02") == "partial",
                  timeout_s=300, what=f"TS_01 done and TS_02 partial (now {_states(db)})")
        stars = out / "exports" / "tomograms.star"
        _wait_for(lambda: stars.exists() and "TS_01" in stars.read_text() and "TS_02" in stars.read_text(),
                  timeout_s=60, what="the RELION 5 exports of both series")
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean stop: the restart must cope
        proc.wait(timeout=60)
        log.close()
    watch_log = (tmp_path / "watch.log").read_text()

    series = {row[0]: row[1:] for row in _rows(db, "SELECT name, id, n_tilts_received, n_tilts_processed, "
                                                   "excluded_json, problems_json, error, tomogram_path FROM emlive_tiltseries")}
    _, received, processed, excluded, problems, error, tomogram = series["TS_01"]
    assert (received, processed, error, json.loads(problems)) == (21, 20, "", [])
    reasons = {e["z_value"]: e["reason"] for e in json.loads(excluded)}
    dark_z = {int(ts1.order[i]) for i in ts1.truth.dark}
    truncated_z = 7  # acquisition step 7 = ZValue 7
    assert set(reasons) == dark_z | {truncated_z}
    assert all(reasons[z].startswith("dark: mean") for z in dark_z)
    assert reasons[truncated_z].startswith("its movie failed:") and "TS_01_007" in reasons[truncated_z]
    assert Path(tomogram).is_file() and Path(tomogram).parent == out / "tomo" / "TS_01"
    for suffix in (".st", ".rawtlt", ".tlt", ".xf", "_slice.png", "_montage.png", ".series.json"):
        assert (out / "tomo" / "TS_01" / f"TS_01{suffix}").is_file()

    _, received2, _, excluded2, problems2, error2, tomogram2 = series["TS_02"]
    assert received2 == 7  # 9 named, one malformed (not a tilt), one never came
    assert any("ZValue 2" in p and "TiltAngle" in p for p in json.loads(problems2))
    missing = ts2.movie_names[ts2.acquisition[4]]
    assert f"its movie {missing} never came" in error2 and Path(tomogram2).is_file()
    assert any("never came" in e["reason"] for e in json.loads(excluded2))
    assert "ZValue 2" in watch_log and "line" in watch_log
    assert "TS_02.mrc is SerialEM's stack of tilt series TS_02" in " ".join(watch_log.split())
    assert _rows(db, "SELECT count(*) FROM emlive_exposure WHERE path = 'TS_02.mrc'") == [(0,)]

    # a tilt's movie: the mdoc's dose (3 e/Å² over 4 frames, not the command line's 1.0 a frame),
    # the dose before it in acquisition order, global motion only, no picking
    sidecar = json.loads((out / "motion" / "frames" / "TS_01_003_-6.0.motion.json").read_text())
    acquisition = sidecar["params"]["acquisition"]
    assert (acquisition["dose_per_frame_e_a2"], acquisition["pre_exposure_e_a2"]) == (0.75, 9.0)
    assert sidecar["params"]["motion"]["patches"] == [1, 1]
    assert not (out / "pick").exists()

    # RELION 5: tomograms.star and one STAR per series, beside the single-particle exports
    exports = out / "exports"
    tomograms = starfile.read(exports / "tomograms.star")
    assert list(tomograms["rlnTomoName"]) == ["TS_01", "TS_02"]
    assert tomograms["rlnTomoReconstructedTomogram"][0] == tomogram
    ts1_star = starfile.read(tomograms["rlnTomoTiltSeriesStarFile"][0])
    assert len(ts1_star) == 18 and np.all(np.diff(ts1_star["rlnTomoNominalStageTiltAngle"]) > 0)
    for column in ("rlnMicrographMovieName", "rlnMicrographPreExposure", "rlnDefocusU", "rlnTomoXTilt",
                   "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst", "rlnTomoYShiftAngst"):
        assert column in ts1_star
    zero = ts1_star["rlnTomoNominalStageTiltAngle"].abs().idxmin()
    assert ts1_star["rlnMicrographPreExposure"][zero] == 0.0  # acquired first: dose-symmetric
    # the single-particle exports hold the one movie no mdoc names as a tilt (TS_02's malformed section)
    spa = starfile.read(exports / "micrographs_ctf.star", always_dict=True)["micrographs"]
    assert len(spa) == 1 and Path(spa["rlnMicrographName"][0]).name.startswith("TS_02_002_")

    # restart after the kill: a one-shot run over the same folders recomputes nothing
    sidecar = out / "tomo" / "TS_01" / "TS_01.series.json"
    before = (sidecar.stat().st_mtime_ns, Path(tomogram).stat().st_mtime_ns,
              _rows(db, "SELECT processed_at, input_hash FROM emlive_tiltseries ORDER BY id"),
              _rows(db, "SELECT id, state, processed_at FROM emlive_exposure ORDER BY id"))
    again = subprocess.run(_process(raw, out, config), capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    after = (sidecar.stat().st_mtime_ns, Path(tomogram).stat().st_mtime_ns,
             _rows(db, "SELECT processed_at, input_hash FROM emlive_tiltseries ORDER BY id"),
             _rows(db, "SELECT id, state, processed_at FROM emlive_exposure ORDER BY id"))
    assert after == before
    assert _states(db) == {"TS_01": "done", "TS_02": "partial"}
