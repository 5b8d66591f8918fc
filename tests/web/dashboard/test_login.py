"""The dashboard's login: CSRF-protected, and throttled per user name and client address."""

from __future__ import annotations

import re

import pytest

from tests.web.dashboard.conftest import PASSWORD


@pytest.fixture
def fresh_cache():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def _form_token(page: bytes) -> str:
    match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match is not None, "the page has a form with its CSRF token"
    return match.group(1).decode()


def _login(client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


def test_five_failed_logins_a_minute_then_429_with_retry_after(users, fresh_cache, monkeypatch):
    from django.test import Client

    from emlive.web.dashboard import login

    now = [1_000_000.0]
    monkeypatch.setattr(login.time, "time", lambda: now[0])
    client = Client()
    for _ in range(5):
        response = _login(client, "alice", "wrong")
        assert response.status_code == 200
        assert b"did not match" in response.content
    refused = _login(client, "alice", PASSWORD)  # even the right password: not checked now
    assert refused.status_code == 429
    assert refused["Retry-After"] == "60"
    assert b"try again in 60 s" in refused.content
    assert "_auth_user_id" not in client.session
    now[0] += 45
    assert _login(client, "alice", PASSWORD)["Retry-After"] == "15"
    # another user name, or the same one from another address, is counted apart
    assert _login(client, "bob", "wrong").status_code == 200
    assert _login(client, "alice", "wrong", address="10.0.0.2").status_code == 200


def test_the_throttle_ends_with_the_minute_and_a_success_clears_the_count(users, fresh_cache):
    from django.core.cache import cache
    from django.test import Client

    from emlive.web.dashboard import login

    client = Client()
    for _ in range(4):
        _login(client, "alice", "wrong")
    assert _login(client, "alice", PASSWORD).status_code == 302
    for _ in range(4):  # the count started again after the success
        assert _login(Client(), "alice", "wrong").status_code == 200
    for _ in range(2):
        _login(Client(), "alice", "wrong")
    assert _login(Client(), "alice", PASSWORD).status_code == 429
    cache.delete(login._key("alice", "10.0.0.1"))  # what the minute's end does
    assert _login(Client(), "alice", PASSWORD).status_code == 302


def test_the_limit_is_the_configured_one(users, fresh_cache):
    from django.test import Client, override_settings

    with override_settings(EMLIVE_LOGIN_ATTEMPTS_PER_MINUTE=2):
        client = Client()
        assert [_login(client, "Alice ", "x").status_code for _ in range(3)] == [200, 200, 429]


def test_a_login_form_posted_without_its_csrf_token_is_refused(users, fresh_cache):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    assert browser.post("/login/", {"username": "alice", "password": PASSWORD}).status_code == 403
    token = _form_token(browser.get("/login/").content)
    accepted = browser.post("/login/", {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert accepted.status_code == 302


def test_dashboard_forms_posted_without_the_csrf_token_are_refused(users, session, fresh_cache):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(users["alice"])
    for url in (f"/dashboard/sessions/{session.pk}/curation/", f"/dashboard/sessions/{session.pk}/stop/",
                f"/dashboard/sessions/{session.pk}/resume/", "/logout/"):
        assert browser.post(url, {"max_fit_resolution_a": "5"}).status_code == 403, url
    token = _form_token(browser.get(f"/dashboard/sessions/{session.pk}/").content)
    saved = browser.post(f"/dashboard/sessions/{session.pk}/curation/",
                         {"max_fit_resolution_a": "5", "csrfmiddlewaretoken": token})
    assert saved.status_code == 302
    session.refresh_from_db()
    assert session.curation.max_fit_resolution_a == 5.0
