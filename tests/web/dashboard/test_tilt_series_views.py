"""The dashboard's tilt series: the session page's list, a series' page (plots against the
tilt angle, excluded tilts with their reason, the pictures, the tilts), its live fragments and
who may see them (Django's test client; on SQLite, PostgreSQL and MariaDB)."""

from __future__ import annotations

import re

import pytest

from tests.web.dashboard.conftest import client_for
from tests.web.dashboard.test_views import figures_of
from tests.web.tilt_series_data import DARK_REASON, DARK_Z, ORDER_DEG, store_series


@pytest.fixture
def tomo(web, users, tmp_path, acquisition):
    """Session t1 of p1 (alice's) with TS_01 done and TS_02 collecting (3 movies came, 2
    processed), and an empty session t2 of p1."""
    session = web.store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acquisition, project="p1", name="t1")
    session = web.store.set_session_state(session, "processing")
    done = store_series(session, name="TS_01")
    collecting = store_series(session, name="TS_02", arrived=3, processed=2, state="collecting")
    empty = web.store.get_or_create_session(tmp_path / "raw2", tmp_path / "out2", acquisition, project="p1", name="t2")
    return session, done, collecting, empty


def test_the_session_page_lists_its_tilt_series_with_state_and_counts(web, alice, tomo):
    session, done, collecting, empty = tomo
    page = alice.get(f"/dashboard/sessions/{session.pk}/").content.decode()
    assert f'hx-get="/dashboard/sessions/{session.pk}/tilt-series/"' in page  # loaded with the page
    fragment = alice.get(f"/dashboard/sessions/{session.pk}/tilt-series/").content.decode()
    rows = re.findall(r'<tr class="series" data-series="(TS_\d+)">(.*?)</tr>', fragment, re.S)
    assert [name for name, _ in rows] == ["TS_01", "TS_02"]
    first, second = (re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip() for _, row in rows)
    assert first.startswith("TS_01 done -9.0 … 9.0 7 / 7 (of 7) 7 1 0.42 84.6")
    assert second.startswith("TS_02 collecting -9.0 … 9.0 3 / 7 (of 7) 2 0 — 85.0 (nominal)")
    assert f'href="/dashboard/tilt-series/{done.series.pk}/"' in fragment
    assert DARK_REASON in fragment  # the excluded count's tooltip says why
    marker = re.search(r'tilt-series/\?since=(\w+)"', fragment).group(1)
    assert alice.get(f"/dashboard/sessions/{session.pk}/tilt-series/?since={marker}").status_code == 204
    web.store.set_tilt_series_state(collecting.series, "complete")
    assert alice.get(f"/dashboard/sessions/{session.pk}/tilt-series/?since={marker}").status_code == 200
    none = alice.get(f"/dashboard/sessions/{empty.pk}/tilt-series/").content.decode()
    assert "<table" not in none and 'id="tilt-series"' in none  # nothing shown, still polling


def test_a_series_page_plots_every_tilt_against_its_angle_and_marks_the_excluded_one(web, alice, tomo):
    _, done, _, _ = tomo
    response = alice.get(f"/dashboard/tilt-series/{done.series.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    figures = figures_of(html)
    assert list(figures) == ["tilt-defocus", "tilt-drift", "tilt-dose", "tilt-resolution"]
    for key in figures:
        assert f'id="plot-{key}"' in html
    used, excluded = figures["tilt-dose"]["data"]
    assert used["x"] == sorted(a for a in ORDER_DEG if a != ORDER_DEG[DARK_Z])
    assert excluded["x"] == [ORDER_DEG[DARK_Z]] and excluded["customdata"] == [done.exposure_ids[DARK_Z]]
    assert DARK_REASON in excluded["text"][0]
    assert figures["tilt-defocus"]["data"][0]["y"][0] == pytest.approx((28000 + 27600) / 2e4)  # at -6°
    # the pictures (the API's routes, with the login), the excluded tilt and why, every tilt by angle
    assert re.search(rf'<img class="big" id="central-slice" src="/api/v1/sessions/\d+/tilt-series/{done.series.pk}/central-slice.png\?v=\d+"', html)
    assert re.search(rf'<img class="big" id="montage" src="/api/v1/sessions/\d+/tilt-series/{done.series.pk}/montage.png\?v=\d+"', html)
    assert f'<li data-z="{DARK_Z}">-9.0° (TS_01_006_-9.0.tif): {DARK_REASON}</li>' in html
    angles = [float(a) for a in re.findall(r'<tr class="tilt[^"]*" data-z="\d+" data-angle="([-\d.]+)"', html)]
    assert angles == sorted(ORDER_DEG)
    assert html.count('class="tilt rejected excluded"') == 1
    montage = re.search(r'id="montage" src="([^"]+)"', html).group(1)
    picture = alice.get(montage)
    assert picture.status_code == 200 and picture.content == done.montage.read_bytes()


def test_a_collecting_series_shows_what_has_come_and_no_pictures(web, alice, tomo):
    _, _, collecting, _ = tomo
    html = alice.get(f"/dashboard/tilt-series/{collecting.series.pk}/").content.decode()
    assert "No tomogram yet: the series is still being collected." in html and "No montage yet." in html
    assert html.count("not come") == 4 and html.count('<img class="thumb"') == 2
    used, excluded = figures_of(html)["tilt-drift"]["data"]
    assert used["y"].count(None) == 5 and excluded["x"] == []


def test_the_live_fragments_answer_204_until_the_series_changes(web, alice, tomo, tmp_path):
    from pathlib import Path

    from tests.web.tilt_series_data import ENGINES, _results, movie_name

    session, _, collecting, _ = tomo
    series = collecting.series
    head = alice.get(f"/dashboard/tilt-series/{series.pk}/head/").content.decode()
    marker = re.search(r'head/\?since=(\w+)"', head).group(1)
    assert 'id="plot-data"' in head and f'data-marker="{marker}"' in head
    for part in ("head", "tilts"):
        assert alice.get(f"/dashboard/tilt-series/{series.pk}/{part}/?since={marker}").status_code == 204
    # the third tilt's movie is processed: both fragments come again, with its results
    z = 2
    exposure_id = collecting.exposure_ids[z]
    web.store.mark_submitted(exposure_id)
    web.store.store_result(exposure_id, *_results(Path(session.out_dir), Path(movie_name("TS_02", z)).stem, ORDER_DEG[z], z), **ENGINES)
    tilts = alice.get(f"/dashboard/tilt-series/{series.pk}/tilts/?since={marker}")
    assert tilts.status_code == 200 and tilts.content.decode().count('<img class="thumb"') == 3
    assert alice.get(f"/dashboard/tilt-series/{series.pk}/head/?since={marker}").status_code == 200
    assert alice.get(f"/dashboard/tilt-series/{series.pk}/nothing/").status_code == 404


def test_an_exposure_page_says_which_series_and_tilt_it_is(web, alice, tomo):
    _, done, _, _ = tomo
    html = alice.get(f"/dashboard/exposures/{done.exposure_ids[DARK_Z]}/").content.decode()
    assert f'Tilt -9.0° (acquired #7, 18.0 e/Å² before it) of tilt series <a href="/dashboard/tilt-series/{done.series.pk}/">TS_01</a>' in html
    assert f"excluded: {DARK_REASON}" in html


def test_another_groups_tilt_series_is_not_found(web, users, tomo):
    session, done, _, _ = tomo
    bob = client_for(users["bob"])
    for url in (
        f"/dashboard/sessions/{session.pk}/tilt-series/",
        f"/dashboard/tilt-series/{done.series.pk}/",
        f"/dashboard/tilt-series/{done.series.pk}/head/",
        f"/dashboard/tilt-series/{done.series.pk}/tilts/",
        f"/api/v1/sessions/{session.pk}/tilt-series/{done.series.pk}/montage.png",
        "/dashboard/tilt-series/999999/",
    ):
        assert bob.get(url).status_code == 404, url
    assert client_for(users["staff"]).get(f"/dashboard/tilt-series/{done.series.pk}/").status_code == 200


def test_anonymous_users_are_sent_to_the_login_page(web, tomo):
    from django.test import Client

    _, done, _, _ = tomo
    response = Client().get(f"/dashboard/tilt-series/{done.series.pk}/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login/?next=")


def test_the_series_page_reads_a_fixed_number_of_queries_however_many_tilts(web, alice, tomo):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    session, done, collecting, _ = tomo

    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert alice.get(url).status_code == 200
        return len(captured.captured_queries)

    # TS_01 has 7 tilts with results, TS_02 2 (and 5 without): the same number of queries
    for part in ("", "head/", "tilts/"):
        assert count(f"/dashboard/tilt-series/{done.series.pk}/{part}") == count(f"/dashboard/tilt-series/{collecting.series.pk}/{part}")
    assert count(f"/dashboard/sessions/{session.pk}/tilt-series/") <= 6
