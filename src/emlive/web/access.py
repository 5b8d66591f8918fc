"""Who may see what: API tokens, users, per-project permissions and safe path names.

Tokens look like ``emlive_<key_id>_<secret>``; the database keeps only the SHA-256 of the
secret, found by ``key_id`` and compared with :func:`hmac.compare_digest` (constant time).
Staff users see every project; other users see the projects they are members of.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from emlive.db.models import ApiToken, Project, ProjectMember, Session

TOKEN_PREFIX = "emlive_"

NAME_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
"""Project, user and session names in URLs and folders: letters, digits, ``._-``; no ``..``."""

_NAME_RE = re.compile(NAME_PATTERN)
_TOKEN_RE = re.compile(rf"^{TOKEN_PREFIX}([A-Za-z0-9]{{16}})_([A-Za-z0-9_-]{{20,100}})$")

AnyUser = AbstractBaseUser | AnonymousUser

LAST_USED_RESOLUTION = timedelta(minutes=1)
"""A token's ``last_used_at`` is rewritten at most this often (polling scripts ask every second)."""


def valid_name(value: str) -> bool:
    """Whether ``value`` is a safe project/user/session name (one folder, never ``..``)."""
    return bool(_NAME_RE.match(value))


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(user: User) -> str:
    """A new token for ``user``; the only time its secret exists in clear."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, key_id=key_id, secret_sha256=_sha256(secret))
    return f"{TOKEN_PREFIX}{key_id}_{secret}"


def user_for_token(token: str) -> User | None:
    """The active user ``token`` belongs to, or None (malformed, unknown, revoked or inactive)."""
    match = _TOKEN_RE.match(token or "")
    if match is None:
        return None
    key_id, secret = match.groups()
    row = ApiToken.objects.select_related("user").filter(key_id=key_id).first()
    expected = row.secret_sha256 if row is not None else _sha256("")  # same work when unknown
    if not hmac.compare_digest(expected, _sha256(secret)) or row is None or not row.user.is_active:
        return None
    now = timezone.now()
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:  # no write per request
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user


def add_user(name: str, *, staff: bool = False, password: str | None = None, projects: tuple[str, ...] = ()) -> User:
    """Create user ``name`` (or update an existing one's staff flag, password and projects).

    Without a password the user can use tokens but not log in to the dashboard.
    """
    if not valid_name(name):
        raise ValueError(f"user name {name!r}: use letters, digits, '.', '_' or '-' (no '..')")
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=name)
        user.is_staff = staff
        if password is not None:
            user.set_password(password)
        elif created:
            user.set_unusable_password()
        user.save()
        for project_name in projects:
            if not valid_name(project_name):
                raise ValueError(f"project name {project_name!r}: use letters, digits, '.', '_' or '-'")
            project, _ = Project.objects.get_or_create(name=project_name)
            ProjectMember.objects.get_or_create(project=project, user=user)
    return user


def can_access_project(user: AnyUser, project_name: str) -> bool:
    """Staff: every project; others: projects they are members of."""
    if not user.is_authenticated:
        return False
    if user.is_staff:
        return True
    return ProjectMember.objects.filter(user_id=user.pk, project__name=project_name).exists()


def visible_sessions(user: AnyUser) -> QuerySet[Session]:
    """The sessions ``user`` may see, with their projects loaded."""
    qs = Session.objects.select_related("project")
    if not user.is_authenticated:
        return qs.none()
    if user.is_staff:
        return qs.all()
    return qs.filter(project__members__user_id=user.pk)
