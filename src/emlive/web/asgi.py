"""The ASGI application of the API, the dashboard and the compatible routes.

``emlive serve`` configures Django first and serves ``application`` with uvicorn beside the
controller. Another ASGI server can serve it too (``uvicorn emlive.web.asgi:application``, for
instance several worker processes behind a reverse proxy): imported in a process where Django
is not configured yet, this module configures it from emlive's settings (``EMLIVE_*``
variables, ``EMLIVE_CONFIG``) with the same database and secret key as ``emlive serve``,
without migrating. Such a process serves requests only; exactly one ``emlive serve`` must run
the controller for the database.
"""

from __future__ import annotations

from django.core.asgi import get_asgi_application

from emlive.web.middleware import limit_body

from emlive.config import load_settings
from emlive.db.setup import current_database_url

if current_database_url() is None:
    from emlive.web.service import open_database

    open_database(load_settings(), migrate=False)

from emlive.pipeline.registry import registry  # noqa: E402

registry()  # the installed steps, loaded at start: the API and dashboard describe them from the first request on
application = limit_body(get_asgi_application())
