"""The authorization matrix: every route of the URL configuration × {no credentials, a bad
one, a user of another project, a member of the project, staff} with the status each must get.

The routes come from Django's URL resolvers (the API's methods from its OpenAPI schema), not
from a list kept here: a new route is tried at once, and fails this test until its expected
statuses are written into EXPECTED. Each route is tried with its declared methods plus GET and
POST. The API and the compatible routes are called with API tokens; the dashboard with the
login cookie. Before each request the session is put back to ``stopped``, so the answers do
not depend on the order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from emlive.acquisition import Acquisition
from emlive.io.png import write_png_atomic
from tests.web.tilt_series_data import store_series

ACQ = Acquisition(pixel_size_a=0.83, dose_per_frame_e_a2=1.0, voltage_kv=300.0)
CALLERS = ("none", "bad", "other", "member", "staff")
BAD_TOKEN = "emlive_0123456789abcdef_" + "x" * 43

# "METHOD route": statuses for (none, bad, other, member, staff). The route is Django's spelling.
EXPECTED_ROWS = """
GET  api/v1/openapi.json                                   200 200 200 200 200
POST api/v1/openapi.json                                   405 405 405 405 405
GET  api/v1/docs                                           200 200 200 200 200
POST api/v1/docs                                           405 405 405 405 405
GET  api/v1/                                               404 404 404 404 404
POST api/v1/                                               404 404 404 404 404
GET  api/v1/projects                                       401 401 200 200 200
POST api/v1/projects                                       405 405 405 405 405
GET  api/v1/steps                                          401 401 200 200 200
POST api/v1/steps                                          405 405 405 405 405
GET  api/v1/sessions                                       401 401 200 200 200
POST api/v1/sessions                                       401 401 404 200 200
GET  api/v1/sessions/<session_id>                          401 401 404 200 200
POST api/v1/sessions/<session_id>                          405 405 405 405 405
GET  api/v1/sessions/<session_id>/stop                     405 405 405 405 405
POST api/v1/sessions/<session_id>/stop                     401 401 404 200 200
GET  api/v1/sessions/<session_id>/resume                   405 405 405 405 405
POST api/v1/sessions/<session_id>/resume                   401 401 404 200 200
GET  api/v1/sessions/<session_id>/parameters               401 401 404 200 200
POST api/v1/sessions/<session_id>/parameters               405 405 405 405 405
GET  api/v1/sessions/<session_id>/curation                 401 401 404 200 200
PUT  api/v1/sessions/<session_id>/curation                 401 401 404 200 200
POST api/v1/sessions/<session_id>/curation                 405 405 405 405 405
GET  api/v1/sessions/<session_id>/exposures                401 401 404 200 200
POST api/v1/sessions/<session_id>/exposures                405 405 405 405 405
GET  api/v1/sessions/<session_id>/exposures/<exposure_id>  401 401 404 200 200
POST api/v1/sessions/<session_id>/exposures/<exposure_id>  405 405 405 405 405
GET  api/v1/sessions/<session_id>/metrics                  401 401 404 200 200
POST api/v1/sessions/<session_id>/metrics                  405 405 405 405 405
GET  api/v1/sessions/<session_id>/exports                  401 401 404 200 200
POST api/v1/sessions/<session_id>/exports                  405 405 405 405 405
GET  api/v1/sessions/<session_id>/exports/<name>           401 401 404 200 200
POST api/v1/sessions/<session_id>/exports/<name>           405 405 405 405 405
GET  api/v1/sessions/<session_id>/status                   401 401 404 200 200
POST api/v1/sessions/<session_id>/status                   405 405 405 405 405
GET  api/v1/sessions/<session_id>/tilt-series              401 401 404 200 200
POST api/v1/sessions/<session_id>/tilt-series              405 405 405 405 405
GET  api/v1/sessions/<session_id>/tilt-series/<series_id>  401 401 404 200 200
POST api/v1/sessions/<session_id>/tilt-series/<series_id>  405 405 405 405 405
GET  api/v1/sessions/<session_id>/tilt-series/<series_id>/montage.png        401 401 404 200 200
POST api/v1/sessions/<session_id>/tilt-series/<series_id>/montage.png        405 405 405 405 405
GET  api/v1/sessions/<session_id>/tilt-series/<series_id>/central-slice.png  401 401 404 200 200
POST api/v1/sessions/<session_id>/tilt-series/<series_id>/central-slice.png  405 405 405 405 405
GET  openapi.json                                          200 200 200 200 200
POST openapi.json                                          405 405 405 405 405
GET  <project_id>/<user>/sessions                          401 401 404 200 200
POST <project_id>/<user>/sessions                          405 405 405 405 405
GET  <project_id>/<user>/session/<session_id>              401 401 404 200 200
POST <project_id>/<user>/session/<session_id>              405 405 405 405 405
GET  <project_id>/<user>/session/<session_id>/start-processing   401 401 404 200 200
POST <project_id>/<user>/session/<session_id>/start-processing   401 401 404 200 200
GET  <project_id>/<user>/session/<session_id>/stop-processing    401 401 404 200 200
POST <project_id>/<user>/session/<session_id>/stop-processing    401 401 404 200 200
GET  <project_id>/<user>/session/<session_id>/resume-processing  401 401 404 200 200
POST <project_id>/<user>/session/<session_id>/resume-processing  401 401 404 200 200
GET  ""                                                    302 302 302 302 302
POST ""                                                    405 405 405 405 405
GET  login/                                                200 200 302 302 302
POST login/                                                200 200 302 302 302
GET  logout/                                               405 405 405 405 405
POST logout/                                               302 302 302 302 302
GET  dashboard/                                            302 302 200 200 200
POST dashboard/                                            302 302 405 405 405
GET  dashboard/sessions-table/                             302 302 200 200 200
POST dashboard/sessions-table/                             302 302 405 405 405
GET  dashboard/sessions/<int:session_id>/                  302 302 404 200 200
POST dashboard/sessions/<int:session_id>/                  302 302 405 405 405
GET  dashboard/sessions/<int:session_id>/status/           302 302 404 200 200
POST dashboard/sessions/<int:session_id>/status/           302 302 405 405 405
GET  dashboard/sessions/<int:session_id>/plots/            302 302 404 200 200
POST dashboard/sessions/<int:session_id>/plots/            302 302 405 405 405
GET  dashboard/sessions/<int:session_id>/exposures/        302 302 404 200 200
POST dashboard/sessions/<int:session_id>/exposures/        302 302 405 405 405
GET  dashboard/sessions/<int:session_id>/curation/         302 302 405 405 405
POST dashboard/sessions/<int:session_id>/curation/         302 302 404 302 302
GET  dashboard/sessions/<int:session_id>/stop/             302 302 405 405 405
POST dashboard/sessions/<int:session_id>/stop/             302 302 404 302 302
GET  dashboard/sessions/<int:session_id>/resume/           302 302 405 405 405
POST dashboard/sessions/<int:session_id>/resume/           302 302 404 302 302
GET  dashboard/sessions/<int:session_id>/exports/<str:name>  302 302 404 200 200
POST dashboard/sessions/<int:session_id>/exports/<str:name>  302 302 405 405 405
GET  dashboard/exposures/<int:exposure_id>/                302 302 404 200 200
POST dashboard/exposures/<int:exposure_id>/                302 302 405 405 405
GET  dashboard/exposures/<int:exposure_id>/thumbnail.png   302 302 404 200 200
POST dashboard/exposures/<int:exposure_id>/thumbnail.png   302 302 405 405 405
GET  dashboard/exposures/<int:exposure_id>/spectrum.png    302 302 404 200 200
POST dashboard/exposures/<int:exposure_id>/spectrum.png    302 302 405 405 405
GET  dashboard/exposures/<int:exposure_id>/step/<slug:step>/<slug:field>.png  302 302 404 200 200
POST dashboard/exposures/<int:exposure_id>/step/<slug:step>/<slug:field>.png  302 302 405 405 405
GET  dashboard/sessions/<int:session_id>/tilt-series/      302 302 404 200 200
POST dashboard/sessions/<int:session_id>/tilt-series/      302 302 405 405 405
GET  dashboard/tilt-series/<int:series_id>/                302 302 404 200 200
POST dashboard/tilt-series/<int:series_id>/                302 302 405 405 405
GET  dashboard/tilt-series/<int:series_id>/<slug:part>/    302 302 404 200 200
POST dashboard/tilt-series/<int:series_id>/<slug:part>/    302 302 405 405 405
GET  static/emlive/<str:name>                              200 200 200 200 200
POST static/emlive/<str:name>                              405 405 405 405 405
"""


def _expected() -> dict[tuple[str, str], tuple[int, ...]]:
    table = {}
    for line in EXPECTED_ROWS.strip().splitlines():
        method, route, *codes = line.split()
        table[(method, route.strip('"'))] = tuple(int(code) for code in codes)
    return table


EXPECTED = _expected()


def routes() -> dict[str, set[str]]:
    """Every route of the URL configuration (Django's spelling) with the methods to try: the
    API's declared ones (OpenAPI schema) plus GET and POST. A route matched earlier by an
    identical pattern (ninja's root of the compatible routes under the dashboard's ``""``) is
    unreachable and left out."""
    from django.urls import URLPattern, URLResolver, get_resolver

    from emlive.web.api import api
    from emlive.web.compat import compat

    declared: dict[str, set[str]] = {}
    for ninja_api in (api, compat):
        for path, operations in ninja_api.get_openapi_schema(path_params={})["paths"].items():
            route = re.sub(r"\{(\w+)\}", r"<\1>", path).lstrip("/")
            declared.setdefault(route, set()).update(method.upper() for method in operations)

    found: dict[str, set[str]] = {}

    def walk(patterns: list, prefix: str = "") -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                route = prefix + str(pattern.pattern)
                found.setdefault(route, {"GET", "POST"} | declared.get(route, set()))

    walk(get_resolver().url_patterns)
    return found


def test_every_route_of_the_url_configuration_has_expected_statuses(web):
    tried = {(method, route) for route, methods in routes().items() for method in methods}
    missing = sorted(tried - EXPECTED.keys())
    gone = sorted(EXPECTED.keys() - tried)
    assert not missing, f"routes without expected statuses: add them to EXPECTED_ROWS: {missing}"
    assert not gone, f"EXPECTED_ROWS lists routes the URL configuration no longer has: {gone}"
    assert len(tried) >= 80


@pytest.fixture
def facility(web_any, make_results, engines):
    """p1/ann/grid1 (ann's, stopped) with one exposure processed: motion, CTF, thumbnail, its
    CTF diagnostic and the pick step's picture, and a tilt series done with its pictures;
    p2/bob/secret (bob's). On SQLite, PostgreSQL
    and MariaDB (the filters that hide other projects are queries)."""
    from django.core.cache import cache
    from django.utils import timezone

    from emlive.db import store
    from emlive.db.models import StepResult
    from emlive.web import control

    web = web_any
    cache.clear()  # login throttling
    web.session("p1", "ann", "grid1")
    web.session("p2", "bob", "secret")
    session = control.start_processing(web.root, "p1", "ann", "grid1", ACQ)
    control.start_processing(web.root, "p2", "bob", "secret", ACQ)
    out = Path(session.out_dir)
    exposure, _ = store.record_exposure(session, "m0.tif", 10, 1_700_000_000 * 10**9)
    pictures = {}
    for folder, name in (("thumbnail", "m0.png"), ("diagnostics", "m0.png"), ("pick", "m0_picks.png")):
        pictures[folder] = out / folder / name
        pictures[folder].parent.mkdir(parents=True, exist_ok=True)
        write_png_atomic(pictures[folder], np.random.default_rng(0).normal(size=(32, 32)))
    motion, ctf = make_results("m0")
    ctf = ctf.model_copy(update={"diagnostic_png_path": pictures["diagnostics"]})
    store.store_result(exposure.pk, motion, ctf, **engines)
    StepResult.objects.create(
        exposure=exposure, step="pick", engine="native", engine_version="1", finished_at=timezone.now(),
        result={"picks_png_path": str(pictures["pick"]), "n_particles": 3}, metrics={"n_particles": 3},
    )
    series = store_series(session, name="TS_01").series
    return web, session, exposure, series


def _url(route: str, session, exposure, series) -> str:
    """``route`` with its parameters filled in: the compatible routes name the session's
    folder, the others its id; a new parameter needs a value here."""
    from emlive.web.dashboard.tilt_series import PARTS

    compat = route.startswith("<project_id>")
    values = {
        "project_id": "p1", "user": "ann", "session_id": "grid1" if compat else str(session.pk),
        "exposure_id": str(exposure.pk), "name": "htmx.min.js" if route.startswith("static/") else "micrographs_ctf.star",
        "step": "pick", "field": "picks_png_path", "series_id": str(series.pk), "part": PARTS[0],
    }

    def fill(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[-1]
        assert name in values, f"route {route}: no value for its parameter {name!r}; add one to _url"
        return values[name]

    url = "/" + re.sub(r"<([\w:]+)>", fill, route)
    return url + "?apix=1&fmdose=1" if url.endswith("/start-processing") else url


def _body(method: str, route: str) -> tuple[str, str]:
    if route == "api/v1/sessions" and method == "POST":
        body = {"project": "p1", "user": "ann", "name": "grid1", "acquisition": ACQ.model_dump(mode="json")}
        return json.dumps(body), "application/json"
    if route.startswith("api/v1/"):
        return "{}", "application/json"
    return "", "application/x-www-form-urlencoded"  # an empty form: every curation limit left out


def _client(caller: str, route: str, facility_web):
    """A client with the caller's credentials: the login cookie for the dashboard's pages, an
    API token for the rest."""
    from django.conf import settings
    from django.test import Client

    users = {"other": "bob", "member": "ann", "staff": "staff"}
    dashboard = not route.startswith("api/v1/") and not route.startswith("<project_id>") and route != "openapi.json"
    if caller == "none":
        return Client(), {}
    if caller == "bad":
        client = Client()
        client.cookies[settings.SESSION_COOKIE_NAME] = "x" * 32
        return client, {} if dashboard else {"HTTP_AUTHORIZATION": f"Bearer {BAD_TOKEN}"}
    client = Client()
    if dashboard:
        client.force_login(facility_web.users[users[caller]])
        return client, {}
    return client, facility_web.auth(users[caller])


def test_the_authorization_matrix(facility):
    from emlive.db.models import Session

    web, session, exposure, series = facility
    wrong = []
    for route, methods in sorted(routes().items()):
        url = _url(route, session, exposure, series)
        for method in sorted(methods):
            expected = EXPECTED[(method, route)]
            for caller, status in zip(CALLERS, expected, strict=True):
                Session.objects.filter(pk=session.pk).update(state=Session.State.STOPPED)
                client, credentials = _client(caller, route, web)
                body, content_type = _body(method, route)
                response = client.generic(method, url, body, content_type=content_type, **credentials)
                response.close()  # a file sent as it is read (the STAR download)
                if response.status_code != status:
                    wrong.append(f"{method} {url} as {caller}: {response.status_code}, expected {status}")
                if route.startswith(("api/v1/", "<project_id>", "openapi.json")) and status >= 400:
                    assert response["Content-Type"].startswith("application/json"), (method, url, caller)
    assert not wrong, "\n".join(wrong)
