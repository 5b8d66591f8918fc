"""Error answers outside the views: JSON ``{"detail": ...}`` for the API and the compatible routes,
HTML for the dashboard's pages.

Django answers a URL that matches no route, a request it cannot read and a crash with its own
HTML pages, and ninja a wrong method with a bare ``405``; scripts parse JSON. Every path that is
not the dashboard's (``/``, ``/dashboard/``, ``/login/``, ``/logout/``, ``/static/``) is the
API's: ``/api/v1/…``, the compatible ``/{project}/{user}/…`` routes, and any other URL a script
may get wrong.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

HTML_PREFIXES = ("/dashboard/", "/login/", "/logout/", "/static/")
"""Paths of the dashboard's pages (answered in HTML, as a browser shows them)."""


def is_api_path(path: str) -> bool:
    """Whether ``path`` is answered in JSON (everything but the dashboard's pages)."""
    return path != "/" and not path.startswith(HTML_PREFIXES)


def json_error(status: int, detail: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"detail": detail}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _shown(path: str) -> str:
    return path if len(path) <= 200 else path[:200] + "…"


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler404``: no route matches (or a dashboard view raised Http404)."""
    if not is_api_path(request.path):
        return defaults.page_not_found(request, exception)  # type: ignore[arg-type]
    return json_error(
        404,
        f"no route {_shown(request.path)}: the API is under /api/v1/ (routes: /api/v1/openapi.json), the "
        "compatible routes are /{project_id}/{user}/sessions and /{project_id}/{user}/session/{session_id}[/...]; "
        "see docs/api.md",
    )


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler400``: a request Django could not read (too many fields, a malformed body …)."""
    if not is_api_path(request.path):
        return defaults.bad_request(request, exception)  # type: ignore[arg-type]
    return json_error(400, f"bad request: {exception or 'it cannot be read'}")


def server_error(request: HttpRequest) -> HttpResponse:
    """``handler500``: an unexpected error (logged by Django with its traceback)."""
    if not is_api_path(request.path):
        return defaults.server_error(request)
    return json_error(500, "internal error: the service logged it; try again or report it to the facility")


def method_not_allowed(request: HttpRequest, allowed: str) -> JsonResponse:
    """405 in JSON, with the ``Allow`` header listing what the route takes."""
    return json_error(
        405, f"method {request.method} not allowed on {_shown(request.path)}; allowed: {allowed}", Allow=allowed
    )
