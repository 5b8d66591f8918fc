"""Facility-layout sessions: names, status as facility scripts read it, start/stop/resume."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from emlive.acquisition import Acquisition


@pytest.fixture
def control(db):
    from emlive.web import control

    return control


@pytest.fixture
def root(tmp_path):
    return tmp_path / "facility"


def make_session(root, project="p1", user="ann", session="grid1", movies=("m0.tif", "m1.tif")):
    raw = root / project / "sessions" / user / session / "raw"
    raw.mkdir(parents=True)
    for name in movies:
        (raw / name).write_bytes(b"x")
    return raw


ACQ = Acquisition(pixel_size_a=0.83, dose_per_frame_e_a2=1.0, voltage_kv=300.0)


@pytest.mark.parametrize(
    ("project", "user", "session"),
    [("..", "u", "s"), ("p", "..", "s"), ("p", "u", ".."), ("p", "u", "a/../../x"), ("p/x", "u", "s"), ("", "u", "s")],
)
def test_unsafe_names_never_reach_the_file_system(control, root, project, user, session):
    with pytest.raises(control.BadName):
        control.session_dir(root, project, user, session)


def test_a_symlink_out_of_the_data_root_is_refused(control, root, tmp_path):
    (root / "p1" / "sessions" / "ann").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "p1" / "sessions" / "ann" / "escape").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(control.BadName, match="outside the data root"):
        control.session_dir(root, "p1", "ann", "escape")


def test_status_of_folders_not_yet_started(control, root):
    assert control.session_status(root, "p1", "ann", "none").state == "no_such_session"
    make_session(root, session="empty", movies=())
    assert control.session_status(root, "p1", "ann", "empty").state == "incomplete_or_empty"
    make_session(root, session="grid1", movies=("a.eer", "b.tiff", "notes.txt"))
    status = control.session_status(root, "p1", "ann", "grid1")
    assert asdict(status) == {
        "state": "needs_processing", "raw_files": 2, "processed_files": 0, "failed_jobs": 0,
        "percent_done_total": 0.0, "percent_current_cycle": 0.0,
    }
    assert control.list_sessions(root, "p1", "ann") == ["empty", "grid1"]
    assert control.list_sessions(root, "p1", "nobody") == []


def test_status_follows_processing(control, db, root, store_processed):
    make_session(root)
    session = control.start_processing(root, "p1", "ann", "grid1", ACQ, params={"motion": {"bin_factor": 2}})
    assert (session.state, session.owner, session.project.name, session.params_json) == (
        "processing", "ann", "p1", {"motion": {"bin_factor": 2}}
    )
    assert session.out_dir.endswith("grid1/processed") and session.acquisition == ACQ
    assert control.status_of(session).state == "processing_start"

    ids = [db.store.record_exposure(session, f"m{i}.tif", 1, 1)[0].pk for i in range(4)]
    store_processed(ids[0], "m0")
    db.store.mark_failed(ids[1], "truncated")
    status = control.session_status(root, "p1", "ann", "grid1")
    assert (status.state, status.raw_files, status.processed_files, status.failed_jobs) == ("processing", 4, 1, 1)
    assert status.percent_done_total == 50.0 and status.percent_current_cycle == 50.0

    store_processed(ids[2], "m2")
    store_processed(ids[3], "m3")
    assert control.status_of(session).state == "processing_complete"


def test_stop_and_resume_start_a_new_cycle(control, db, root, store_processed):
    make_session(root)
    session = control.start_processing(root, "p1", "ann", "grid1", ACQ)
    ids = [db.store.record_exposure(session, f"m{i}.tif", 1, 1)[0].pk for i in range(2)]
    store_processed(ids[0], "m0")
    session = control.stop_processing(session)
    assert session.state == "stopped" and control.status_of(session).state == "needs_processing"

    session = control.resume_processing(session)
    assert session.state == "processing"
    status = control.status_of(session)
    assert status.percent_done_total == 50.0 and status.percent_current_cycle == 0.0  # only m1 is in this cycle
    store_processed(ids[1], "m1")
    assert control.status_of(session).percent_current_cycle == 100.0


def test_restart_with_new_parameters_only_when_not_processing(control, root):
    make_session(root)
    first = control.start_processing(root, "p1", "ann", "grid1", ACQ)
    other = ACQ.model_copy(update={"pixel_size_a": 1.1})
    assert control.start_processing(root, "p1", "ann", "grid1", other).pixel_size_a == 0.83  # running: unchanged
    control.stop_processing(first)
    again = control.start_processing(root, "p1", "ann", "grid1", other)
    assert again.pk == first.pk and again.pixel_size_a == 1.1 and again.state == "processing"


def test_start_without_raw_folder_says_what_is_missing(control, root):
    (root / "p1" / "sessions" / "ann" / "grid1").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="raw"):
        control.start_processing(root, "p1", "ann", "grid1", ACQ)


def test_every_failed_exposure_is_a_processing_failure(control, db, root):
    make_session(root)
    session = control.start_processing(root, "p1", "ann", "grid1", ACQ)
    for i in range(2):
        db.store.mark_failed(db.store.record_exposure(session, f"m{i}.tif", 1, 1)[0].pk, "corrupt")
    assert control.status_of(session).state == "processing_failure"
    assert set(control.COMPAT_STATES) >= {control.status_of(session).state}
