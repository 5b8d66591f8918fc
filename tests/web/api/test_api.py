"""The typed API, /api/v1: every route's answers, on a session whose exposures are stored as the
controller stores them."""

from __future__ import annotations

import json
import math
import time

import pytest

from emlive.acquisition import Acquisition
from emlive.curation import Curation, accepts

ACQ = Acquisition(pixel_size_a=0.83, dose_per_frame_e_a2=1.0, voltage_kv=300.0)
ENGINES = {"motion_engine": "native", "motion_engine_version": "t", "ctf_engine": "ctffind", "ctf_engine_version": "4.1.14"}


@pytest.fixture
def session(web, store, make_results):
    """p1/ann/grid1 started, with 6 exposures: 4 processed (drift 5, 10, 15, 20 Å; the last
    without Thon rings), 1 failed, 1 found."""
    from emlive.web import control

    web.session(movies=tuple(f"m{i}.tif" for i in range(6)))
    session = control.start_processing(web.root, "p1", "ann", "grid1", ACQ)
    exposures = [store.record_exposure(session, f"m{i}.tif", 100 + i, (1_700_000_000 + i) * 10**9)[0] for i in range(6)]
    for i, exposure in enumerate(exposures[:4]):
        store.mark_submitted(exposure.pk)
        results = make_results(f"m{i}", total_drift_a=5.0 * (i + 1), defocus_u_a=10000.0 + 2000 * i, fit_ok=i != 3)
        store.store_result(exposure.pk, *results, **ENGINES)
    store.mark_submitted(exposures[4].pk)
    store.mark_failed(exposures[4].pk, "Traceback …\nMovieFormatError: truncated")
    return session, exposures


def get(client, web, url, who="ann", status=200):
    response = client.get(url, **web.auth(who))
    assert response.status_code == status, response.content
    return response.json()


def send(client, web, method, url, body=None, who="ann", status=200):
    response = getattr(client, method)(url, data=json.dumps(body or {}), content_type="application/json", **web.auth(who))
    assert response.status_code == status, response.content
    return response.json()


def test_session_detail_has_state_counts_acquisition_params_and_curation(web, client, session):
    s, _ = session
    body = get(client, web, f"/api/v1/sessions/{s.pk}")
    assert body["id"] == s.pk
    assert (body["project"], body["name"], body["owner"], body["state"]) == ("p1", "grid1", "ann", "processing")
    assert body["counts"] == {"found": 1, "submitted": 0, "processed": 4, "failed": 1, "total": 6}
    assert body["status"]["state"] == "processing"
    assert body["status"]["percent_done_total"] == pytest.approx(83.3)
    assert body["acquisition"]["pixel_size_a"] == 0.83
    assert body["params"] == {}
    assert body["curation"] == Curation().model_dump()
    assert body["raw_dir"].endswith("p1/sessions/ann/grid1/raw")
    assert get(client, web, f"/api/v1/sessions/{s.pk}/status") == body["status"]


def test_sessions_are_listed_newest_first_in_pages_with_filters(web, client, session):
    from emlive.web import control

    for name in ("grid2", "grid3"):
        web.session(name=name)
        control.start_processing(web.root, "p1", "ann", name, ACQ)
    control.stop_processing(control.recorded_session(web.root / "p1/sessions/ann/grid3"))
    page = get(client, web, "/api/v1/sessions?limit=2")
    assert (page["count"], page["limit"], page["offset"]) == (3, 2, 0)
    assert [s["name"] for s in page["items"]] == ["grid3", "grid2"]
    assert [s["name"] for s in get(client, web, "/api/v1/sessions?limit=2&offset=2")["items"]] == ["grid1"]
    assert get(client, web, "/api/v1/sessions?limit=2&offset=2")["items"][0]["counts"]["total"] == 6
    assert [s["name"] for s in get(client, web, "/api/v1/sessions?state=stopped")["items"]] == ["grid3"]
    assert get(client, web, "/api/v1/sessions?project=p2")["count"] == 0
    assert get(client, web, "/api/v1/projects") == [{"name": "p1", "sessions": 3}]
    assert "state" in get(client, web, "/api/v1/sessions?state=bogus", status=400)["detail"]
    assert "limit" in get(client, web, "/api/v1/sessions?limit=0", status=400)["detail"]


def test_start_a_session_through_the_api(web, client):
    web.session(name="grid9")
    (web.root / "p1/sessions/ann/grid9/gain.mrc").write_bytes(b"")
    body = {
        "project": "p1", "user": "ann", "name": "grid9",
        "acquisition": ACQ.model_dump(mode="json") | {"gain_path": "gain.mrc"},
        "params": {"motion": {"bin_factor": 2, "patches": [7, 5]}, "ctf": {"max_res_a": 4.0}},
    }  # fmt: skip
    started = send(client, web, "post", "/api/v1/sessions", body)
    assert started["state"] == "processing"
    assert started["params"] == {"motion": {"bin_factor": 2, "patches": [7, 5]}, "ctf": {"max_res_a": 4.0}}
    assert started["acquisition"]["gain_path"] == str((web.root / "p1/sessions/ann/grid9/gain.mrc").resolve())
    conflict = send(client, web, "post", "/api/v1/sessions", body, status=409)
    assert f"/api/v1/sessions/{started['id']}/stop" in conflict["detail"]
    send(client, web, "post", f"/api/v1/sessions/{started['id']}/stop")
    restarted = send(client, web, "post", "/api/v1/sessions", body | {"params": {}})
    assert (restarted["id"], restarted["params"]) == (started["id"], {})


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"params": {"motion": {"bin_factr": 2}}}, "bin_factr"),
        ({"params": {"motion": {"bin_factor": 0.5}}}, "bin_factor"),
        ({"params": {"ctf": {"min_res_a": 3, "max_res_a": 4}}}, "finer"),
        ({"params": {"relion": {}}}, "relion"),
        ({"name": "../grid1"}, "letters, digits"),
        ({"name": "a..b"}, "letters, digits"),
        ({"project": ""}, "project"),
        ({"acquisition": {"pixel_size_a": 1.0}}, "dose_per_frame_e_a2"),
        ({"acquisition": ACQ.model_dump(mode="json") | {"voltage_kv": 5000}}, "voltage_kv"),
        ({"acquisition": ACQ.model_dump(mode="json") | {"pixel_size_a": "Infinity"}}, "pixel_size_a"),
        ({"extra": 1}, "extra"),
    ],
)
def test_start_with_bad_parameters_is_a_400_saying_which(web, client, change, says):
    web.session()
    body = {"project": "p1", "user": "ann", "name": "grid1", "acquisition": ACQ.model_dump(mode="json")} | change
    detail = send(client, web, "post", "/api/v1/sessions", body, status=400)["detail"]
    assert says in detail


def test_start_without_raw_folder_is_a_404(web, client):
    body = {"project": "p1", "user": "ann", "name": "none", "acquisition": ACQ.model_dump(mode="json")}
    assert "raw" in send(client, web, "post", "/api/v1/sessions", body, status=404)["detail"]


def test_stop_and_resume(web, client, session):
    s, _ = session
    stopped = send(client, web, "post", f"/api/v1/sessions/{s.pk}/stop")
    assert stopped["state"] == "stopped"
    assert stopped["status"]["state"] == "needs_processing"
    resumed = send(client, web, "post", f"/api/v1/sessions/{s.pk}/resume")
    assert resumed["state"] == "processing"
    assert resumed["cycle_started_at"] > stopped["cycle_started_at"]
    assert resumed["status"]["percent_current_cycle"] == 0.0


def test_the_status_is_counted_once_a_second_but_a_start_or_stop_shows_at_once(web, client, session, store, monkeypatch):
    from emlive.web import api

    s, _ = session
    monkeypatch.setattr(api, "STATUS_TTL_S", 3600.0)
    url = f"/api/v1/sessions/{s.pk}/status"
    before = get(client, web, url)
    store.record_exposure(s, "late.tif", 1, 1)
    assert get(client, web, url) == before == get(client, web, "/p1/ann/session/grid1")  # reused
    stopped = send(client, web, "post", f"/api/v1/sessions/{s.pk}/stop")["status"]
    assert stopped["raw_files"] == before["raw_files"] + 1
    assert get(client, web, url) == stopped
    monkeypatch.setattr(api, "STATUS_TTL_S", 0.0)
    store.record_exposure(s, "later.tif", 1, 1)
    assert get(client, web, url)["raw_files"] == before["raw_files"] + 2


def test_parameters_and_curation(web, client, session):
    s, _ = session
    params = get(client, web, f"/api/v1/sessions/{s.pk}/parameters")
    assert set(params) == {"acquisition", "params", "curation"}
    assert params["acquisition"]["voltage_kv"] == 300.0
    thresholds = {"max_total_drift_a": 12.0, "reject_no_fit": True}
    saved = send(client, web, "put", f"/api/v1/sessions/{s.pk}/curation", thresholds)
    assert saved == Curation(**thresholds).model_dump()
    assert get(client, web, f"/api/v1/sessions/{s.pk}/curation") == saved
    assert get(client, web, f"/api/v1/sessions/{s.pk}/parameters")["curation"] == saved
    s.refresh_from_db()
    assert s.curation == Curation(**thresholds)


@pytest.mark.parametrize(
    "bad",
    [{"max_total_drift_a": -1}, {"max_fit_resolution_a": 0}, {"max_drift": 3}, {"reject_no_fit": "perhaps"}],
)
def test_bad_thresholds_are_a_400_and_change_nothing(web, client, session, bad):
    s, _ = session
    detail = send(client, web, "put", f"/api/v1/sessions/{s.pk}/curation", bad, status=400)["detail"]
    assert next(iter(bad)) in detail
    assert get(client, web, f"/api/v1/sessions/{s.pk}/curation") == Curation().model_dump()


def test_infinite_thresholds_are_refused(web, client, session):
    s, _ = session
    response = client.put(
        f"/api/v1/sessions/{s.pk}/curation", data='{"max_total_drift_a": Infinity}', content_type="application/json",
        **web.auth(),
    )  # fmt: skip
    assert response.status_code == 400


def test_exposures_are_paged_and_ordered(web, client, session):
    s, exposures = session
    url = f"/api/v1/sessions/{s.pk}/exposures"
    page = get(client, web, f"{url}?limit=4")
    assert (page["count"], len(page["items"])) == (6, 4)
    assert [e["path"] for e in page["items"]] == ["m0.tif", "m1.tif", "m2.tif", "m3.tif"]
    assert [e["path"] for e in get(client, web, f"{url}?limit=4&offset=4")["items"]] == ["m4.tif", "m5.tif"]
    assert [e["path"] for e in get(client, web, f"{url}?order=-path")["items"]][:2] == ["m5.tif", "m4.tif"]
    by_drift = [e["total_drift_a"] for e in get(client, web, f"{url}?order=-total_drift_a")["items"]]
    assert by_drift == [20.0, 15.0, 10.0, 5.0, None, None]
    by_defocus = [e["path"] for e in get(client, web, f"{url}?order=defocus_a&state=processed")["items"]]
    assert by_defocus == ["m0.tif", "m1.tif", "m2.tif", "m3.tif"]
    first = page["items"][0]
    assert first["state"] == "processed"
    assert first["defocus_u_a"] == 10000.0
    assert first["astigmatism_a"] == pytest.approx(abs(10000.0 - 14000.0))
    assert first["fit_ok"] is True
    assert first["accepted"] is True
    assert page["items"][3]["fit_ok"] is False
    failed = get(client, web, f"{url}?state=failed")["items"]
    assert [(e["path"], e["fail_count"], e["accepted"]) for e in failed] == [("m4.tif", 1, None)]
    found = get(client, web, f"{url}?state=found")["items"][0]
    assert (found["total_drift_a"], found["defocus_u_a"], found["accepted"]) == (None, None, None)


def test_exposures_filtered_by_curation_agree_with_the_curation_rules(web, client, session):
    from emlive.db.models import Exposure

    s, _ = session
    url = f"/api/v1/sessions/{s.pk}/exposures"
    assert get(client, web, f"{url}?curation=rejected")["count"] == 0  # no thresholds: all kept
    assert get(client, web, f"{url}?curation=accepted")["count"] == 4
    for thresholds in (
        {"max_total_drift_a": 12.0},
        {"reject_no_fit": True},
        {"max_total_drift_a": 17.0, "reject_no_fit": True},
        {"min_defocus_a": 13000.0, "max_astigmatism_a": 4500.0},
    ):
        send(client, web, "put", f"/api/v1/sessions/{s.pk}/curation", thresholds)
        curation = Curation(**thresholds)
        expected = {
            e.path: accepts(
                curation, fit_resolution_a=e.ctf.fit_resolution_a, total_drift_a=e.motion.total_drift_a,
                defocus_u_a=e.ctf.defocus_u_a, defocus_v_a=e.ctf.defocus_v_a, fit_ok=e.ctf.fit_ok,
                ice_ring_ratio=e.ctf.ice_ring_ratio,
            )
            for e in Exposure.objects.filter(session=s, state="processed").select_related("motion", "ctf")
        }  # fmt: skip
        accepted = get(client, web, f"{url}?curation=accepted")["items"]
        rejected = get(client, web, f"{url}?curation=rejected")["items"]
        assert {e["path"] for e in accepted} == {p for p, ok in expected.items() if ok}, thresholds
        assert {e["path"] for e in rejected} == {p for p, ok in expected.items() if not ok}, thresholds
        assert all(e["accepted"] is True for e in accepted) and all(e["accepted"] is False for e in rejected)
        assert {e["path"] for e in rejected} != set() or thresholds == {}
    assert get(client, web, f"{url}?curation=maybe", status=400)["detail"].startswith("invalid request: query curation")


def test_one_exposures_results(web, client, session):
    s, exposures = session
    body = get(client, web, f"/api/v1/sessions/{s.pk}/exposures/{exposures[1].pk}")
    assert (body["path"], body["state"], body["session_id"], body["accepted"]) == ("m1.tif", "processed", s.pk, True)
    assert body["motion"]["shifts_px"] == [[0.0, 0.0], [-1.25, 0.5], [-2.5, 1.0]]
    assert body["motion"]["total_drift_a"] == 10.0
    assert body["motion"]["early_drift_a"] == 2.5
    assert (body["motion"]["engine"], body["motion"]["n_frames"]) == ("native", 3)
    ctf = body["ctf"]
    assert (ctf["defocus_u_a"], ctf["defocus_v_a"], ctf["astigmatism_a"]) == (12000.0, 14000.0, 2000.0)
    assert (ctf["fit_resolution_a"], ctf["fit_ok"], ctf["ice_ring_ratio"]) == (4.2, True, 1.02)
    assert (ctf["engine"], ctf["engine_version"]) == ("ctffind", "4.1.14")
    failed = get(client, web, f"/api/v1/sessions/{s.pk}/exposures/{exposures[4].pk}")
    assert (failed["motion"], failed["ctf"], failed["accepted"]) == (None, None, None)
    assert "MovieFormatError: truncated" in failed["fail_reason"]


def test_an_exposure_of_another_session_is_not_found(web, client, session, store):
    from emlive.web import control

    s, _ = session
    web.session(name="other")
    other = control.start_processing(web.root, "p1", "ann", "other", ACQ)
    elsewhere, _ = store.record_exposure(other, "x.tif", 1, 1)
    detail = get(client, web, f"/api/v1/sessions/{s.pk}/exposures/{elsewhere.pk}", status=404)["detail"]
    assert f"/api/v1/sessions/{s.pk}/exposures" in detail


def test_metrics(web, client, session):
    s, _ = session
    month_s = 30 * 86400
    body = get(client, web, f"/api/v1/sessions/{s.pk}/metrics?window_s={month_s}")
    assert (body["backlog"], body["failed"], body["window_s"]) == (1, 1, month_s)
    assert body["processed_per_min"] == pytest.approx(4 * 60 / month_s)
    assert body["arrivals_per_min"] == 0.0  # the movies were written in 2023 (their mtime)
    assert body["lag_p50_s"] == pytest.approx(time.time() - 1_700_000_001.5, abs=120)
    recent = get(client, web, f"/api/v1/sessions/{s.pk}/metrics")
    assert recent["window_s"] == 600.0
    assert get(client, web, f"/api/v1/sessions/{s.pk}/metrics?window_s=0", status=400)


def test_exports_download_star_files_written_from_the_database(web, client, session):
    import starfile

    s, _ = session
    listed = get(client, web, f"/api/v1/sessions/{s.pk}/exports")
    assert [e["name"] for e in listed] == ["micrographs_ctf.star", "corrected_micrographs.star"]
    send(client, web, "put", f"/api/v1/sessions/{s.pk}/curation", {"max_total_drift_a": 12.0})
    for entry in listed:
        response = client.get(entry["url"], **web.auth())
        assert response.status_code == 200
        assert response["Content-Disposition"] == f'attachment; filename="{entry["name"]}"'
        text = b"".join(response.streaming_content).decode()
        downloaded = web.root.parent / entry["name"]
        downloaded.write_text(text)
        micrographs = starfile.read(downloaded)["micrographs"]
        assert len(micrographs) == 2  # drift 5 and 10 Å kept by the threshold
        assert all(name.endswith("_DW.mrc") for name in micrographs["rlnMicrographName"])
        assert (web.root / "p1/sessions/ann/grid1/processed/exports" / entry["name"]).read_text() == text
    ctf = starfile.read(web.root / "p1/sessions/ann/grid1/processed/exports/micrographs_ctf.star")["micrographs"]
    assert sorted(ctf["rlnDefocusU"]) == [10000.0, 12000.0]


def test_errors_are_json_that_say_what_to_do(web, client, session):
    s, _ = session
    assert "GET /api/v1/sessions" in get(client, web, "/api/v1/sessions/999999", status=404)["detail"]
    assert "whole number" in get(client, web, "/api/v1/sessions/x", status=400)["detail"]
    response = client.delete(f"/api/v1/sessions/{s.pk}", **web.auth())
    assert response.status_code == 405


def test_the_openapi_schemas_describe_every_route(web, client):
    v1 = client.get("/api/v1/openapi.json").json()
    paths = set(v1["paths"])
    assert {
        "/api/v1/sessions", "/api/v1/sessions/{session_id}", "/api/v1/sessions/{session_id}/exposures",
        "/api/v1/sessions/{session_id}/exposures/{exposure_id}", "/api/v1/sessions/{session_id}/stop",
        "/api/v1/sessions/{session_id}/resume", "/api/v1/sessions/{session_id}/parameters",
        "/api/v1/sessions/{session_id}/curation", "/api/v1/sessions/{session_id}/metrics",
        "/api/v1/sessions/{session_id}/exports/{name}", "/api/v1/projects",
    } <= paths  # fmt: skip
    assert set(v1["components"]["securitySchemes"]) == {"BearerToken", "QueryToken", "LoginSession"}
    compat = client.get("/openapi.json").json()
    assert set(compat["paths"]) == {
        "/{project_id}/{user}/sessions", "/{project_id}/{user}/session/{session_id}",
        "/{project_id}/{user}/session/{session_id}/start-processing",
        "/{project_id}/{user}/session/{session_id}/stop-processing",
        "/{project_id}/{user}/session/{session_id}/resume-processing",
    }  # fmt: skip
    status = compat["components"]["schemas"]["CompatStatusOut"]
    assert set(status["properties"]) == {
        "state", "raw_files", "processed_files", "failed_jobs", "percent_done_total", "percent_current_cycle",
    }  # fmt: skip
    assert math.isfinite(len(status["properties"]["state"]["enum"]))
