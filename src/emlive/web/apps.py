"""Django application config of the web side (templates and static files; no models)."""

from __future__ import annotations

from django.apps import AppConfig


class EmliveWebConfig(AppConfig):
    name = "emlive.web"
    label = "emlive_web"
    verbose_name = "emlive web"
