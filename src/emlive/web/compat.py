"""The compatible REST routes facility scripts already call (DESIGN.md §3)."""

from __future__ import annotations

from ninja import NinjaAPI

compat = NinjaAPI(title="emlive compatible routes", version="1", urls_namespace="compat", docs_url=None)
