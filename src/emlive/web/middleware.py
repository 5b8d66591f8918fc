"""Middleware of the web side."""

from __future__ import annotations

import re
from collections.abc import Callable

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
