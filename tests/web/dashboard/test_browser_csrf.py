"""The dashboard's forms in a real browser: posted without their CSRF token they are refused
(403) and change nothing; with it they work. Chromium (``/usr/bin/chromium``) through
Playwright against the ASGI app served by uvicorn (fixtures of test_browser.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from emlive.acquisition import Acquisition
from tests.conftest import skip_or_fail
from tests.web.dashboard.conftest import PASSWORD
from tests.web.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS, browser_db, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

DROP_TOKEN_AND_SUBMIT = """(selector) => {
  const form = document.querySelector(selector);
  form.querySelector('input[name=csrfmiddlewaretoken]').remove();
  form.submit();
}"""
"""Remove a form's CSRF token and submit it in one step (htmx may redraw the form meanwhile)."""


def _stored(session_id: int) -> tuple[str, float | None]:
    """The session's state and resolution threshold, read in a thread of its own (Playwright's
    event loop runs in the test's thread, where Django refuses to query)."""

    def read() -> tuple[str, float | None]:
        from django.db import connections

        from emlive.db.models import Session

        try:
            session = Session.objects.get(pk=session_id)
            return session.state, session.curation.max_fit_resolution_a
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(read).result()


def test_forms_without_their_csrf_token_are_refused_in_the_browser(server: str, tmp_path: Path) -> None:  # noqa: F811
    if not CHROMIUM.is_file():
        skip_or_fail(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    from emlive.db import store
    from emlive.web.access import add_user

    acquisition = Acquisition(pixel_size_a=1.05, voltage_kv=300.0, dose_per_frame_e_a2=1.2)
    session = store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acquisition, project="p1", name="csrf1")
    session = store.set_session_state(session, "processing")
    add_user("alice", password=PASSWORD, projects=("p1",))
    page_url = f"{server}/dashboard/sessions/{session.pk}/"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)

            # The login form without its token: refused, not logged in.
            page.goto(f"{server}/login/")
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            with page.expect_navigation() as refused_login:
                page.evaluate(DROP_TOKEN_AND_SUBMIT, "form[action='/login/']")
            assert refused_login.value.status == 403
            expect(page.locator("body")).to_contain_text("CSRF")
            # With it: logged in.
            page.goto(f"{server}/login/")
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{server}/dashboard/")

            # The curation form without its token: 403, thresholds unchanged.
            page.goto(page_url)
            page.fill("#id_max_fit_resolution_a", "5")
            with page.expect_navigation() as refused_curation:
                page.evaluate(DROP_TOKEN_AND_SUBMIT, "form.curation")
            assert refused_curation.value.status == 403
            assert _stored(session.pk) == ("processing", None)

            # The stop button's form without its token: 403, still processing.
            page.goto(page_url)
            with page.expect_navigation() as refused_stop:
                page.evaluate(DROP_TOKEN_AND_SUBMIT, f"form[action='/dashboard/sessions/{session.pk}/stop/']")
            assert refused_stop.value.status == 403
            assert _stored(session.pk) == ("processing", None)

            # The same forms as the page has them: accepted.
            page.goto(page_url)
            page.fill("#id_max_fit_resolution_a", "5")
            page.click("#save-curation")
            expect(page.locator("#curation-notice")).to_be_visible()
            assert _stored(session.pk) == ("processing", 5.0)
            page.click("#stop")
            expect(page.locator("#resume")).to_be_visible()
            assert _stored(session.pk) == ("stopped", 5.0)
        finally:
            browser.close()
