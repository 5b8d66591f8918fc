"""A tilt series in a real browser: Playwright drives Debian's Chromium against the ASGI app
under uvicorn (the fixtures of test_browser.py). The series is collecting when the page opens;
a thread then stores its last tilts and its result as the controller does, and the page
follows without a reload: plots against the tilt angle, the excluded tilt and its reason,
the tomogram's central slice and the montage.

Screenshots go to ``$EMLIVE_TEST_ARTIFACTS/dashboard/`` (default: the test's tmp folder).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from emlive.acquisition import Acquisition
from tests.conftest import skip_or_fail
from tests.web.dashboard.conftest import PASSWORD
from tests.web.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS, _shot, artifacts, browser_db, server  # noqa: F401
from tests.web.tilt_series_data import DARK_REASON, DARK_Z, ORDER_DEG, add_tilts, finish_series, store_series

pytestmark = pytest.mark.browser

FIRST = 5
"""Tilts processed before the page opens (acquisition order); the other two come while it is open."""


class Finisher(threading.Thread):
    """Stores the last tilts and then the series' result, from its own thread and connection."""

    def __init__(self, session, series) -> None:
        super().__init__(name="finisher", daemon=True)
        self.session, self.series = session, series
        self.error: BaseException | None = None

    def run(self) -> None:
        from django.db import connections

        try:
            time.sleep(1.0)
            add_tilts(self.session, self.series, range(FIRST, len(ORDER_DEG)))
            time.sleep(1.0)
            finish_series(self.session, self.series)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connections.close_all()


def count_points(key: str) -> str:
    """JavaScript: the points drawn in trace 0 (used) and 1 (excluded) of figure ``key``, null for gaps skipped."""
    return f"document.getElementById('plot-{key}').data.map(t => t.y.filter(v => v !== null).length)"


def test_a_tilt_series_page_in_the_browser(server: str, tmp_path: Path, artifacts: Path) -> None:  # noqa: F811
    if not CHROMIUM.is_file():
        skip_or_fail(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    from emlive.db import store
    from emlive.web.access import add_user

    acquisition = Acquisition(pixel_size_a=1.35, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07, dose_per_frame_e_a2=0.4)
    session = store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acquisition, project="p1", name="tomo1")
    session = store.set_session_state(session, "processing")
    add_user("alice", password=PASSWORD, projects=("p1",))
    stored = store_series(session, name="TS_01", arrived=FIRST, state="collecting")
    finisher = Finisher(session, stored.series)
    started = time.monotonic()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(20_000)

            page.goto(f"{server}/login/")
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{server}/dashboard/")
            page.click("text=tomo1")

            # The session page lists the series, collecting, 5 of 7 tilts come.
            row = page.locator("#tilt-series tr[data-series='TS_01']")
            expect(row).to_contain_text("collecting")
            expect(row).to_contain_text(f"{FIRST} / {len(ORDER_DEG)}")
            _shot(page, artifacts, "tilt_01_session")
            row.locator("a").click()
            expect(page).to_have_url(f"{server}/dashboard/tilt-series/{stored.series.pk}/")

            # The series' page: four plots against the tilt angle, drawn; no tomogram yet.
            for key in ("tilt-defocus", "tilt-drift", "tilt-dose", "tilt-resolution"):
                expect(page.locator(f"#plot-{key} .main-svg").first).to_be_visible()
            assert page.evaluate(count_points("tilt-defocus")) == [FIRST, 0]
            assert page.evaluate(count_points("tilt-dose")) == [len(ORDER_DEG), 0]  # the mdoc's doses: every tilt
            expect(page.locator("#series-state")).to_have_text("collecting")
            expect(page.locator("#central-slice")).to_have_count(0)
            expect(page.locator("#tilts tr.tilt")).to_have_count(len(ORDER_DEG))
            _shot(page, artifacts, "tilt_02_collecting")

            # The last tilts come and the series is reconstructed: the page follows, no reload.
            finisher.start()
            expect(page.locator("#series-state")).to_have_text("done", timeout=30_000)
            page.wait_for_function(f"JSON.stringify({count_points('tilt-dose')}) === '[{len(ORDER_DEG) - 1},1]'", timeout=15_000)
            assert page.evaluate(count_points("tilt-defocus")) == [len(ORDER_DEG) - 1, 1]
            excluded_text = page.evaluate("document.getElementById('plot-tilt-drift').data[1].text[0]")
            assert DARK_REASON in excluded_text
            assert page.evaluate("document.getElementById('plot-tilt-drift').data[1].x") == [ORDER_DEG[DARK_Z]]
            expect(page.locator(f"#excluded li[data-z='{DARK_Z}']")).to_contain_text(DARK_REASON)
            expect(page.locator(f"#tilts tr.excluded[data-z='{DARK_Z}'] .excluded-reason")).to_have_text(DARK_REASON)
            expect(page.locator("#residual")).to_contain_text("0.42 px")
            for picture in ("#central-slice", "#montage"):
                expect(page.locator(picture)).to_be_visible()
            page.wait_for_function("['central-slice', 'montage'].every(id => document.getElementById(id).complete)")
            sizes = page.evaluate("['central-slice', 'montage'].map(id => document.getElementById(id).naturalWidth)")
            assert all(width > 0 for width in sizes), sizes  # real PNGs, served
            finisher.join(timeout=30)
            assert finisher.error is None, finisher.error
            page.locator("#tilts").scroll_into_view_if_needed()
            page.wait_for_function(
                "Array.from(document.querySelectorAll('#tilts img.thumb')).length === 7", timeout=15_000
            )
            _shot(page, artifacts, "tilt_03_done")

            # A click on the excluded point opens that tilt's exposure, which names its series.
            dark_id = page.evaluate("document.getElementById('plot-tilt-drift').data[1].customdata[0]")
            page.evaluate(f"document.getElementById('plot-tilt-drift').emit('plotly_click', {{points: [{{customdata: {dark_id}}}]}})")
            expect(page).to_have_url(f"{server}/dashboard/exposures/{dark_id}/")
            expect(page.locator("#tilt-of")).to_contain_text(f"excluded: {DARK_REASON}")
            assert errors == [], f"JavaScript errors: {errors}"
        finally:
            browser.close()
    assert time.monotonic() - started < 90
