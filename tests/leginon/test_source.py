"""The Leginon source against a real MariaDB holding Leginon's tables (fake Leginon's rows)."""

from __future__ import annotations

import numpy as np
import pytest

from emlive.sources import leginon
from emlive.synth.session import plan_session
from tests.leginon.conftest import LeginonDatabases

pytestmark = pytest.mark.mysql

TINY = dict(shape=(64, 64), n_frames=4, eer_fractions=4, eer_raw_frames_per_fraction=2)


def test_images_of_a_preset_skip_hidden_trashed_and_rejected(leginon_dbs: LeginonDatabases) -> None:
    fake = leginon_dbs.fake
    truth = plan_session(n_movies=9, formats=("mrc", "tiff", "eer"), seed=1, **TINY)
    session_id = fake.session("26jan02a")
    fake.calibrate(session_id, magnification=105000, pixel_size_a=0.83)
    first = fake.preset(session_id, "enn", magnification=105000, total_dose_e_a2=40.0, shape=truth.shape)
    other = fake.preset(session_id, "esn", magnification=105000, total_dose_e_a2=40.0, shape=truth.shape)
    ids = [fake.image(session_id, first, f"26jan02a_{i:03d}_enn", truth, truth.movies[i], magnification=105000)
           for i in range(4)]
    fake.image(session_id, other, "26jan02a_900_esn", truth, truth.movies[4], magnification=105000)
    changed = fake.preset(session_id, "enn", magnification=105000, total_dose_e_a2=50.0, shape=truth.shape)
    ids += [fake.image(session_id, changed, f"26jan02a_{i:03d}_enn", truth, truth.movies[i], magnification=105000,
                       tilt_deg=30.0) for i in range(5, 9)]
    fake.viewer_status(session_id, ids[1], "hidden")
    fake.viewer_status(session_id, ids[2], "trash")
    fake.viewer_status(session_id, ids[3], "hidden")
    fake.viewer_status(session_id, ids[3], "normal")  # shown again: its newest status counts
    fake.assess(session_id, ids[4], keep=False)
    fake.assess(session_id, ids[5], keep=False)
    fake.assess(session_id, ids[5], keep=True)  # kept by the newer assessment

    conn, appion = fake.leginon, fake.appion
    session = leginon.find_session(conn, "26jan02a")
    assert session.id == session_id
    expected = [ids[0], *ids[3:]]
    assert leginon.image_ids(conn, session, "enn") == expected
    assert leginon.image_ids(conn, session, "enn", appion=appion, no_rejects=True) == [i for i in expected if i != ids[4]]
    assert leginon.image_ids(conn, session, "enn", after_id=ids[5]) == ids[6:]  # polling by id
    assert len(leginon.image_ids(conn, session, None)) == 7  # every preset: 9 images less the hidden and trashed
    assert leginon.newest_id(conn, session) == ids[-1]


def test_image_values_in_emlive_units(leginon_dbs: LeginonDatabases) -> None:
    fake = leginon_dbs.fake
    truth = plan_session(n_movies=3, formats=("mrc", "tiff", "eer"), seed=2, **TINY)
    session_id = fake.session("26jan02b")
    fake.calibrate(session_id, magnification=105000, pixel_size_a=0.9, binning=2)  # 0.45 Å unbinned
    fake.calibrate(session_id, magnification=81000, pixel_size_a=1.1)  # another magnification: ignored
    preset = fake.preset(session_id, "enn", magnification=105000, total_dose_e_a2=48.0, shape=truth.shape, binning=2)
    before = fake.image(session_id, preset, "b_000_enn", truth, truth.movies[0], magnification=105000, binning=2)
    fake.calibrate(session_id, magnification=105000, pixel_size_a=0.8)  # recalibrated: applies to later images
    norm = fake.norm_image(session_id, np.ones(truth.shape))
    tif = fake.image(session_id, preset, "b_001_enn", truth, truth.movies[1], magnification=105000, tilt_deg=-20.0,
                     norm_id=norm, frame_rotate=3, frame_flip=2)
    eer = fake.image(session_id, preset, "b_002_enn", truth, truth.movies[2], magnification=105000)
    session = leginon.find_session(fake.leginon, "26jan02b")

    image = leginon.read_image(fake.leginon, session, before)
    assert image.pixel_size_a == pytest.approx(0.9)  # 0.45 Å per unbinned pixel × binning 2
    assert image.binning == 2
    assert image.voltage_kv == pytest.approx(300.0)
    assert image.cs_mm == pytest.approx(2.7)
    assert image.total_dose_e_a2 == pytest.approx(48.0)
    assert image.n_frames == 4
    assert image.frames_path == session.frame_path / "b_000_enn.frames.mrc"
    assert image.image_path == session.image_path / "b_000_enn.mrc"
    assert image.preset_name == "enn"
    assert (image.gain_path, image.gain_rotation, image.gain_flip) == (None, 0, None)
    mean_a = (truth.movies[0].defocus_u_a + truth.movies[0].defocus_v_a) / 2
    assert image.nominal_defocus_a == pytest.approx(round(mean_a, -3))

    image = leginon.read_image(fake.leginon, session, tif)
    assert image.pixel_size_a == pytest.approx(0.8)
    assert image.tilt_deg == pytest.approx(-20.0)
    assert image.frames_path == session.frame_path / "b_001_enn.frames.tif"
    assert (image.gain_path, image.gain_rotation, image.gain_flip) == (session.image_path / "norm.mrc", 3, "x")
    image = leginon.read_image(fake.leginon, session, eer)
    assert image.frames_path == session.frame_path / "b_002_enn.frames.eer"
    assert image.n_frames == 8  # EER: raw frames

    image.frames_path.unlink()  # not transferred yet
    assert leginon.read_image(fake.leginon, session, eer).frames_path is None


def test_missing_session_and_calibration_are_named(leginon_dbs: LeginonDatabases) -> None:
    fake = leginon_dbs.fake
    truth = plan_session(n_movies=1, formats=("mrc",), seed=3, **TINY)
    with pytest.raises(leginon.LeginonError, match="no Leginon session named 'nope'"):
        leginon.find_session(fake.leginon, "nope")
    session_id = fake.session("26jan02c")
    preset = fake.preset(session_id, "enn", magnification=105000, total_dose_e_a2=40.0, shape=truth.shape)
    image_id = fake.image(session_id, preset, "c_000_enn", truth, truth.movies[0], magnification=105000)
    fake.calibrate(session_id, magnification=105000, pixel_size_a=0.9)  # only after the image
    session = leginon.find_session(fake.leginon, "26jan02c")
    with pytest.raises(leginon.LeginonError, match="no pixel size calibration for magnification 105000"):
        leginon.read_image(fake.leginon, session, image_id)


def test_project_databases(leginon_dbs: LeginonDatabases) -> None:
    fake = leginon_dbs.fake
    session_id = fake.session("26jan02d")
    session = leginon.find_session(fake.leginon, session_id=session_id)
    assert leginon.project_of_session(fake.project, session) == leginon_dbs.project_id
    assert leginon.appion_database(fake.project, leginon_dbs.project_id) == leginon_dbs.appion_db
    with pytest.raises(leginon.LeginonError, match="project 999 has no Appion database"):
        leginon.appion_database(fake.project, 999)


def test_a_dropped_connection_is_reconnected(leginon_dbs: LeginonDatabases) -> None:
    from emlive.appion.databases import Connections

    fake = leginon_dbs.fake
    session_id = fake.session("26jan02e")
    names = {"leginon": leginon_dbs.leginon_db, "project": leginon_dbs.project_db, "appion": leginon_dbs.appion_db}
    db = Connections(leginon_dbs.server, names, leginon.find_session(fake.leginon, session_id=session_id),
                     leginon_dbs.project_id)
    try:
        with fake.project.cursor() as cursor:  # the server drops the command's Leginon connection
            cursor.execute("KILL %s", (db.leginon.thread_id(),))
        db.reconnect_if_lost()
        assert leginon.find_session(db.leginon, "26jan02e").id == session_id
    finally:
        db.close()


@pytest.mark.parametrize(("choice", "kept"), [
    ("all", [-40.0, -2.5, 0.01, 2.5, 40.0]), ("notilt", [-2.5, 0.01, 2.5]), ("hightilt", [-40.0, 40.0]),
    ("lowtilt", [-2.5, 0.01, 2.5]), ("minustilt", [-40.0, -2.5]), ("plustilt", [2.5, 40.0]),
])
def test_tilt_choices_as_classic_appion(choice: str, kept: list[float]) -> None:
    tilts = [-40.0, -2.5, 0.01, 2.5, 40.0]
    assert [a for a in tilts if not leginon.skipped_for_tilt(a, choice)] == kept
    with pytest.raises(ValueError, match="choose one of"):
        leginon.skipped_for_tilt(0.0, "sideways")
