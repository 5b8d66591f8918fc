"""The dashboard's pages, fragments, files and permissions (Django's test client)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import starfile

from tests.web.dashboard.conftest import PASSWORD, client_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def figures_of(html: str) -> dict:
    match = re.search(r'<script id="plot-figures" type="application/json">(.*?)</script>', html, re.S)
    assert match, "no figures in the page"
    return json.loads(match.group(1))


def test_anonymous_users_are_sent_to_the_login_page(web, session):
    from django.test import Client

    client = Client()
    assert client.get("/").headers["Location"] == "/dashboard/"
    response = client.get(f"/dashboard/sessions/{session.pk}/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login/?next=")
    poll = client.get(f"/dashboard/sessions/{session.pk}/status/", headers={"HX-Request": "true"})
    assert poll.status_code == 401 and poll.headers["HX-Redirect"] == "/login/"
    for url in (f"/dashboard/exposures/{session.exposures.first().pk}/thumbnail.png", f"/dashboard/sessions/{session.pk}/exports/micrographs_ctf.star"):
        assert client.get(url).status_code == 302


def test_logging_in_with_a_password_opens_the_sessions(web, users, session):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    page = client.get("/login/")
    assert page.status_code == 200 and b'name="password"' in page.content
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content).group(1).decode()
    wrong = client.post("/login/", {"username": "alice", "password": "nope", "csrfmiddlewaretoken": token})
    assert wrong.status_code == 200 and b"did not match" in wrong.content
    ok = client.post("/login/", {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert ok.status_code == 302 and ok.headers["Location"] == "/dashboard/"
    listing = client.get("/dashboard/").content.decode()
    assert f'href="/dashboard/sessions/{session.pk}/"' in listing and ">processing<" in listing


def test_the_session_list_shows_only_visible_sessions_with_progress(web, users, session, other_session):
    mine = client_for(users["alice"]).get("/dashboard/").content.decode()
    assert ">s1<" in mine and ">s2<" not in mine
    assert "83.3 %" in mine  # 4 processed + 1 failed of 6
    everything = client_for(users["staff"]).get("/dashboard/sessions-table/").content.decode()
    assert ">s1<" in everything and ">s2<" in everything


def test_another_groups_session_and_its_files_are_not_found(web, users, session, other_session):
    bob = client_for(users["bob"])
    exposure = session.exposures.filter(state="processed").first()
    for url in [
        f"/dashboard/sessions/{session.pk}/",
        f"/dashboard/sessions/{session.pk}/status/",
        f"/dashboard/sessions/{session.pk}/plots/",
        f"/dashboard/sessions/{session.pk}/exposures/",
        f"/dashboard/sessions/{session.pk}/exports/micrographs_ctf.star",
        f"/dashboard/exposures/{exposure.pk}/",
        f"/dashboard/exposures/{exposure.pk}/thumbnail.png",
        f"/dashboard/exposures/{exposure.pk}/spectrum.png",
        "/dashboard/sessions/999999/",
    ]:
        assert bob.get(url).status_code == 404, url
    for url in [f"/dashboard/sessions/{session.pk}/curation/", f"/dashboard/sessions/{session.pk}/stop/"]:
        assert bob.post(url, {"max_fit_resolution_a": "1"}).status_code == 404, url
    session.refresh_from_db()
    assert session.curation_json == {} and session.state == "processing"
    assert bob.get(f"/dashboard/sessions/{other_session.pk}/").status_code == 200


def test_the_session_page_shows_rates_plots_and_exposures(web, alice, session):
    response = alice.get(f"/dashboard/sessions/{session.pk}/")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="rate-acquired"' in html and 'id="backlog">1<' in html and 'id="n-processed">4<' in html
    figures = figures_of(html)
    assert set(figures) == {"rates", "defocus", "resolution", "drift", "ice", "defocus_hist", "resolution_hist", "drift_hist"}
    accepted, rejected = figures["resolution"]["data"]
    assert accepted["y"] == [3.0, 4.0, 6.0, 8.0] and rejected["y"] == []
    assert accepted["x"] == [0.0, 1.0, 2.0, 3.0]  # minutes since the first movie
    assert figures["rates"]["data"][0]["y"][-1] == 6 and figures["rates"]["data"][1]["y"][-1] == 4
    assert html.count('class="thumb"') == 4 and html.count('class="spectrum"') == 4
    assert "broken.tif" in html and "waiting.tif" in html
    assert '/static/emlive/plotly.min.js' in html and '/static/emlive/htmx.min.js' in html


def test_live_fragments_are_resent_only_when_something_changed(web, alice, session, add_processed):
    page = alice.get(f"/dashboard/sessions/{session.pk}/").content.decode()
    marker = re.search(r'data-marker="([0-9a-f]+)"', page).group(1)
    plots_url = f"/dashboard/sessions/{session.pk}/plots/?since={marker}"
    table_url = f"/dashboard/sessions/{session.pk}/exposures/?page=1&show=all&since={marker}"
    assert alice.get(plots_url).status_code == 204 and alice.get(table_url).status_code == 204

    add_processed(session, 7, fit_resolution_a=3.5)
    fresh = alice.get(plots_url)
    assert fresh.status_code == 200
    assert len(figures_of(fresh.content.decode())["resolution"]["data"][0]["y"]) == 5
    table = alice.get(table_url).content.decode()
    assert table.count('class="thumb"') == 5 and "m7.tif" in table
    assert alice.get(f"/dashboard/sessions/{session.pk}/status/").content.decode().count('id="n-processed">5<') == 1


def test_a_threshold_marks_exposures_rejected_and_rewrites_the_exports(web, alice, session):
    exports = Path(session.out_dir) / "exports"
    response = alice.post(f"/dashboard/sessions/{session.pk}/curation/", {"max_fit_resolution_a": "5", "reject_no_fit": "on"})
    assert response.status_code == 302 and response.headers["Location"].endswith("?curation=saved#curation")
    session.refresh_from_db()
    assert session.curation_json["max_fit_resolution_a"] == 5.0 and session.curation_json["reject_no_fit"] is True
    for name in ("micrographs_ctf.star", "corrected_micrographs.star"):
        mics = starfile.read(exports / name, always_dict=True)["micrographs"]
        assert [Path(p).name for p in mics["rlnMicrographNameNoDW"]] == ["m0.mrc", "m1.mrc"]

    html = alice.get(response.headers["Location"]).content.decode()
    assert "Thresholds saved" in html and 'id="n-rejected">2<' in html
    assert html.count('class="exposure rejected"') == 2 and html.count('class="exposure accepted"') == 2
    assert 'name="max_fit_resolution_a" value="5.0"' in html
    rejected = alice.get(f"/dashboard/sessions/{session.pk}/exposures/?show=rejected").content.decode()
    assert "m2.tif" in rejected and "m3.tif" in rejected and "m0.tif" not in rejected
    accepted, rejected_trace = figures_of(html)["resolution"]["data"]
    assert rejected_trace["y"] == [6.0, 8.0] and accepted["y"] == [3.0, 4.0]

    download = alice.get(f"/dashboard/sessions/{session.pk}/exports/micrographs_ctf.star")
    assert download.status_code == 200
    assert download.headers["Content-Disposition"] == 'attachment; filename="s1_micrographs_ctf.star"'
    assert download.content == (exports / "micrographs_ctf.star").read_bytes()

    cleared = alice.post(f"/dashboard/sessions/{session.pk}/curation/", {})
    assert cleared.status_code == 302
    assert len(starfile.read(exports / "micrographs_ctf.star", always_dict=True)["micrographs"]) == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_fit_resolution_a": "-2"}, "greater than 0"),
        ({"max_fit_resolution_a": "abc"}, "Enter a number"),
        ({"min_defocus_a": "20000", "max_defocus_a": "10000"}, "below the smallest"),
    ],
)
def test_invalid_thresholds_are_refused_with_a_reason(web, alice, session, data, message):
    response = alice.post(f"/dashboard/sessions/{session.pk}/curation/", data)
    assert response.status_code == 400 and message in response.content.decode()
    session.refresh_from_db()
    assert session.curation_json == {}


def test_exports_are_written_on_download_when_missing_or_older_than_the_results(web, alice, session, add_processed):
    path = Path(session.out_dir) / "exports" / "corrected_micrographs.star"
    assert not path.exists()
    first = alice.get(f"/dashboard/sessions/{session.pk}/exports/corrected_micrographs.star")
    assert first.status_code == 200 and len(starfile.read(path, always_dict=True)["micrographs"]) == 4
    add_processed(session, 9)
    os.utime(path, (0, 0))  # written long before the new result
    alice.get(f"/dashboard/sessions/{session.pk}/exports/corrected_micrographs.star")
    assert len(starfile.read(path, always_dict=True)["micrographs"]) == 5
    assert alice.get(f"/dashboard/sessions/{session.pk}/exports/secrets.txt").status_code == 404


def test_stop_and_resume(web, alice, session):
    assert alice.get(f"/dashboard/sessions/{session.pk}/stop/").status_code == 405
    assert alice.post(f"/dashboard/sessions/{session.pk}/stop/").status_code == 302
    session.refresh_from_db()
    assert session.state == "stopped"
    assert 'id="resume">Resume<' in alice.get(f"/dashboard/sessions/{session.pk}/status/").content.decode()
    alice.post(f"/dashboard/sessions/{session.pk}/resume/")
    session.refresh_from_db()
    assert session.state == "processing" and session.cycle_started_at is not None


def test_the_exposure_page_has_its_drift_plot_pictures_and_verdict(web, alice, session):
    web.models.Session.objects.filter(pk=session.pk).update(curation_json={"max_total_drift_a": 6.5})
    exposure = session.exposures.get(path="m3.tif")
    html = alice.get(f"/dashboard/exposures/{exposure.pk}/").content.decode()
    drift = figures_of(html)["drift"]["data"][0]
    assert drift["x"] == [0.0, -1.25, -2.5] and drift["y"] == [0.0, 0.5, 1.0]
    assert 'id="verdict">rejected<' in html and "total drift 8.00 Å is more than 6.5 Å" in html
    assert f"/dashboard/exposures/{exposure.pk}/thumbnail.png" in html and f"/dashboard/exposures/{exposure.pk}/spectrum.png" in html

    waiting = session.exposures.get(path="waiting.tif")
    assert "No thumbnail yet" in alice.get(f"/dashboard/exposures/{waiting.pk}/").content.decode()
    assert alice.get(f"/dashboard/exposures/{waiting.pk}/thumbnail.png").status_code == 404
    assert alice.get(f"/dashboard/exposures/{waiting.pk}/spectrum.png").status_code == 404


def test_pictures_are_the_pngs_the_pipeline_and_the_database_name(web, alice, session):
    exposure = session.exposures.get(path="m1.tif")
    thumb = alice.get(f"/dashboard/exposures/{exposure.pk}/thumbnail.png")
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/png"
    assert thumb.content == (Path(session.out_dir) / "thumbnail" / "m1.png").read_bytes()
    spectrum = alice.get(f"/dashboard/exposures/{exposure.pk}/spectrum.png")
    assert spectrum.content.startswith(PNG_MAGIC) and spectrum.content == Path(exposure.ctf.diagnostic_png_path).read_bytes()


def test_a_stored_path_cannot_lead_a_picture_out_of_its_folder(web, alice, session, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG_MAGIC + b"secret")
    (Path(session.out_dir) / "thumbnail").mkdir(parents=True, exist_ok=True)
    exposure = session.exposures.get(path="m1.tif")
    web.models.Exposure.objects.filter(pk=exposure.pk).update(path="../../secret.tif")
    assert alice.get(f"/dashboard/exposures/{exposure.pk}/thumbnail.png").status_code == 404
    web.models.CtfEstimate.objects.filter(exposure=exposure).update(diagnostic_png_path=str(tmp_path / "out" / "ctf" / "m1.txt"))
    assert alice.get(f"/dashboard/exposures/{exposure.pk}/spectrum.png").status_code == 404


def test_scripts_come_from_the_package_not_a_cdn(web):
    from django.test import Client

    client = Client()
    plotly = client.get("/static/emlive/plotly.min.js")
    assert plotly.status_code == 200 and plotly.headers["Content-Type"].startswith("text/javascript")
    assert b"plotly.js" in plotly.content[:2000]
    htmx = client.get("/static/emlive/htmx.min.js")
    assert htmx.status_code == 200 and b"htmx" in htmx.content
    assert client.get("/static/emlive/dashboard.css").status_code == 200
    assert client.get("/static/emlive/settings.py").status_code == 404
    assert client.get("/static/emlive/%2e%2e%2fviews.py").status_code in (400, 404)


def test_the_session_page_reads_a_bounded_number_of_times(web, alice, session, add_processed):
    """The page's queries do not grow with the number of exposures (no query per row)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert alice.get(f"/dashboard/sessions/{session.pk}/").status_code == 200
        return len(captured.captured_queries)

    before = count()
    for i in range(10, 16):
        add_processed(session, i)
    assert count() == before
