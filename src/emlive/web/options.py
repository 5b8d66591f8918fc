"""The ``[web]`` options that become Django settings: HTTPS behind a proxy, cookies, CSRF,
request size limits and login throttling.

The defaults suit a service on localhost over plain HTTP; docs/service.md says what to set
behind an HTTPS proxy. Applied once at start (``emlive serve``, the ASGI module), before the
middleware is built; the Django app applies the defaults so tests and other processes see them.
"""

from __future__ import annotations

from typing import Any

from emlive.config import WebSettings

LOGIN_WINDOW_S = 60
"""Failed logins are counted over this window (``[web] login_attempts_per_minute``)."""


def django_settings(web: WebSettings) -> dict[str, Any]:
    """Django's settings for ``web`` (pure)."""
    return {
        "SESSION_COOKIE_SECURE": web.secure_cookies,
        "CSRF_COOKIE_SECURE": web.secure_cookies,
        "CSRF_TRUSTED_ORIGINS": list(web.csrf_trusted_origins),
        "SECURE_HSTS_SECONDS": web.hsts_seconds,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": web.hsts_include_subdomains,
        "SECURE_PROXY_SSL_HEADER": (
            None if web.proxy_ssl_header is None else ("HTTP_" + web.proxy_ssl_header.upper().replace("-", "_"), "https")
        ),
        "DATA_UPLOAD_MAX_MEMORY_SIZE": web.max_body_bytes,
        "DATA_UPLOAD_MAX_NUMBER_FIELDS": 1000,
        "EMLIVE_MAX_QUERY_BYTES": web.max_query_bytes,
        "EMLIVE_LOGIN_ATTEMPTS_PER_MINUTE": web.login_attempts_per_minute,
    }


def apply(web: WebSettings) -> None:
    """Set Django's settings from ``web`` (Django configured; before the first request)."""
    from django.conf import settings

    for name, value in django_settings(web).items():
        setattr(settings, name, value)
