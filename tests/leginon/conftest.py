"""A Leginon database, a project database and a project's Appion database on the local
MariaDB (``EMLIVE_TEST_MYSQL_URL``, default ``mysql://root@127.0.0.1:3306/test``), created per
test from the published table definitions (``schema.py``) under names of their own
(``emlt_leginondb_<pid>_<hex>``, …) and dropped afterwards; a missing server skips (CI: fails)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest

from emlive.sources.leginon import DatabaseServer
from tests.conftest import skip_or_fail
from tests.leginon.fake import FakeLeginon, insert
from tests.leginon.schema import APPION, LEGINON, PROJECT, create_statements

MYSQL_URL = os.environ.get("EMLIVE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
PROJECT_ID_NAME = "emlive test project"


def _server() -> DatabaseServer:
    from emlive.db.setup import database_settings

    db = database_settings(MYSQL_URL)
    return DatabaseServer(host=db["HOST"] or "localhost", port=int(db["PORT"] or 3306), user=db["USER"] or "root",
                          password=db["PASSWORD"] or "")


@dataclass
class LeginonDatabases:
    server: DatabaseServer
    leginon_db: str
    project_db: str
    appion_db: str
    project_id: int
    fake: FakeLeginon

    def sinedon_cfg(self, folder: Path) -> Path:
        """A ``sinedon.cfg`` as a facility's, naming these databases."""
        path = folder / "sinedon.cfg"
        path.write_text(
            f"[global]\nhost: {self.server.host}\nport: {self.server.port}\nuser: {self.server.user}\n"
            f"passwd: {self.server.password}\n\n[leginondata]\ndb: {self.leginon_db}\n\n"
            f"[projectdata]\ndb: {self.project_db}\n"
        )
        return path


@pytest.fixture
def leginon_dbs(tmp_path: Path) -> Iterator[LeginonDatabases]:
    server = _server()
    try:
        admin = pymysql.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                                autocommit=True, connect_timeout=5)
    except pymysql.Error as exc:
        skip_or_fail(f"MariaDB/MySQL unreachable at {server.host}:{server.port} (set EMLIVE_TEST_MYSQL_URL): {exc}")
    tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    names = {"leginon": f"emlt_leginondb_{tag}", "project": f"emlt_projectdb_{tag}", "appion": f"emlt_ap_{tag}"}
    connections: list[pymysql.connections.Connection] = []
    try:
        with admin.cursor() as cursor:
            for (kind, name), tables in zip(names.items(), (LEGINON, PROJECT, APPION), strict=True):
                cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
                cursor.execute(f"USE `{name}`")
                for statement in create_statements(tables):
                    cursor.execute(statement)
        connections = [server.connect(names[kind]) for kind in ("leginon", "project", "appion")]
        project_id = insert(connections[1], "projects", {"name": PROJECT_ID_NAME, "leginondb": names["leginon"]})
        insert(connections[1], "processingdb", {"REF|projects|project": project_id, "appiondb": names["appion"]})
        fake = FakeLeginon(*connections, root=tmp_path, project_id=project_id)
        fake.instruments()
        yield LeginonDatabases(server, names["leginon"], names["project"], names["appion"], project_id, fake)
    finally:
        for conn in connections:
            conn.close()
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()
