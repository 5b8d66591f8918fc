"""Every URL of the service: ``/api/v1`` (typed API, OpenAPI at ``/api/v1/openapi.json``), the
dashboard (``/dashboard/``, ``/login/``) and the compatible routes facility scripts call
(``/{project}/{user}/sessions`` …)."""

from __future__ import annotations

from django.urls import include, path

from emlive.web import tilt_series  # noqa: F401  (adds the tilt-series routes to the API)
from emlive.web.api import api
from emlive.web.compat import compat

urlpatterns = [
    path("api/v1/", api.urls),
    path("", include("emlive.web.dashboard.urls")),
    path("", compat.urls),
]

handler400 = "emlive.web.errors.bad_request"
handler404 = "emlive.web.errors.not_found"
handler500 = "emlive.web.errors.server_error"
