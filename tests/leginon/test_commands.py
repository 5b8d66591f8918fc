"""The drop-in commands as the web UI runs them: subprocesses with classic Appion's flags,
against MariaDB holding a fake Leginon session; the Appion tables read back as the viewer does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from emlive.synth.session import gain_reference, plan_session
from tests.leginon.conftest import LeginonDatabases
from tests.leginon.fake import count, rows

pytestmark = [pytest.mark.mysql]

MAG = 105000


def appion_command(module: str, *args: str | Path, cwd: Path, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m emlive.appion.<module>`` (the console script's function) in ``cwd``,
    where the test's sinedon.cfg is."""
    env = os.environ | {"EMLIVE_CONFIG": "", "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", f"emlive.appion.{module}", *map(str, args)]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def _pairs_by_source(dbs: LeginonDatabases) -> dict[int, int]:
    by_source: dict[int, int] = {}
    for row in rows(dbs.fake.appion, "SELECT `REF|leginondata|AcquisitionImageData|source` AS s FROM ApDDAlignImagePairData"):
        by_source[row["s"]] = by_source.get(row["s"], 0) + 1
    return by_source


@pytest.mark.slow
def test_motion_and_ctf_on_a_leginon_session(leginon_dbs: LeginonDatabases, tmp_path: Path) -> None:
    """Acceptance: 24 images of enn (MRC, TIFF, EER frames; the preset changed halfway), 2 of
    another preset, 3 hidden or trashed, 1 shown again, 1 rejected: exactly the other 20 are
    aligned and registered; ctffind4.py on enn-a finds the synthetic defocus within 2 %."""
    fake = leginon_dbs.fake
    truth = plan_session(n_movies=26, shape=(512, 512), n_frames=8, eer_fractions=8, eer_raw_frames_per_fraction=4,
                         formats=("mrc", "tiff", "eer"), dose_per_frame_e_a2=2.0, seed=21)
    session_id = fake.session("26jan04a")
    fake.calibrate(session_id, magnification=MAG, pixel_size_a=truth.pixel_size_a)
    enn = fake.preset(session_id, "enn", magnification=MAG, total_dose_e_a2=16.0, shape=truth.shape)
    esn = fake.preset(session_id, "esn", magnification=MAG, total_dose_e_a2=16.0, shape=truth.shape)
    gain = gain_reference(5, truth.shape)  # the frames' gain; Leginon keeps it turned a quarter anticlockwise,
    norm = fake.norm_image(session_id, np.rot90(gain, 1))  # with frame rotate = 1 to turn it back
    ids = []
    for movie in truth.movies[:24]:
        if movie.index == 12:  # the user changed the preset: Leginon writes a new PresetData row
            enn = fake.preset(session_id, "enn", magnification=MAG, total_dose_e_a2=16.0, shape=truth.shape)
        ids.append(fake.image(session_id, enn, f"26jan04a_{movie.index:03d}_enn", truth, movie, magnification=MAG,
                              norm_id=norm, frame_rotate=1, gain=gain))
    for movie in truth.movies[24:]:
        fake.image(session_id, esn, f"26jan04a_{movie.index:03d}_esn", truth, movie, magnification=MAG)
    fake.viewer_status(session_id, ids[1], "hidden")
    fake.viewer_status(session_id, ids[5], "trash")
    fake.viewer_status(session_id, ids[14], "hidden")
    fake.viewer_status(session_id, ids[7], "hidden")
    fake.viewer_status(session_id, ids[7], "normal")
    fake.assess(session_id, ids[9], keep=False)
    expected = [i for n, i in enumerate(ids) if n not in (1, 5, 14, 9)]
    assert len(expected) == 20
    leginon_dbs.sinedon_cfg(tmp_path)

    done = appion_command(
        "motioncor", "--session=26jan04a", "--preset=enn", f"--projectid={leginon_dbs.project_id}",
        f"--rundir={tmp_path / 'ddstack1'}", "--runname=ddstack1", "--commit", "--no-wait", "--no-rejects",
        "--doseweight", "--align", "--alignlabel=a", "--bin=1", "--Patchrows=0", "--Patchcols=0", "--gpuids=0",
        "--rendered_frame_size=4", "--eer_sampling=1", "--nproc=2", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    appion, legdb = fake.appion, fake.leginon
    assert _pairs_by_source(leginon_dbs) == {i: 2 for i in expected}
    (run,) = rows(appion, "SELECT r.*, p.path FROM ApDDStackRunData r JOIN ApPathData p "
                  "ON p.DEF_id = r.`REF|ApPathData|path`")
    assert (run["runname"], run["path"], run["REF|leginondata|SessionData|session"]) == (
        "ddstack1", str(tmp_path / "ddstack1"), session_id)
    assert count(appion, "ApDDStackParamsData", "preset = 'enn' AND bin = 1 AND align = 1") == 1
    assert count(appion, "ApDDAlignStatsData") == count(appion, "ApDDFrameTrajectoryData") == 20
    assert [r["status"] for r in rows(appion, "SELECT status FROM ApAppionJobData")] == ["D"]
    assert len(list((tmp_path / "ddstack1").glob("*.frames_Log.txt"))) == 20  # the viewer's drift plots
    dw = rows(legdb, "SELECT i.DEF_id, i.`MRC|image`, s.`image path` FROM AcquisitionImageData i JOIN PresetData p "
              "ON p.DEF_id = i.`REF|PresetData|preset` JOIN SessionData s ON s.DEF_id = i.`REF|SessionData|session` "
              "WHERE p.name = 'enn-a-DW'")
    assert len(dw) == 20
    for row in dw:
        with mrcfile.open(Path(row["image path"]) / row["MRC|image"]) as mrc:
            assert mrc.data.shape == (512, 512) and float(mrc.data.std()) > 0
            columns = mrc.data.mean(axis=0)
            assert columns.std() / columns.mean() < 0.05  # the gain turned right: about 0.035 (0.085 without it)

    ctf = appion_command(
        "ctffind4", "--session", "26jan04a", "--preset", "enn-a", f"--projectid={leginon_dbs.project_id}",
        f"--rundir={tmp_path / 'ctffind4run1'}", "--runname=ctffind4run1", "--no-wait", "--ampcontrast=0.07",
        "--fieldsize=512", "--resmin=30", "--resmax=5", "--defstep=0.05", "--numstep=40", "--dast=0.1", "--nproc=2",
        cwd=tmp_path,
    )
    assert ctf.returncode == 0, ctf.stdout + ctf.stderr
    found = rows(appion, "SELECT c.*, p.`REF|leginondata|AcquisitionImageData|source` AS source FROM ApCtfData c "
                 "JOIN ApDDAlignImagePairData p ON p.`REF|leginondata|AcquisitionImageData|result` = "
                 "c.`REF|leginondata|AcquisitionImageData|image`")
    assert sorted(row["source"] for row in found) == expected
    for row in found:
        movie = fake.truths[row["source"]]
        assert row["defocus2"] * 1e10 == pytest.approx(movie.defocus_u_a, rel=0.02), movie.name
        assert row["defocus1"] * 1e10 == pytest.approx(movie.defocus_v_a, rel=0.02), movie.name
    assert count(appion, "ApAceRunData", "name = 'ctffind4run1'") == 1
    assert all((tmp_path / "ctffind4run1" / "opimages" / row["graph1"]).is_file() for row in found)


@pytest.mark.slow
def test_killed_run_continues_without_duplicates_and_a_second_start_is_refused(
    leginon_dbs: LeginonDatabases, tmp_path: Path
) -> None:
    """The command follows the session while Leginon adds images; a second start on the same
    run folder is refused by the lock; SIGKILL mid-run, then --continue: every row exactly once."""
    fake = leginon_dbs.fake
    truth = plan_session(n_movies=12, shape=(256, 256), n_frames=8, eer_fractions=8, eer_raw_frames_per_fraction=4,
                         formats=("mrc", "tiff", "eer"), seed=22)
    session_id = fake.session("26jan05a")
    fake.calibrate(session_id, magnification=MAG, pixel_size_a=truth.pixel_size_a)
    preset = fake.preset(session_id, "enn", magnification=MAG, total_dose_e_a2=8.0, shape=truth.shape)

    def add(movie) -> int:
        return fake.image(session_id, preset, f"26jan05a_{movie.index:03d}_enn", truth, movie, magnification=MAG)

    ids = [add(movie) for movie in truth.movies[:6]]
    leginon_dbs.sinedon_cfg(tmp_path)
    flags = ("--session=26jan05a", "--preset=enn", f"--projectid={leginon_dbs.project_id}",
             f"--rundir={tmp_path / 'ddstack1'}", "--runname=ddstack1", "--commit", "--doseweight",
             "--rendered_frame_size=4", "--nproc=1")
    first = subprocess.Popen(
        [sys.executable, "-m", "emlive.appion.motioncor", *flags], cwd=tmp_path, start_new_session=True,
        env=os.environ | {"EMLIVE_CONFIG": "", "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: count(fake.appion, "ApDDAlignImagePairData") >= 2, timeout_s=300, what="a first image done")
        second = appion_command("motioncor", *flags, "--no-wait", cwd=tmp_path)
        assert second.returncode == 3
        assert "in use by another makeDDAlignMotionCor2_UCSF.py" in second.stderr
        ids += [add(movie) for movie in truth.movies[6:]]  # Leginon goes on acquiring
        _wait_for(lambda: any(s > ids[6] for s in _pairs_by_source(leginon_dbs)), timeout_s=300,
                  what="an image added while running done")
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    again = appion_command("motioncor", *flags, "--continue", "--no-wait", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _pairs_by_source(leginon_dbs) == {i: 2 for i in ids}
    appion, legdb = fake.appion, fake.leginon
    assert count(appion, "ApDDAlignStatsData") == count(appion, "ApDDFrameTrajectoryData") == 12
    assert count(appion, "ApDDStackRunData") == count(appion, "ApPathData") == count(appion, "ApAppionJobData") == 1
    assert count(legdb, "AcquisitionImageData", "filename LIKE %s", ("%-a",)) == 12
    assert count(legdb, "AcquisitionImageData", "filename LIKE %s", ("%-a-DW",)) == 12
    assert count(legdb, "CameraEMData", "`align frames` = 1") == 12
    assert count(legdb, "PresetData", "name IN ('enn-a', 'enn-a-DW')") == 2


def _wait_for(predicate, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.mark.slow
def test_following_stops_cleanly_on_sigterm(leginon_dbs: LeginonDatabases, tmp_path: Path) -> None:
    """Without --no-wait the command follows the session; SIGTERM makes it store what is in
    flight, set the job done and exit 0."""
    fake = leginon_dbs.fake
    truth = plan_session(n_movies=3, shape=(128, 128), n_frames=6, formats=("mrc", "tiff"), seed=23)
    session_id = fake.session("26jan05b")
    fake.calibrate(session_id, magnification=MAG, pixel_size_a=truth.pixel_size_a)
    preset = fake.preset(session_id, "enn", magnification=MAG, total_dose_e_a2=6.0, shape=truth.shape)
    fake.image(session_id, preset, "26jan05b_000_enn", truth, truth.movies[0], magnification=MAG)
    leginon_dbs.sinedon_cfg(tmp_path)
    follower = subprocess.Popen(
        [sys.executable, "-m", "emlive.appion.motioncor", "--session=26jan05b", "--preset=enn",
         f"--rundir={tmp_path / 'ddstack1'}", "--nproc=1"],
        cwd=tmp_path, env=os.environ | {"EMLIVE_CONFIG": "", "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(lambda: count(fake.appion, "ApDDAlignImagePairData") == 1, timeout_s=300, what="the first image")
        ids = [fake.image(session_id, preset, f"26jan05b_{m.index:03d}_enn", truth, m, magnification=MAG)
               for m in truth.movies[1:]]
        _wait_for(lambda: count(fake.appion, "ApDDAlignImagePairData") == 3, timeout_s=300, what="the images added")
        assert count(fake.appion, "ApAppionJobData", "status = 'R'") == 1  # still following
        follower.send_signal(signal.SIGTERM)
        _, stderr = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, stderr
    assert count(fake.appion, "ApAppionJobData", "status = 'D'") == 1
    assert set(_pairs_by_source(leginon_dbs)) >= set(ids)


@pytest.mark.slow
def test_an_image_with_incomplete_rows_fails_alone(leginon_dbs: LeginonDatabases, tmp_path: Path) -> None:
    fake = leginon_dbs.fake
    truth = plan_session(n_movies=2, shape=(128, 128), n_frames=6, formats=("mrc",), seed=24)
    session_id = fake.session("26jan05c")
    fake.calibrate(session_id, magnification=MAG, pixel_size_a=truth.pixel_size_a)
    preset = fake.preset(session_id, "enn", magnification=MAG, total_dose_e_a2=6.0, shape=truth.shape)
    good = fake.image(session_id, preset, "26jan05c_000_enn", truth, truth.movies[0], magnification=MAG)
    fake.image(session_id, preset, "26jan05c_001_enn", truth, truth.movies[1], magnification=59000)  # uncalibrated
    leginon_dbs.sinedon_cfg(tmp_path)
    done = appion_command("motioncor", "--session=26jan05c", "--preset=enn", f"--rundir={tmp_path / 'ddstack1'}",
                          "--no-wait", "--nproc=1", cwd=tmp_path)
    assert done.returncode == 1
    assert "no pixel size calibration for magnification 59000" in done.stderr
    assert _pairs_by_source(leginon_dbs) == {good: 1}
    assert count(fake.appion, "ApAppionJobData", "status = 'D'") == 1
