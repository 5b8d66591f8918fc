"""The Appion sink against MariaDB: the rows classic Appion writes, and crash safety without
transactions — a run killed between any two writes and continued has every row exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pytest

from emlive.ctf.types import CtfResult
from emlive.motion.types import MotionResult
from emlive.sinks import appion as sink
from emlive.sources import leginon
from emlive.synth.session import plan_session
from tests.leginon.conftest import LeginonDatabases
from tests.leginon.fake import count, rows

pytestmark = pytest.mark.mysql

TINY = dict(shape=(64, 64), n_frames=4)


class Crash(Exception):
    """Stands for SIGKILL between two writes."""


class _Budget:
    def __init__(self, writes: int | None) -> None:
        self.left = writes


class _Cursor:
    def __init__(self, budget: _Budget, cursor: Any) -> None:
        self._budget, self._cursor = budget, cursor

    def execute(self, sql: str, args: Any = None) -> Any:
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE")) and self._budget.left is not None:
            if self._budget.left == 0:
                raise Crash(sql)
            self._budget.left -= 1
        return self._cursor.execute(sql, args)

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cursor.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class Crashing:
    """A connection whose writes share a budget: the write after the last allowed one raises."""

    def __init__(self, conn: Any, budget: _Budget) -> None:
        self._conn, self._budget = conn, budget

    def cursor(self, *args: Any) -> _Cursor:
        return _Cursor(self._budget, self._conn.cursor(*args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _motion_result(folder: Path, stem: str, n_frames: int) -> MotionResult:
    folder.mkdir(parents=True, exist_ok=True)
    for name in (f"{stem}.mrc", f"{stem}_DW.mrc"):
        mrcfile.write(folder / name, np.full((32, 32), len(name), np.float32), overwrite=True, voxel_size=2.0)
    shifts = [(0.5 * i, -0.25 * i * i) for i in range(n_frames)]
    return MotionResult(
        shifts_px=shifts, total_drift_a=3.0, early_drift_a=1.0, late_drift_a=2.0,
        micrograph_path=folder / f"{stem}.mrc", dose_weighted_path=folder / f"{stem}_DW.mrc",
        star_path=folder / f"{stem}.star", pixel_size_a=2.0, n_frames=n_frames,
    )


def _motion_run(dbs: LeginonDatabases, session_name: str, rundir: Path, budget: _Budget) -> None:
    """What makeDDAlignMotionCor2_UCSF.py does with the sink, in its order."""
    fake = dbs.fake
    conn, appion = Crashing(fake.leginon, budget), Crashing(fake.appion, budget)
    session = leginon.find_session(fake.leginon, session_name)
    run = sink.start_motion_run(appion, session=session, preset="enn", rundir=rundir, runname=rundir.name, binning=1,
                                doseweight=True)
    job = sink.start_job(appion, job_id=None, path_id=run.path_id, runname=rundir.name, jobtype="makeddrawframestack",
                         session=session, user="test", cluster="localhost")
    done = sink.done_motion_images(fake.appion, run)
    for image_id in leginon.image_ids(fake.leginon, session, "enn"):
        if image_id not in done:
            image = leginon.read_image(fake.leginon, session, image_id)
            sink.store_motion(conn, appion, run, image, _motion_result(rundir / "motion", image.filename, 4))
    sink.finish_job(appion, job)


def _session(dbs: LeginonDatabases, name: str, n_images: int) -> list[int]:
    fake = dbs.fake
    truth = plan_session(n_movies=n_images, formats=("mrc",), seed=4, **TINY)
    session_id = fake.session(name)
    fake.calibrate(session_id, magnification=105000, pixel_size_a=1.0)
    preset = fake.preset(session_id, "enn", magnification=105000, total_dose_e_a2=40.0, shape=truth.shape)
    return [fake.image(session_id, preset, f"{name}_{i:03d}_enn", truth, truth.movies[i], magnification=105000)
            for i in range(n_images)]


def _motion_counts(dbs: LeginonDatabases, session_name: str, rundir: Path) -> dict[str, int]:
    fake = dbs.fake
    session = leginon.find_session(fake.leginon, session_name)
    (run,) = rows(fake.appion, "SELECT DEF_id FROM ApDDStackRunData WHERE `REF|leginondata|SessionData|session` = %s",
                  (session.id,))
    run_id = run["DEF_id"]
    by_session = "`REF|SessionData|session` = %s"
    return {
        "aligned cameras": count(fake.leginon, "CameraEMData", by_session + " AND `align frames` = 1", (session.id,)),
        "enn-a presets": count(fake.leginon, "PresetData", by_session + " AND name = 'enn-a'", (session.id,)),
        "enn-a-DW presets": count(fake.leginon, "PresetData", by_session + " AND name = 'enn-a-DW'", (session.id,)),
        "-a images": count(fake.leginon, "AcquisitionImageData", by_session + " AND filename LIKE '%%-a'", (session.id,)),
        "-a-DW images": count(fake.leginon, "AcquisitionImageData", by_session + " AND filename LIKE '%%-a-DW'",
                              (session.id,)),
        "paths": count(fake.appion, "ApPathData", "path = %s", (str(rundir.resolve()),)),
        "params": count(fake.appion, "ApDDStackParamsData"),
        "jobs done": count(fake.appion, "ApAppionJobData", "`REF|leginondata|SessionData|session` = %s AND status = 'D'",
                           (session.id,)),
        "jobs": count(fake.appion, "ApAppionJobData", "`REF|leginondata|SessionData|session` = %s", (session.id,)),
        "trajectories": count(fake.appion, "ApDDFrameTrajectoryData", "`REF|ApDDStackRunData|ddstackrun` = %s", (run_id,)),
        "stats": count(fake.appion, "ApDDAlignStatsData", "`REF|ApDDStackRunData|ddstackrun` = %s", (run_id,)),
        "pairs": count(fake.appion, "ApDDAlignImagePairData", "`REF|ApDDStackRunData|ddstackrun` = %s", (run_id,)),
    }


def test_motion_rows_as_classic_appion_writes_them(leginon_dbs: LeginonDatabases, tmp_path: Path) -> None:
    fake = leginon_dbs.fake
    ids = _session(leginon_dbs, "s0", 2)
    rundir = tmp_path / "ddstack1"
    _motion_run(leginon_dbs, "s0", rundir, _Budget(None))
    _motion_run(leginon_dbs, "s0", rundir, _Budget(None))  # again: nothing new
    assert _motion_counts(leginon_dbs, "s0", rundir) == {
        "aligned cameras": 2, "enn-a presets": 1, "enn-a-DW presets": 1, "-a images": 2, "-a-DW images": 2,
        "paths": 1, "params": 1, "jobs done": 1, "jobs": 1, "trajectories": 2, "stats": 2, "pairs": 4,
    }
    session = leginon.find_session(fake.leginon, "s0")
    pairs = rows(fake.appion, "SELECT * FROM ApDDAlignImagePairData ORDER BY DEF_id")
    assert {p["REF|leginondata|AcquisitionImageData|source"] for p in pairs} == set(ids)
    for pair in pairs:
        (result,) = rows(fake.leginon, "SELECT i.filename, i.`MRC|image`, p.name FROM AcquisitionImageData i JOIN "
                         "PresetData p ON p.DEF_id = i.`REF|PresetData|preset` WHERE i.DEF_id = %s",
                         (pair["REF|leginondata|AcquisitionImageData|result"],))
        assert result["name"] == ("enn-a-DW" if result["filename"].endswith("-DW") else "enn-a")
        with mrcfile.open(session.image_path / result["MRC|image"]) as mrc:
            assert mrc.data.shape == (32, 32)
    log = (rundir / "s0_000_enn.frames_Log.txt").read_text().splitlines()  # frames: s0_000_enn.frames.mrc
    assert log[0] == "Sum Frame #000 - #004 (Reference Frame #002):"
    assert log[1:] == [f"......Add Frame #{i:03d} with xy shift: {-(0.5 * i - 1.0) / 2:.5f} {-(-0.25 * i * i + 1.0) / 2:.5f}"
                       for i in range(4)]  # relative to frame 2, opposite sign, aligned (bin 2) pixels
    (stats,) = rows(fake.appion, "SELECT * FROM ApDDAlignStatsData LIMIT 1")
    assert stats["top_shift1_value"] == pytest.approx(np.hypot(0.5, 1.25))  # frame 2 → 3: (0.5, -1.25)
    assert stats["top_shift1_index"] == 3
    # a second run under another name keeps the first's files and rows: versioned names
    _motion_run(leginon_dbs, "s0", tmp_path / "ddstack2", _Budget(None))
    names = {r["filename"] for r in rows(fake.leginon, "SELECT filename FROM AcquisitionImageData")}
    assert {"s0_000_enn-a", "s0_000_enn-a_v01", "s0_000_enn-a-DW_v01"} <= names
    assert (session.image_path / "s0_000_enn-a_v01.mrc").is_file()


def test_motion_sink_killed_between_any_two_writes_then_continued(leginon_dbs: LeginonDatabases, tmp_path: Path) -> None:
    expected = {
        "aligned cameras": 2, "enn-a presets": 1, "enn-a-DW presets": 1, "-a images": 2, "-a-DW images": 2,
        "paths": 1, "params": 1, "jobs done": 1, "jobs": 1, "trajectories": 2, "stats": 2, "pairs": 4,
    }
    crash_points = 0
    for writes in range(60):
        name = f"k{writes}"
        _session(leginon_dbs, name, 2)
        rundir = tmp_path / name
        try:
            _motion_run(leginon_dbs, name, rundir, _Budget(writes))
        except Crash:
            crash_points += 1
            _motion_run(leginon_dbs, name, rundir, _Budget(None))  # --continue
            assert _motion_counts(leginon_dbs, name, rundir) == expected, f"killed after {writes} writes"
        else:
            assert _motion_counts(leginon_dbs, name, rundir) == expected
            break
    assert crash_points >= 15  # every write of a run was a crash point once


def test_ctf_rows_and_crash_safety(leginon_dbs: LeginonDatabases, tmp_path: Path) -> None:
    fake = leginon_dbs.fake
    ids = _session(leginon_dbs, "c0", 3)
    session = leginon.find_session(fake.leginon, "c0")
    params = sink.CtfFind4Params(ampcontrast=0.1, fieldsize=512, cs_mm=2.7, resmin_a=30.0, defstep_a=500.0)

    def run(budget: _Budget) -> None:
        appion = Crashing(fake.appion, budget)
        ctf_run = sink.start_ctf_run(appion, session=session, rundir=tmp_path / "ctf1", runname="ctf1", params=params)
        for image_id in sorted(set(ids) - sink.done_ctf_images(fake.appion, ctf_run)):
            image = leginon.read_image(fake.leginon, session, image_id)
            result = CtfResult(
                defocus_u_a=21000.0 + image_id, defocus_v_a=20000.0, azimuth_deg=33.0, cross_correlation=0.2,
                fit_resolution_a=4.5, fit_ok=True, ice_ring_ratio=None, output_txt_path=tmp_path / "ctf1" / f"{image.filename}.txt",
                avrot_path=tmp_path / "ctf1" / f"{image.filename}_avrot.txt",
                diagnostic_png_path=tmp_path / "ctf1" / f"{image.filename}.png",
            )
            sink.store_ctf(appion, ctf_run, image, result, amplitude_contrast=0.1, cs_mm=2.7)

    for writes in range(4):
        try:
            run(_Budget(writes))
        except Crash:
            pass
    run(_Budget(None))
    assert count(fake.appion, "ApCtfFind4ParamsData") == 1
    assert count(fake.appion, "ApAceRunData") == 1
    ctf = rows(fake.appion, "SELECT * FROM ApCtfData ORDER BY `REF|leginondata|AcquisitionImageData|image`")
    assert [row["REF|leginondata|AcquisitionImageData|image"] for row in ctf] == ids
    assert ctf[0]["defocus2"] == pytest.approx((21000.0 + ids[0]) * 1e-10)  # Appion: defocus1 the smaller
    assert ctf[0]["defocus1"] == pytest.approx(20000.0 * 1e-10)
    assert ctf[0]["angle_astigmatism"] == pytest.approx(123.0)
    assert ctf[0]["ctffind4_resolution"] == pytest.approx(4.5)
    assert ctf[0]["graph1"] == "c0_000_enn.png"
