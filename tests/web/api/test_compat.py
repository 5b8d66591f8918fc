"""The compatible routes facility scripts call (DESIGN.md §3): exactly the six status fields,
the listed states, start/stop/resume as GET and POST, with exposures stored as the controller
stores them."""

from __future__ import annotations

import pytest

FIELDS = {"state", "raw_files", "processed_files", "failed_jobs", "percent_done_total", "percent_current_cycle"}


@pytest.fixture
def status(web, client):
    def get(project: str = "p1", user: str = "ann", session: str = "grid1", who: str = "ann") -> dict:
        response = client.get(f"/{project}/{user}/session/{session}", **web.auth(who))
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == FIELDS
        return body

    return get


def recorded(name: str = "grid1"):
    from emlive.db.models import Session

    return Session.objects.get(name=name)


def test_sessions_lists_the_users_session_folders_with_raw(web, client):
    web.session(name="grid2")
    web.session(name="grid1", movies=())
    (web.root / "p1" / "sessions" / "ann" / "notes").mkdir()  # no raw/: not a session
    response = client.get("/p1/ann/sessions", **web.auth())
    assert response.json() == {"sessions": ["grid1", "grid2"]}
    assert client.get("/p1/nobody/sessions", **web.auth()).json() == {"sessions": []}


def test_status_before_any_start(web, status):
    assert status(session="nothing") == {
        "state": "no_such_session", "raw_files": 0, "processed_files": 0, "failed_jobs": 0,
        "percent_done_total": 0.0, "percent_current_cycle": 0.0,
    }  # fmt: skip
    web.session(name="empty", movies=())
    assert status(session="empty")["state"] == "incomplete_or_empty"
    web.session(movies=("a.tif", "b.eer", "c.txt"))
    assert status() == {
        "state": "needs_processing", "raw_files": 2, "processed_files": 0, "failed_jobs": 0,
        "percent_done_total": 0.0, "percent_current_cycle": 0.0,
    }  # fmt: skip


def test_status_follows_the_exposures_through_a_whole_cycle(web, client, status, store, make_results):
    from emlive.web.control import COMPAT_STATES

    raw = web.session(movies=("m0.tif", "m1.tif", "m2.tif", "m3.tif"))
    started = client.get("/p1/ann/session/grid1/start-processing?apix=0.83&fmdose=1.1&kev=300", **web.auth())
    assert started.status_code == 200
    assert started.json()["state"] == "processing_start"  # nothing recorded yet
    session = recorded()
    exposures = [store.record_exposure(session, f"m{i}.tif", 1, 1)[0] for i in range(4)]
    assert status() == {
        "state": "processing", "raw_files": 4, "processed_files": 0, "failed_jobs": 0,
        "percent_done_total": 0.0, "percent_current_cycle": 0.0,
    }  # fmt: skip
    for exposure in exposures[:2]:
        store.mark_submitted(exposure.pk)
        store.store_result(exposure.pk, *make_results(exposure.path.removesuffix(".tif")), **ENGINES)
    assert status() == {
        "state": "processing", "raw_files": 4, "processed_files": 2, "failed_jobs": 0,
        "percent_done_total": 50.0, "percent_current_cycle": 50.0,
    }  # fmt: skip
    stopped = client.post("/p1/ann/session/grid1/stop-processing", **web.auth()).json()
    assert stopped["state"] == "needs_processing"  # two left to do
    store.mark_submitted(exposures[2].pk)
    store.mark_failed(exposures[2].pk, "boom")
    resumed = client.get("/p1/ann/session/grid1/resume-processing", **web.auth()).json()
    assert resumed == {
        "state": "processing", "raw_files": 4, "processed_files": 2, "failed_jobs": 1,
        "percent_done_total": 75.0, "percent_current_cycle": 0.0,
    }  # fmt: skip
    # (a new cycle: percent_current_cycle counts only what was left)
    store.mark_submitted(exposures[3].pk)
    store.store_result(exposures[3].pk, *make_results("m3"), **ENGINES)
    final = status()
    assert final == {
        "state": "processing_complete", "raw_files": 4, "processed_files": 3, "failed_jobs": 1,
        "percent_done_total": 100.0, "percent_current_cycle": 100.0,
    }  # fmt: skip
    assert final["state"] in COMPAT_STATES
    assert raw.is_dir()


def test_a_session_whose_every_exposure_failed_reports_processing_failure(web, client, status, store):
    web.session(movies=("a.tif",))
    client.post("/p1/ann/session/grid1/start-processing?apix=1&fmdose=1", **web.auth())
    exposure, _ = store.record_exposure(recorded(), "a.tif", 1, 1)
    store.mark_failed(exposure.pk, "unreadable")
    assert status()["state"] == "processing_failure"
    assert status()["failed_jobs"] == 1


def test_start_records_the_acquisition_and_super_resolution_bins_by_two(web, client):
    web.session()
    response = client.post(
        "/p1/ann/session/grid1/start-processing?apix=0.415&fmdose=0.9&kev=200&superresolution=true", **web.auth()
    )
    assert response.status_code == 200
    session = recorded()
    assert (session.pixel_size_a, session.dose_per_frame_e_a2, session.voltage_kv) == (0.415, 0.9, 200.0)
    assert session.params_json == {"motion": {"bin_factor": 2}}
    assert session.owner == "ann"
    assert session.project.name == "p1"
    assert session.state == "processing"


def test_start_takes_its_parameters_from_a_form_too_and_defaults_to_300_kv(web, client):
    web.session()
    response = client.post(
        "/p1/ann/session/grid1/start-processing", data={"apix": "1.1", "fmdose": "1.2"}, **web.auth()
    )
    assert response.status_code == 200, response.content
    session = recorded()
    assert (session.pixel_size_a, session.voltage_kv, session.params_json) == (1.1, 300.0, {})


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("", "apix and fmdose required"),
        ("?apix=1", "fmdose required"),
        ("?apix=-1&fmdose=1", "apix"),
        ("?apix=1&fmdose=1&kev=1000", "voltage_kv"),
        ("?apix=abc&fmdose=1", "apix"),
        ("?apix=1&fmdose=1&superresolution=maybe", "superresolution"),
    ],
)
def test_start_with_missing_or_bad_parameters_is_a_400_saying_which(web, client, query, says):
    web.session()
    for method in (client.get, client.post):
        response = method(f"/p1/ann/session/grid1/start-processing{query}", **web.auth())
        assert response.status_code == 400
        assert says in response.json()["detail"]
    assert client.get("/p1/ann/session/grid1", **web.auth()).json()["state"] == "needs_processing"


def test_start_without_a_folder_is_a_404_and_stop_before_start_a_409(web, client):
    response = client.get("/p1/ann/session/nothing/start-processing?apix=1&fmdose=1", **web.auth())
    assert response.status_code == 404
    assert "nothing" in response.json()["detail"]
    web.session(name="empty", movies=())
    (web.root / "p1" / "sessions" / "ann" / "noraw").mkdir()
    response = client.get("/p1/ann/session/noraw/start-processing?apix=1&fmdose=1", **web.auth())
    assert response.status_code == 404
    assert "raw" in response.json()["detail"]
    for action in ("stop", "resume"):
        response = client.post(f"/p1/ann/session/empty/{action}-processing", **web.auth())
        assert response.status_code == 409
        assert "start-processing" in response.json()["detail"]


def test_starting_again_while_processing_keeps_the_parameters(web, client):
    web.session()
    client.get("/p1/ann/session/grid1/start-processing?apix=1&fmdose=1", **web.auth())
    again = client.get("/p1/ann/session/grid1/start-processing?apix=2&fmdose=2", **web.auth())
    assert again.status_code == 200
    assert recorded().pixel_size_a == 1.0
    client.get("/p1/ann/session/grid1/stop-processing", **web.auth())
    client.get("/p1/ann/session/grid1/start-processing?apix=2&fmdose=2", **web.auth())
    assert recorded().pixel_size_a == 2.0


def test_any_member_of_the_project_may_control_a_users_session(web, client):
    from emlive.web.access import add_user, create_token

    web.session(user="ann")
    carl = create_token(add_user("carl", projects=("p1",)))
    response = client.get(f"/p1/ann/session/grid1/start-processing?apix=1&fmdose=1&access_token={carl}")
    assert response.status_code == 200


ENGINES = {"motion_engine": "native", "motion_engine_version": "t", "ctf_engine": "native", "ctf_engine_version": "t"}
