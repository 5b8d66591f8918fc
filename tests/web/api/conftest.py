"""API test fixtures: a facility data root, users with tokens, and Django's test client.

Behaviour tests use ``web`` (SQLite); the security tests use ``web_any``, which also runs
them on PostgreSQL and MariaDB (skipped where unreachable, a failure with EMLIVE_REQUIRE_SERVICES=1).
Requests go through the whole Django stack (URLs, middleware, both APIs).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.db.conftest import DataPlane, activate


@dataclass
class Facility:
    """A data root ``<root>/<project>/sessions/<user>/<session>/raw/`` and who may see what:
    ann is a member of p1, bob of p2, staff of nothing (but is staff)."""

    root: Path
    tokens: dict[str, str]
    users: dict[str, object]

    def session(self, project: str = "p1", user: str = "ann", name: str = "grid1", movies: tuple[str, ...] = ("m0.tif",)) -> Path:
        raw = self.root / project / "sessions" / user / name / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for movie in movies:
            (raw / movie).write_bytes(b"x")
        return raw

    def auth(self, user: str = "ann") -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.tokens[user]}"}


def _clean(db: DataPlane) -> None:
    from django.contrib.auth.models import User
    from django.contrib.sessions.models import Session as LoginSession

    db.models.Project.objects.all().delete()
    User.objects.all().delete()  # cascades to tokens and memberships
    LoginSession.objects.all().delete()


def _facility(tmp_path: Path) -> Iterator[Facility]:
    """The facility, with the status cache off (tests change exposures and read the status
    at once; test_api.py checks the cache itself)."""
    from emlive.web import api
    from emlive.web.access import add_user, create_token
    from emlive.web.api import set_data_root

    root = tmp_path / "facility"
    root.mkdir()
    users = {
        "ann": add_user("ann", projects=("p1",), password="ann-secret-pw"),
        "bob": add_user("bob", projects=("p2",)),
        "staff": add_user("staff", staff=True),
    }
    tokens = {name: create_token(user) for name, user in users.items()}
    set_data_root(root)
    ttl_s, api.STATUS_TTL_S = api.STATUS_TTL_S, 0.0
    api._statuses.clear()
    try:
        yield Facility(root, tokens, users)
    finally:
        set_data_root(None)
        api.STATUS_TTL_S = ttl_s


@pytest.fixture
def web(sqlite_database_url: str, tmp_path: Path) -> Iterator[Facility]:
    """A facility on SQLite."""
    activate(sqlite_database_url)
    from emlive.db import export, models, queries, store

    _clean(DataPlane(sqlite_database_url, "sqlite", models, store, queries, export))
    yield from _facility(tmp_path)


@pytest.fixture
def web_any(db: DataPlane, tmp_path: Path) -> Iterator[Facility]:
    """A facility on SQLite, PostgreSQL and MariaDB/MySQL."""
    _clean(db)
    yield from _facility(tmp_path)


@pytest.fixture
def client():
    from django.test import Client

    return Client()


@pytest.fixture
def store() -> ModuleType:
    from emlive.db import store

    return store
