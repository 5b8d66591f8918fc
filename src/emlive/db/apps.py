"""Django application config of the data plane (label ``emlive``)."""

from __future__ import annotations

from django.apps import AppConfig


class EmliveDbConfig(AppConfig):
    name = "emlive.db"
    label = "emlive"
    verbose_name = "emlive data plane"
    default_auto_field = "django.db.models.BigAutoField"
