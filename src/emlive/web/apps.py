"""Django application config of the web side (templates and static files; no models)."""

from __future__ import annotations

from django.apps import AppConfig


def _close_connections_after_asgi_request(sender: type | None, **kwargs: object) -> None:
    """Under ASGI, Django runs each request's sync code in a thread of its own, so a persistent
    connection (CONN_MAX_AGE=None, right for the controller) would be left open in a thread that
    is gone. Close it when the request ends (PostgreSQL: back to the pool); WSGI and the test
    client keep theirs."""
    from django.core.handlers.asgi import ASGIHandler
    from django.db import connections

    if isinstance(sender, type) and issubclass(sender, ASGIHandler):
        connections.close_all()


class EmliveWebConfig(AppConfig):
    name = "emlive.web"
    label = "emlive_web"
    verbose_name = "emlive web"

    def ready(self) -> None:
        from django.core.signals import request_finished

        from emlive.config import WebSettings
        from emlive.web import options

        options.apply(WebSettings())  # the defaults; emlive serve applies the configured [web] options

        request_finished.connect(_close_connections_after_asgi_request, dispatch_uid="emlive.web.close_connections")
