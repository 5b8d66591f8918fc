"""The dashboard's login, throttled: after ``[web] login_attempts_per_minute`` failed attempts
for one user name from one client address, further attempts answer 429 with ``Retry-After``
until the minute that began with the first failure is over (the password is not even checked).

Counts live in Django's cache (the default: memory of this process; several ASGI worker
processes each count on their own). A successful login clears its count.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

from emlive.web.options import LOGIN_WINDOW_S


def _key(username: str, address: str) -> str:
    digest = hashlib.sha256(f"{username.strip().casefold()}\x00{address}".encode()).hexdigest()[:32]
    return f"emlive:login-failures:{digest}"


def wait_s(username: str, address: str, *, now_s: float | None = None) -> int:
    """Seconds before ``username`` may try again from ``address`` (0: now)."""
    key = _key(username, address)
    failures = cache.get_many([key, key + ":since"])
    if failures.get(key, 0) < settings.EMLIVE_LOGIN_ATTEMPTS_PER_MINUTE:
        return 0
    now_s = time.time() if now_s is None else now_s
    since_s = failures.get(key + ":since", now_s)
    return max(1, math.ceil(since_s + LOGIN_WINDOW_S - now_s))


def record_failure(username: str, address: str) -> None:
    """Count one failed login (the window starts at the first one)."""
    key = _key(username, address)
    cache.add(key + ":since", time.time(), LOGIN_WINDOW_S)
    cache.add(key, 0, LOGIN_WINDOW_S)
    try:
        cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, LOGIN_WINDOW_S)


def clear_failures(username: str, address: str) -> None:
    key = _key(username, address)
    cache.delete_many([key, key + ":since"])


class LoginView(auth_views.LoginView):
    template_name = "emlive/login.html"
    redirect_authenticated_user = True

    def _who(self) -> tuple[str, str]:
        request = self.request
        return str(request.POST.get("username", ""))[:200], str(request.META.get("REMOTE_ADDR", ""))

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        wait = wait_s(*self._who())
        if wait:
            form = self.get_form_class()(request)  # unbound: rendering a bound one would check the password
            context = self.get_context_data(form=form, throttled_s=wait)
            response = self.render_to_response(context, status=429)
            response["Retry-After"] = str(wait)
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        record_failure(*self._who())
        return super().form_invalid(form)

    def form_valid(self, form: Any) -> HttpResponse:
        clear_failures(*self._who())
        return super().form_valid(form)
