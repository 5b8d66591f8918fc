"""Middleware of the web side."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

# After Django's percent-decoding: a "." or ".." segment, a backslash or NUL, or an escape that
# was encoded twice (%252e → %2e) for a dot, slash or backslash.
_TRAVERSAL = re.compile(r"(?:^|/)\.{1,2}(?:/|$)|\\|\x00|%(?:2e|2f|5c|00)", re.IGNORECASE)


def reject_traversal(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """Answer 400 to any request whose path tries to leave its folder (``..``, encoded or not),
    before a URL pattern or a view sees it. Path parameters are validated again in the views."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if _TRAVERSAL.search(request.path):
            return HttpResponseBadRequest("path traversal is not allowed", content_type="text/plain")
        return get_response(request)

    return middleware


DEFAULT_MAX_QUERY_BYTES = 8192
"""``[web] max_query_bytes`` where the service's options are not applied (tests)."""


def limit_request_size(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """Refuse, before anything reads them, a body larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE``
    (``[web] max_body_bytes``: 413) and a query string longer than ``EMLIVE_MAX_QUERY_BYTES``
    (``[web] max_query_bytes``: 414), as JSON; and answer ninja's bare 405 in JSON. The
    limits are read once; each request costs two header lookups and a comparison."""
    from django.conf import settings

    from emlive.web.errors import is_api_path, json_error, method_not_allowed

    max_body = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    max_query = getattr(settings, "EMLIVE_MAX_QUERY_BYTES", DEFAULT_MAX_QUERY_BYTES)

    def middleware(request: HttpRequest) -> HttpResponse:
        length = request.META.get("CONTENT_LENGTH")
        if length and max_body is not None:
            try:
                too_big = int(length) > max_body
            except ValueError:
                return json_error(400, f"bad Content-Length header {length[:40]!r}")
            if too_big:
                return json_error(413, f"request body of {length} bytes is larger than the {max_body} allowed "
                                       "([web] max_body_bytes)")
        query = request.META.get("QUERY_STRING", "")
        if len(query) > max_query:
            return json_error(414, f"query string of {len(query)} bytes is longer than the {max_query} allowed "
                                   "([web] max_query_bytes)")
        response = get_response(request)
        if response.status_code == 405 and is_api_path(request.path) and response.get("Content-Type", "").startswith("text/"):
            return method_not_allowed(request, response.get("Allow", ""))
        return response

    return middleware


def limit_body(app: Any) -> Any:
    """ASGI wrapper: refuse a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` with 413 without reading
    it. Django's ASGI handler reads (and spools to disk) the whole body before any middleware
    runs, so a client announcing a large Content-Length is answered here at once, and one
    sending chunks without a length is answered once it passes the limit (the rest is never
    read). :func:`limit_request_size` answers the same under WSGI and in tests."""
    import json

    from django.conf import settings

    async def refuse(send: Any, max_body: int) -> None:
        body = json.dumps(
            {"detail": f"request body larger than the {max_body} bytes allowed ([web] max_body_bytes)"}
        ).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        max_body = settings.DATA_UPLOAD_MAX_MEMORY_SIZE if scope["type"] == "http" else None
        if max_body is None:
            await app(scope, receive, send)
            return
        length = next((value for name, value in scope.get("headers", ()) if name == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > max_body:
                await refuse(send, max_body)
                return
            await app(scope, receive, send)  # a bad length: Django's middleware answers 400
            return
        seen = 0
        exceeded = started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_body:
                    exceeded = True
                    return {"type": "http.disconnect"}  # Django stops reading and answers nothing
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        await app(scope, counted_receive, watched_send)
        if exceeded and not started:
            await refuse(send, max_body)

    return application
