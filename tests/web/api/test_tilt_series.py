"""/api/v1 tilt series: the list, one series with its tilts, the montage and central-slice
PNGs (path checks), tilt membership on the exposures, and the compatible status counting tilt
movies as files; on a session whose series are stored as the controller stores them."""

from __future__ import annotations

import os

import pytest

from emlive.acquisition import Acquisition
from tests.web.tilt_series_data import DARK_REASON, DARK_Z, ORDER_DEG, movie_name, store_series

ACQ = Acquisition(pixel_size_a=1.35, dose_per_frame_e_a2=0.4, voltage_kv=300.0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tomo(web, store):
    """p1/ann/grid1 started with TS_01 done (7 tilts, the dark one excluded, pictures) and
    TS_02 still collecting (3 movies came, 2 processed), and one single-particle movie."""
    from emlive.web import control

    raw = web.session(movies=())
    session = control.start_processing(web.root, "p1", "ann", "grid1", ACQ)
    done = store_series(session, name="TS_01")
    collecting = store_series(session, name="TS_02", arrived=3, processed=2, state="collecting")
    single, _ = store.record_exposure(session, "single.tif", 10, 1)
    return session, done, collecting, single, raw


def get(client, web, url, who="ann", status=200):
    response = client.get(url, **web.auth(who))
    assert response.status_code == status, response.content
    return response


def test_the_list_has_state_range_counts_excluded_tilts_alignment_and_pictures(web, client, tomo):
    session, done, collecting, _, _ = tomo
    body = get(client, web, f"/api/v1/sessions/{session.pk}/tilt-series").json()
    assert (body["count"], body["limit"], body["offset"]) == (2, 100, 0)
    first, second = body["items"]
    assert (first["id"], first["name"], first["state"], first["session_id"]) == (done.series.pk, "TS_01", "done", session.pk)
    assert (first["tilt_min_deg"], first["tilt_max_deg"]) == (-9.0, 9.0)
    assert first["counts"] == {"expected": 7, "named": 7, "received": 7, "processed": 7, "excluded": 1}
    assert first["excluded"] == [
        {"z_value": DARK_Z, "tilt_angle_deg": -9.0, "movie_name": movie_name("TS_01", DARK_Z), "reason": DARK_REASON}
    ]
    assert (first["alignment_residual_px"], first["tilt_axis_nominal_deg"], first["tilt_axis_refined_deg"]) == (0.42, 85.0, 84.6)
    assert first["pixel_size_a"] == 10.8 and first["tomogram_path"].endswith("tomo/TS_01/TS_01.mrc")
    assert first["montage_url"] == f"/api/v1/sessions/{session.pk}/tilt-series/{done.series.pk}/montage.png"
    assert first["central_slice_url"] == f"/api/v1/sessions/{session.pk}/tilt-series/{done.series.pk}/central-slice.png"
    assert first["mdoc_path"].endswith("raw/TS_01.mrc.mdoc") and first["error"] == ""
    assert second["state"] == "collecting"
    assert second["counts"] == {"expected": 7, "named": 7, "received": 3, "processed": 2, "excluded": 0}
    assert second["excluded"] == [] and second["alignment_residual_px"] is None and second["tomogram_path"] is None
    assert second["montage_url"] is None and second["central_slice_url"] is None
    only = get(client, web, f"/api/v1/sessions/{session.pk}/tilt-series?state=collecting&limit=1").json()
    assert only["count"] == 1 and [s["name"] for s in only["items"]] == ["TS_02"]


def test_one_series_has_every_tilt_in_angle_order_with_its_results(web, client, tomo):
    session, done, _, _, _ = tomo
    body = get(client, web, f"/api/v1/sessions/{session.pk}/tilt-series/{done.series.pk}").json()
    assert body["name"] == "TS_01" and body["problems"] == [] and body["result"]["tomogram_path"].endswith("TS_01.mrc")
    tilts = body["tilts"]
    assert [t["tilt_angle_deg"] for t in tilts] == sorted(ORDER_DEG)
    by_z = {t["z_value"]: t for t in tilts}
    plus3 = by_z[1]
    assert (plus3["acquisition_index"], plus3["pre_exposure_e_a2"], plus3["dose_e_a2"]) == (1, 3.0, 3.0)
    assert (plus3["defocus_u_a"], plus3["defocus_v_a"], plus3["defocus_angle_deg"]) == (31000.0, 30600.0, 40.0)
    assert (plus3["fit_resolution_a"], plus3["fit_ok"], plus3["total_drift_a"]) == (9.0, True, 3.0)
    assert plus3["exposure_state"] == "processed" and plus3["excluded_reason"] is None
    exposure_id = done.exposure_ids[1]
    assert plus3["exposure_url"] == f"/api/v1/sessions/{session.pk}/exposures/{exposure_id}"
    assert plus3["page_url"] == f"/dashboard/exposures/{exposure_id}/"
    assert plus3["thumbnail_url"] == f"/dashboard/exposures/{exposure_id}/thumbnail.png"
    assert plus3["spectrum_url"] == f"/dashboard/exposures/{exposure_id}/spectrum.png"
    assert by_z[DARK_Z]["excluded_reason"] == DARK_REASON and by_z[DARK_Z]["pre_exposure_e_a2"] == 18.0


def test_a_collecting_series_shows_tilts_not_come_and_not_processed(web, client, tomo):
    session, _, collecting, _, _ = tomo
    body = get(client, web, f"/api/v1/sessions/{session.pk}/tilt-series/{collecting.series.pk}").json()
    by_z = {t["z_value"]: t for t in body["tilts"]}
    assert by_z[0]["exposure_state"] == "processed" and by_z[0]["defocus_u_a"] == 30000.0
    assert by_z[2]["exposure_state"] == "found" and by_z[2]["defocus_u_a"] is None and by_z[2]["thumbnail_url"] is None
    assert by_z[5]["exposure_id"] is None and by_z[5]["exposure_state"] is None and by_z[5]["exposure_url"] is None


def test_the_pictures_are_served_as_png_with_a_token_in_header_or_query(web, client, tomo):
    session, done, collecting, _, _ = tomo
    base = f"/api/v1/sessions/{session.pk}/tilt-series/{done.series.pk}"
    for picture, path in (("montage", done.montage), ("central-slice", done.central_slice)):
        response = get(client, web, f"{base}/{picture}.png")
        assert response["Content-Type"] == "image/png" and response.content == path.read_bytes()
        assert response.content.startswith(PNG_MAGIC)
    assert client.get(f"{base}/montage.png?access_token={web.tokens['ann']}").status_code == 200
    assert client.get(f"{base}/montage.png").status_code == 401
    missing = get(client, web, f"/api/v1/sessions/{session.pk}/tilt-series/{collecting.series.pk}/montage.png", status=404)
    assert "no montage picture yet" in missing.json()["detail"]


@pytest.mark.parametrize("where", ["outside", "relative", "not_png", "symlink_out", "gone"])
def test_a_picture_path_outside_the_sessions_outputs_is_never_served(web, client, tomo, tmp_path, where):
    from emlive.db.models import TiltSeries

    session, done, _, _, _ = tomo
    secret = tmp_path / "secret.png"
    secret.write_bytes(done.montage.read_bytes())
    inside = done.montage.parent
    stored = {
        "outside": str(secret),
        "relative": os.path.relpath(done.montage, os.getcwd()),
        "not_png": str(inside / "TS_01.mrc"),
        "symlink_out": str(inside / "link.png"),
        "gone": str(inside / "nothing.png"),
    }[where]
    (inside / "TS_01.mrc").write_bytes(b"MRC")
    if where == "symlink_out":
        (inside / "link.png").symlink_to(secret)
    TiltSeries.objects.filter(pk=done.series.pk).update(montage_png_path=stored)
    get(client, web, f"/api/v1/sessions/{session.pk}/tilt-series/{done.series.pk}/montage.png", status=404)
    listed = get(client, web, f"/api/v1/sessions/{session.pk}/tilt-series").json()["items"][0]
    assert listed["montage_url"] is None and listed["central_slice_url"] is not None


def test_another_groups_series_is_not_found_like_a_missing_one(web, client, tomo):
    session, done, _, _, _ = tomo
    base = f"/api/v1/sessions/{session.pk}/tilt-series"
    for url in (base, f"{base}/{done.series.pk}", f"{base}/{done.series.pk}/montage.png", f"{base}/{done.series.pk}/central-slice.png"):
        assert get(client, web, url, who="bob", status=404).json()["detail"].startswith(f"no session {session.pk}")
        assert get(client, web, url, who="staff").status_code == 200
    assert "has no tilt series 999" in get(client, web, f"{base}/999", status=404).json()["detail"]


def test_a_series_is_found_only_under_its_own_session(web, client, tomo, store):
    from emlive.web import control

    _, done, _, _, _ = tomo
    web.session(name="grid2", movies=())
    other = control.start_processing(web.root, "p1", "ann", "grid2", ACQ)
    get(client, web, f"/api/v1/sessions/{other.pk}/tilt-series/{done.series.pk}", status=404)
    get(client, web, f"/api/v1/sessions/{other.pk}/tilt-series/{done.series.pk}/montage.png", status=404)
    assert get(client, web, f"/api/v1/sessions/{other.pk}/tilt-series").json()["count"] == 0


def test_exposures_say_which_series_and_tilt_they_are(web, client, tomo):
    session, done, _, single, _ = tomo
    items = get(client, web, f"/api/v1/sessions/{session.pk}/exposures?limit=1000").json()["items"]
    by_id = {e["id"]: e for e in items}
    assert by_id[single.pk]["tilt"] is None
    dark = by_id[done.exposure_ids[DARK_Z]]["tilt"]
    assert dark == {
        "series_id": done.series.pk, "series_name": "TS_01", "z_value": DARK_Z, "tilt_angle_deg": -9.0,
        "acquisition_index": DARK_Z, "pre_exposure_e_a2": 18.0, "excluded_reason": DARK_REASON,
    }  # fmt: skip
    detail = get(client, web, f"/api/v1/sessions/{session.pk}/exposures/{done.exposure_ids[1]}").json()
    assert detail["tilt"]["series_name"] == "TS_01" and detail["tilt"]["tilt_angle_deg"] == 3.0
    assert detail["tilt"]["excluded_reason"] is None
    assert get(client, web, f"/api/v1/sessions/{session.pk}/exposures/{single.pk}").json()["tilt"] is None


def test_the_compatible_status_counts_tilt_movies_as_files(web, client, tomo, store):
    session, _, _, single, raw = tomo
    status = get(client, web, "/p1/ann/session/grid1").json()
    # TS_01: 7 movies processed; TS_02: 3 movies, 2 processed; one single-particle movie found
    assert status == {
        "state": "processing", "raw_files": 11, "processed_files": 9, "failed_jobs": 0,
        "percent_done_total": round(100 * 9 / 11, 1), "percent_current_cycle": round(100 * 9 / 11, 1),
    }  # fmt: skip


def test_before_the_first_start_tilt_movies_count_and_the_mdoc_does_not(web, client):
    raw = web.session(name="tomo1", movies=tuple(movie_name("TS_01", z) for z in range(4)))
    (raw / "TS_01.mrc.mdoc").write_text("PixelSpacing = 1.35\n[ZValue = 0]\nTiltAngle = 0.0\n")
    frames = raw / "frames"
    frames.mkdir()
    (frames / movie_name("TS_02", 0)).write_bytes(b"x")  # SerialEM's frames folder, under raw/
    status = get(client, web, "/p1/ann/session/tomo1").json()
    assert (status["state"], status["raw_files"]) == ("needs_processing", 5)
