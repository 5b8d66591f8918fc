"""The service hardened: JSON answers for unknown URLs and wrong methods, request size limits,
and the [web] options that become Django's HTTPS settings."""

from __future__ import annotations

import pytest

from emlive.config import WebSettings
from emlive.web.options import django_settings

API_404S = [
    "/api/v1/nothing",
    "/api/v1/sessions/1/nothing",
    "/api/v1/",
    "/api",
    "/p1/ann/nothing",
    "/p1/ann/session/grid1/nothing",
    "/p1/ann/session/grid1/start-processing/extra",
    "/p1",
    "/nothing/at/all/here",
]


@pytest.mark.parametrize("url", API_404S)
def test_an_unknown_api_url_is_a_json_404_that_points_to_the_routes(web, client, url):
    response = client.get(url, **web.auth("ann"))
    assert response.status_code == 404, response.content
    assert response["Content-Type"] == "application/json"
    assert "/api/v1/" in response.json()["detail"]
    assert "docs/api.md" in response.json()["detail"]


def test_an_unknown_url_is_a_json_404_without_a_token_too(web, client):
    response = client.post("/api/v1/nothing", data="{}", content_type="application/json")
    assert response.status_code == 404
    assert response.json()["detail"].startswith("no route /api/v1/nothing")


def test_dashboard_pages_keep_an_html_404(web, client):
    response = client.get("/dashboard/nothing/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("method", "url", "allowed"),
    [
        ("delete", "/api/v1/sessions", {"GET", "POST"}),
        ("put", "/api/v1/projects", {"GET"}),
        ("post", "/api/v1/sessions/1", {"GET"}),
        ("get", "/api/v1/sessions/1/stop", {"POST"}),
        ("post", "/api/v1/sessions/1/curation", {"GET", "PUT"}),
        ("post", "/p1/ann/session/grid1", {"GET"}),
        ("delete", "/p1/ann/sessions", {"GET"}),
        ("put", "/p1/ann/session/grid1/start-processing", {"GET", "POST"}),
        ("delete", "/p1/ann/session/grid1/stop-processing", {"GET", "POST"}),
        ("patch", "/p1/ann/session/grid1/resume-processing", {"GET", "POST"}),
    ],
)
def test_a_wrong_method_is_a_json_405_with_the_allowed_ones(web, client, method, url, allowed):
    response = getattr(client, method)(url, **web.auth("ann"))
    assert response.status_code == 405, response.content
    assert response["Content-Type"] == "application/json"
    assert {m.strip() for m in response["Allow"].split(",")} == allowed
    detail = response.json()["detail"]
    assert f"method {method.upper()} not allowed on {url}" in detail


def test_the_compatible_routes_take_get_and_post(web, client):
    web.session("p1", "ann", "grid1")
    for method in ("get", "post"):
        for action in ("start-processing?apix=1&fmdose=1", "stop-processing", "resume-processing"):
            response = getattr(client, method)(f"/p1/ann/session/grid1/{action}", **web.auth("ann"))
            assert response.status_code == 200, (method, action, response.content)


def test_a_body_over_the_limit_is_a_json_413_before_it_is_read(web, client):
    from django.test import Client, override_settings

    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=2048):
        limited = Client()  # the middleware reads the limit when it is built
        body = '{"project": "p1", "pad": "' + "x" * 4096 + '"}'
        for url in ("/api/v1/sessions", "/p1/ann/session/grid1/start-processing", "/login/"):
            response = limited.post(url, data=body, content_type="application/json", **web.auth("ann"))
            assert response.status_code == 413, url
            assert "max_body_bytes" in response.json()["detail"]
        small = limited.post("/api/v1/sessions", data="{}", content_type="application/json", **web.auth("ann"))
        assert small.status_code == 400  # read, and found wanting


def _asgi(app, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, int]:
    """Send a POST of ``chunks`` (chunked: no Content-Length) through the ASGI ``app``; returns
    the status, the body and how many chunks the app read."""
    import asyncio

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []
    read = 0

    async def receive():
        nonlocal read
        if read < len(messages):
            read += 1
            return messages[read - 1]
        await asyncio.sleep(3600)  # a client that keeps the connection open

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/v1/sessions", "raw_path": b"/api/v1/sessions", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, read


def test_a_body_over_the_limit_is_a_json_413_and_is_not_read_through_asgi(web):
    """Django's ASGI handler spools the whole body to disk before any middleware runs: the
    ASGI wrapper refuses a large Content-Length unread, and stops reading a chunked body (no
    length) once it passes the limit."""
    import json

    from django.core.asgi import get_asgi_application
    from django.test import override_settings

    from emlive.web.middleware import limit_body

    app = limit_body(get_asgi_application())
    token = [(b"authorization", f"Bearer {web.tokens['ann']}".encode())]
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=4096):
        status, body, read = _asgi(app, [b"x" * 1000] * 100, token)
        assert status == 413
        assert "max_body_bytes" in json.loads(body)["detail"]
        assert read == 5  # 5000 bytes > 4096: the other 95 chunks are never read
        status, body, _ = _asgi(app, [b"{", b"}"], token)
        assert status == 400  # a small chunked body goes through to the API
        status, _, _ = _asgi(app, [b"{}"], [(b"content-length", b"2"), *token])
        assert status == 400
        # a large announced length: refused before a byte of the body is read
        status, body, read = _asgi(app, [b"x" * 1000] * 100, [(b"content-length", b"100000"), *token])
        assert (status, read) == (413, 0)
        assert "max_body_bytes" in json.loads(body)["detail"]


def test_too_many_form_fields_is_a_json_400(web, client):
    from django.test import override_settings

    web.session("p1", "ann", "grid1")
    with override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=10):
        body = "&".join(f"f{i}=1" for i in range(50))
        response = client.post(
            "/p1/ann/session/grid1/start-processing?apix=1&fmdose=1", data=body,
            content_type="application/x-www-form-urlencoded", **web.auth("ann"),
        )
    assert response.status_code == 400
    assert "fields" in response.json()["detail"]


def test_a_query_string_over_the_limit_is_a_json_414(web, client):
    long = "x" * 9000
    response = client.get(f"/api/v1/sessions?pad={long}", **web.auth("ann"))
    assert response.status_code == 414
    assert "max_query_bytes" in response.json()["detail"]
    assert client.get(f"/api/v1/sessions?pad={'x' * 100}", **web.auth("ann")).status_code == 200


def test_a_malformed_content_length_is_a_400(web, client):
    response = client.generic("POST", "/api/v1/sessions", "{}", content_type="application/json", CONTENT_LENGTH="12ab")
    assert response.status_code == 400
    assert "Content-Length" in response.json()["detail"]


def test_the_defaults_suit_plain_http_on_localhost():
    options = django_settings(WebSettings())
    assert options["SESSION_COOKIE_SECURE"] is False
    assert options["CSRF_COOKIE_SECURE"] is False
    assert options["SECURE_HSTS_SECONDS"] == 0
    assert options["SECURE_PROXY_SSL_HEADER"] is None
    assert options["CSRF_TRUSTED_ORIGINS"] == []
    assert options["DATA_UPLOAD_MAX_MEMORY_SIZE"] == 1_048_576


def test_the_https_options_behind_a_proxy():
    web = WebSettings(
        secure_cookies=True, csrf_trusted_origins=["https://emlive.example.org"], hsts_seconds=31536000,
        hsts_include_subdomains=True, proxy_ssl_header="X-Forwarded-Proto",
    )
    options = django_settings(web)
    assert options["SESSION_COOKIE_SECURE"] and options["CSRF_COOKIE_SECURE"]
    assert options["CSRF_TRUSTED_ORIGINS"] == ["https://emlive.example.org"]
    assert options["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert (options["SECURE_HSTS_SECONDS"], options["SECURE_HSTS_INCLUDE_SUBDOMAINS"]) == (31536000, True)


@pytest.mark.parametrize(
    "bad", [{"csrf_trusted_origins": ["emlive.example.org"]}, {"proxy_ssl_header": "X Forwarded"}, {"hsts_seconds": -1}]
)
def test_bad_https_options_are_refused(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        WebSettings(**bad)


def test_hsts_and_secure_cookies_reach_the_responses_behind_a_proxy(web):
    """With the options applied, an HTTPS request (the proxy's header) gets the HSTS header and
    the login cookie marked Secure; a plain HTTP one gets no HSTS."""
    from django.test import Client, override_settings

    web_options = WebSettings(secure_cookies=True, hsts_seconds=3600, hsts_include_subdomains=True,
                              proxy_ssl_header="X-Forwarded-Proto")
    with override_settings(**django_settings(web_options)):
        browser = Client()
        page = browser.get("/login/", HTTP_X_FORWARDED_PROTO="https")
        assert page["Strict-Transport-Security"] == "max-age=3600; includeSubDomains"
        assert page.cookies["csrftoken"]["secure"]
        assert "Strict-Transport-Security" not in Client().get("/login/")
        assert browser.login(username="ann", password="ann-secret-pw")
        assert browser.cookies["sessionid"]["secure"]


def test_csrf_trusted_origins_let_a_proxied_origin_post(web):
    """Behind a proxy that changes the Host, the browser's Origin is the public one: refused
    unless it is a trusted origin."""
    from django.test import Client, override_settings

    def post_login(trusted: list[str]) -> int:
        options = django_settings(WebSettings(csrf_trusted_origins=trusted, proxy_ssl_header="X-Forwarded-Proto"))
        with override_settings(**options):
            browser = Client(enforce_csrf_checks=True)
            browser.get("/login/")
            token = browser.cookies["csrftoken"].value
            return browser.post(
                "/login/", {"username": "ann", "password": "ann-secret-pw", "csrfmiddlewaretoken": token},
                HTTP_ORIGIN="https://emlive.example.org", HTTP_X_FORWARDED_PROTO="https", HTTP_HOST="127.0.0.1:8000",
            ).status_code

    assert post_login([]) == 403
    assert post_login(["https://emlive.example.org"]) == 302
