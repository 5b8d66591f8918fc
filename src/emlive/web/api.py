"""The typed REST API, ``/api/v1`` (django-ninja; OpenAPI at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from ninja import NinjaAPI

api = NinjaAPI(title="emlive", version="1", urls_namespace="api-v1")
