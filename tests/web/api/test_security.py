"""Security of the REST API: who may call, who may see what, what a path may contain, and how
tokens are kept. Runs on SQLite and PostgreSQL (``web_any``)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from emlive.acquisition import Acquisition

ACQ = Acquisition(pixel_size_a=0.83, dose_per_frame_e_a2=1.0, voltage_kv=300.0)


@pytest.fixture
def started(web_any):
    """p1/ann/grid1 started (ann's project) and p2/bob/secret started (bob's project)."""
    from emlive.web import control

    web_any.session("p1", "ann", "grid1")
    web_any.session("p2", "bob", "secret")
    mine = control.start_processing(web_any.root, "p1", "ann", "grid1", ACQ)
    theirs = control.start_processing(web_any.root, "p2", "bob", "secret", ACQ)
    return web_any, mine, theirs


def every_route(mine_id: int, project: str = "p1", user: str = "ann", session: str = "grid1") -> list[tuple[str, str]]:
    v1 = f"/api/v1/sessions/{mine_id}"
    compat = f"/{project}/{user}/session/{session}"
    return [
        ("get", "/api/v1/projects"),
        ("get", "/api/v1/sessions"),
        ("post", "/api/v1/sessions"),
        ("get", v1),
        ("get", f"{v1}/status"),
        ("post", f"{v1}/stop"),
        ("post", f"{v1}/resume"),
        ("get", f"{v1}/parameters"),
        ("get", f"{v1}/curation"),
        ("put", f"{v1}/curation"),
        ("get", f"{v1}/exposures"),
        ("get", f"{v1}/exposures/1"),
        ("get", f"{v1}/metrics"),
        ("get", f"{v1}/exports"),
        ("get", f"{v1}/exports/micrographs_ctf.star"),
        ("get", f"{v1}/tilt-series"),
        ("get", f"{v1}/tilt-series/1"),
        ("get", f"{v1}/tilt-series/1/montage.png"),
        ("get", f"{v1}/tilt-series/1/central-slice.png"),
        ("get", f"/{project}/{user}/sessions"),
        ("get", compat),
        ("get", f"{compat}/start-processing?apix=1&fmdose=1"),
        ("post", f"{compat}/start-processing?apix=1&fmdose=1"),
        ("get", f"{compat}/stop-processing"),
        ("post", f"{compat}/stop-processing"),
        ("get", f"{compat}/resume-processing"),
        ("post", f"{compat}/resume-processing"),
    ]


def call(client, method: str, url: str, **extra):
    if method in ("post", "put"):
        return getattr(client, method)(url, data="{}", content_type="application/json", **extra)
    return getattr(client, method)(url, **extra)


def test_every_route_answers_401_without_a_token(started, client):
    web, mine, _ = started
    for method, url in every_route(mine.pk):
        response = call(client, method, url)
        assert response.status_code == 401, (method, url, response.content)
        assert "emlive token create" in response.json()["detail"]
        assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "token",
    [
        "nonsense",
        "emlive_0123456789abcdef_" + "x" * 43,  # well-formed, unknown key id
        "Bearer",
        "",
    ],
)
def test_every_route_answers_401_to_a_wrong_token(started, client, token):
    web, mine, _ = started
    for method, url in every_route(mine.pk):
        as_header = call(client, method, url, HTTP_AUTHORIZATION=f"Bearer {token}")
        sep = "&" if "?" in url else "?"
        as_query = call(client, method, f"{url}{sep}access_token={token}")
        assert (as_header.status_code, as_query.status_code) == (401, 401), (method, url)


def test_a_known_key_id_with_a_wrong_secret_is_refused(started, client):
    web, mine, _ = started
    prefix, key_id, secret = web.tokens["ann"].split("_", 2)
    forged = f"{prefix}_{key_id}_{'A' * len(secret)}"
    assert client.get("/api/v1/sessions", HTTP_AUTHORIZATION=f"Bearer {forged}").status_code == 401
    assert client.get(f"/api/v1/sessions?access_token={forged}").status_code == 401


def test_a_token_of_a_deactivated_user_is_refused(started, client):
    web, mine, _ = started
    ann = web.users["ann"]
    ann.is_active = False
    ann.save()
    assert client.get("/api/v1/sessions", **web.auth("ann")).status_code == 401


def test_the_token_works_as_header_and_as_query_parameter(started, client):
    web, mine, _ = started
    assert client.get(f"/api/v1/sessions/{mine.pk}", **web.auth("ann")).status_code == 200
    assert client.get(f"/api/v1/sessions/{mine.pk}?access_token={web.tokens['ann']}").status_code == 200
    assert client.get(f"/p1/ann/session/grid1?access_token={web.tokens['ann']}").status_code == 200


def test_another_projects_session_is_not_found_exactly_like_a_missing_one(started, client):
    web, mine, theirs = started
    missing = theirs.pk + 1000
    for method, url in every_route(theirs.pk, "p2", "bob", "secret"):
        if url in ("/api/v1/projects", "/api/v1/sessions"):
            continue  # the lists, and start (its body names the project), are checked below
        response = call(client, method, url, **web.auth("ann"))
        assert response.status_code == 404, (method, url, response.content)
        detail = response.json()["detail"]
        assert "among those you can see" in detail
        assert "secret" not in detail and "bob" not in detail
        if url.startswith("/api/v1/sessions/"):
            unknown = call(client, method, url.replace(f"/sessions/{theirs.pk}", f"/sessions/{missing}"), **web.auth("ann"))
            assert unknown.status_code == 404
            assert unknown.json()["detail"] == detail.replace(str(theirs.pk), str(missing))
    # the compatible status of another project's session is a 404, not a state
    assert client.get("/p2/bob/session/nothing", **web.auth("ann")).status_code == 404


def test_lists_show_only_what_the_caller_may_see_and_staff_see_all(started, client):
    web, mine, theirs = started
    names = lambda user: {s["name"] for s in client.get("/api/v1/sessions", **web.auth(user)).json()["items"]}  # noqa: E731
    assert names("ann") == {"grid1"}
    assert names("bob") == {"secret"}
    assert names("staff") == {"grid1", "secret"}
    projects = lambda user: [p["name"] for p in client.get("/api/v1/projects", **web.auth(user)).json()]  # noqa: E731
    assert projects("ann") == ["p1"]
    assert projects("staff") == ["p1", "p2"]
    assert client.get(f"/api/v1/sessions/{theirs.pk}", **web.auth("staff")).status_code == 200
    assert client.get("/p2/bob/session/secret", **web.auth("staff")).json()["state"] == "processing_start"


def test_starting_a_session_in_another_project_is_not_found(started, client):
    web, _, _ = started
    body = {"project": "p2", "user": "bob", "name": "secret", "acquisition": ACQ.model_dump(mode="json")}
    response = client.post("/api/v1/sessions", data=body, content_type="application/json", **web.auth("ann"))
    assert response.status_code == 404
    assert client.get("/p2/bob/session/secret/stop-processing", **web.auth("ann")).status_code == 404
    assert client.get("/p2/bob/session/secret", **web.auth("bob")).json()["state"] == "processing_start"


TRAVERSALS = [
    "..",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "..%2f..%2fetc",
    "%2e%2e%2f%2e%2e%2fetc",
    "%252e%252e",
    "%252e%252e%252fetc",
    "..%252f..%252fetc",
    "%2e%2e%5cwindows",
    "a%00b",
]


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_traversal_in_any_path_parameter_is_a_400(started, client, bad):
    web, mine, _ = started
    both, get, post, put = ("get", "post"), ("get",), ("post",), ("put",)
    urls = [
        (get, f"/{bad}/ann/sessions"),
        (get, f"/p1/{bad}/sessions"),
        (get, f"/{bad}/ann/session/grid1"),
        (get, f"/p1/{bad}/session/grid1"),
        (get, f"/p1/ann/session/{bad}"),
        (both, f"/{bad}/ann/session/grid1/start-processing?apix=1&fmdose=1"),
        (both, f"/p1/{bad}/session/grid1/start-processing?apix=1&fmdose=1"),
        (both, f"/p1/ann/session/{bad}/start-processing?apix=1&fmdose=1"),
        (both, f"/p1/ann/session/{bad}/stop-processing"),
        (both, f"/p1/{bad}/session/grid1/resume-processing"),
        (get, f"/api/v1/sessions/{bad}"),
        (post, f"/api/v1/sessions/{bad}/stop"),
        (post, f"/api/v1/sessions/{bad}/resume"),
        (put, f"/api/v1/sessions/{bad}/curation"),
        (get, f"/api/v1/sessions/{bad}/exposures"),
        (get, f"/api/v1/sessions/{mine.pk}/exposures/{bad}"),
        (get, f"/api/v1/sessions/{bad}/metrics"),
        (get, f"/api/v1/sessions/{mine.pk}/exports/{bad}"),
        (get, f"/api/v1/sessions/{mine.pk}/exports/{bad}micrographs_ctf.star"),
        (get, f"/api/v1/sessions/{mine.pk}/exports/micrographs_ctf.star{bad}"),
    ]
    for methods, url in urls:
        for method in methods:
            response = call(client, method, url, **web.auth("staff"))
            assert response.status_code == 400, (method, url, response.status_code)


@pytest.mark.parametrize("bad", ["a%2fb", "%2f", "x%2F"])
def test_an_encoded_slash_never_reaches_a_folder(started, client, bad):
    """A plain encoded slash (no dots) makes another, shorter path segment: the test client
    (like WSGI) decodes it before Django sees it, so the URL either matches no route (404) or a
    name check refuses it (400); nothing is served."""
    web, mine, _ = started
    for url in (f"/p1/ann/session/{bad}", f"/p1/{bad}/sessions", f"/api/v1/sessions/{mine.pk}/exports/{bad}"):
        assert client.get(url, **web.auth("staff")).status_code in (400, 404), url


@pytest.mark.parametrize("bad", ["-x", ".hidden", "a b", "a;b", "a" * 201, "%E2%80%A8", "grid1%0A"])
def test_names_outside_the_safe_pattern_are_a_400_that_says_what_is_allowed(started, client, bad):
    web, _, _ = started
    response = client.get(f"/p1/ann/session/{bad}", **web.auth("staff"))
    assert response.status_code == 400
    assert "letters, digits" in response.json()["detail"]


def test_an_out_of_range_id_is_a_400(started, client):
    web, _, _ = started
    for bad in ("0", "-1", str(2**63), "1e3", "0x10"):
        response = client.get(f"/api/v1/sessions/{bad}", **web.auth("staff"))
        assert response.status_code == 400, bad
        assert "session_id" in response.json()["detail"]


def test_a_symlink_to_another_projects_session_is_not_followed(started, client):
    web, _, theirs = started
    link = web.root / "p1" / "sessions" / "ann" / "peek"
    link.symlink_to(web.root / "p2" / "sessions" / "bob" / "secret")
    status = client.get("/p1/ann/session/peek", **web.auth("ann"))
    assert status.json()["state"] == "no_such_session"
    assert client.get("/p1/ann/session/peek/stop-processing", **web.auth("ann")).status_code == 404


def test_a_symlink_to_another_projects_session_cannot_start_it_through_api_v1(started, client):
    web, _, theirs = started
    (web.root / "p1" / "sessions" / "ann" / "peek").symlink_to(web.root / "p2" / "sessions" / "bob" / "secret")
    client.get("/p2/bob/session/secret/stop-processing", **web.auth("bob"))
    body = {"project": "p1", "user": "ann", "name": "peek", "acquisition": ACQ.model_dump(mode="json")}
    response = client.post("/api/v1/sessions", data=body, content_type="application/json", **web.auth("ann"))
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.state == "stopped"


def test_gain_files_outside_the_data_root_are_refused(started, client, tmp_path):
    web, _, _ = started
    web.session("p1", "ann", "grid2")
    body = {
        "project": "p1", "user": "ann", "name": "grid2",
        "acquisition": ACQ.model_dump(mode="json") | {"gain_path": "../../../../../../etc/passwd"},
    }
    response = client.post("/api/v1/sessions", data=body, content_type="application/json", **web.auth("ann"))
    assert response.status_code == 400
    assert "outside the data root" in response.json()["detail"]


def test_tokens_are_compared_in_constant_time(started, client, monkeypatch):
    from emlive.web import access

    web, mine, _ = started
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    secret = web.tokens["ann"].split("_", 2)[2]
    assert client.get(f"/api/v1/sessions/{mine.pk}", **web.auth("ann")).status_code == 200
    assert client.get("/p1/ann/session/grid1", **web.auth("ann")).status_code == 200
    expected = hashlib.sha256(secret.encode()).hexdigest()
    assert calls == [(expected, expected), (expected, expected)]
    calls.clear()
    unknown = "emlive_0123456789abcdef_" + "x" * 43
    assert client.get("/api/v1/sessions", HTTP_AUTHORIZATION=f"Bearer {unknown}").status_code == 401
    assert len(calls) == 1  # an unknown key id costs the same comparison


def test_the_database_keeps_only_a_hash_of_each_token(started):
    from django.db import connection

    from emlive.db.models import ApiToken

    web, _, _ = started
    secrets = [token.split("_", 2)[2] for token in web.tokens.values()]
    rows = [str(value) for row in ApiToken.objects.values_list() for value in row]
    with connection.cursor() as cursor:  # every column of the table, as the database holds it
        cursor.execute(f"SELECT * FROM {ApiToken._meta.db_table}")  # noqa: S608 (our own table name)
        rows += [str(value) for row in cursor.fetchall() for value in row]
    for secret in secrets:
        assert not any(secret in value for value in rows)
        assert hashlib.sha256(secret.encode()).hexdigest() in rows
    if connection.vendor == "sqlite":  # the bytes on disk: the database file and its WAL
        name = Path(connection.settings_dict["NAME"])
        data = b"".join(p.read_bytes() for p in (name, name.with_name(name.name + "-wal")) if p.exists())
        assert hashlib.sha256(secrets[0].encode()).hexdigest().encode() in data
        assert not any(secret.encode() in data for secret in secrets)


def test_the_login_cookie_works_and_unsafe_methods_need_the_csrf_token(started):
    from django.test import Client

    web, mine, _ = started
    browser = Client(enforce_csrf_checks=True)
    assert browser.login(username="ann", password="ann-secret-pw")
    assert browser.get(f"/api/v1/sessions/{mine.pk}").status_code == 200
    url = f"/api/v1/sessions/{mine.pk}/curation"
    body = {"max_fit_resolution_a": 5.0}
    refused = browser.put(url, data=body, content_type="application/json")
    assert refused.status_code == 403
    assert "X-CSRFToken" in refused.json()["detail"]
    csrf = "k" * 32
    browser.cookies["csrftoken"] = csrf
    accepted = browser.put(url, data=body, content_type="application/json", HTTP_X_CSRFTOKEN=csrf)
    assert accepted.status_code == 200
    assert accepted.json()["max_fit_resolution_a"] == 5.0
    # tokens are not ambient credentials: no CSRF token needed with one
    assert Client(enforce_csrf_checks=True).put(url, data=body, content_type="application/json", **web.auth("ann")).status_code == 200


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"acquisition": ACQ.model_dump(mode="json") | {"gain_path": "a\u0000b"}}, "NUL"),
        ({"acquisition": ACQ.model_dump(mode="json") | {"defects_path": "d" * 5000}}, "defects_path"),
        ({"params": {"motion": {"engine": "na\u0000tive"}}}, "NUL"),
        ({"params": {"ctf": {"engine": "x", "\u0000": 1}}}, "NUL"),
    ],
)
def test_text_the_database_cannot_store_is_a_400(started, client, change, says):
    web, _, _ = started
    web.session("p1", "ann", "grid2")
    body = {"project": "p1", "user": "ann", "name": "grid2", "acquisition": ACQ.model_dump(mode="json")} | change
    response = client.post("/api/v1/sessions", data=body, content_type="application/json", **web.auth("ann"))
    assert response.status_code == 400, response.content
    assert says in response.json()["detail"]
