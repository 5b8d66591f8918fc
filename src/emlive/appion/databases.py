"""Finding the databases as classic Appion does: ``sinedon.cfg`` (``[global]`` host, user,
passwd; ``[leginondata]`` and ``[projectdata]`` db), else emlive's ``[leginon]`` settings; a
project's Appion database from the project database's ``processingdb`` table."""

from __future__ import annotations

import configparser
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from emlive.config import LeginonSettings
from emlive.sources.leginon import (
    DatabaseServer,
    LeginonSession,
    appion_database,
    find_session,
    project_of_session,
)


def sinedon_cfg_paths(cwd: Path | None = None, home: Path | None = None) -> list[Path]:
    """Where ``sinedon.cfg`` is looked for, lowest priority first: the system's, the home
    folder's, the current folder's (``SINEDON_CFG`` names one more, highest)."""
    paths = [Path("/etc/myami/sinedon.cfg"), (home or Path.home()) / "sinedon.cfg", (cwd or Path.cwd()) / "sinedon.cfg"]
    if os.environ.get("SINEDON_CFG"):
        paths.append(Path(os.environ["SINEDON_CFG"]))
    return paths


@dataclass(frozen=True)
class Databases:
    server: DatabaseServer
    leginon_db: str
    project_db: str
    source: str  # where they were configured, for messages


def read_sinedon_cfg(paths: Sequence[Path]) -> Databases | None:
    """The databases named by the ``sinedon.cfg`` files that exist (later ones win), or None."""
    parser = configparser.ConfigParser(interpolation=None)
    found = parser.read([str(path) for path in paths if path.is_file()])
    if not found:
        return None

    def value(section: str, key: str, default: str) -> str:
        return parser.get(section, key, fallback=None) or parser.get("global", key, fallback=None) or default

    try:
        port = int(value("global", "port", "3306"))
    except ValueError as err:
        raise ValueError(f"{', '.join(found)}: [global] port is not a number ({err})") from None
    server = DatabaseServer(host=value("global", "host", "localhost"), user=value("global", "user", "root"),
                            password=value("global", "passwd", ""), port=port)
    return Databases(server, value("leginondata", "db", "leginondb"), value("projectdata", "db", "projectdb"),
                     " and ".join(found))


def find_databases(settings: LeginonSettings, *, paths: Sequence[Path] | None = None) -> Databases:
    """``sinedon.cfg`` when one exists, else emlive's ``[leginon]`` settings; a clear error if neither."""
    cfg = read_sinedon_cfg(sinedon_cfg_paths() if paths is None else paths)
    if cfg is not None:
        return cfg
    if settings.host is None:
        where = ", ".join(str(path) for path in (sinedon_cfg_paths() if paths is None else paths))
        raise ValueError(f"no sinedon.cfg found ({where}) and no [leginon] host in emlive's configuration: "
                         "put the facility's sinedon.cfg in the home or current folder, or set [leginon] host, "
                         "user, password, leginon_db, project_db in emlive.toml")
    server = DatabaseServer(host=settings.host, user=settings.user, password=settings.password, port=settings.port)
    return Databases(server, settings.leginon_db, settings.project_db, "emlive's [leginon] settings")


@dataclass
class Connections:
    """A run's open databases and its session."""

    server: DatabaseServer
    names: dict[str, str]  # "leginon", "project", "appion" → database name
    session: LeginonSession
    project_id: int
    opened: dict[str, Any] = field(default_factory=dict)

    def _conn(self, kind: str) -> Any:
        if kind not in self.opened:
            self.opened[kind] = self.server.connect(self.names[kind])
        return self.opened[kind]

    @property
    def leginon(self) -> Any:
        return self._conn("leginon")

    @property
    def project(self) -> Any:
        return self._conn("project")

    @property
    def appion(self) -> Any:
        return self._conn("appion")

    def reconnect_if_lost(self) -> None:
        """Open again a connection the server dropped (a command following a session for hours
        outlives MySQL's ``wait_timeout``, and the server may restart)."""
        for kind, conn in list(self.opened.items()):
            try:
                conn.ping(reconnect=False)
            except pymysql.Error:
                del self.opened[kind]
                self._conn(kind)

    def close(self) -> None:
        for conn in self.opened.values():
            with contextlib.suppress(pymysql.Error):
                conn.close()
        self.opened.clear()


def connect(settings: LeginonSettings, *, session_name: str | None, session_id: int | None,
            project_id: int | None) -> Connections:
    """Open Leginon's, the project's and the project's Appion database, and find the session
    (by name or id) and its project (``--projectid``, else the session's in projectexperiments)."""
    dbs = find_databases(settings)
    leginon = dbs.server.connect(dbs.leginon_db)
    project = dbs.server.connect(dbs.project_db)
    session = find_session(leginon, session_name, session_id=session_id)
    if project_id is None:
        project_id = project_of_session(project, session)
        if project_id is None:
            raise ValueError(f"session {session.name} belongs to no project in {dbs.project_db}: give --projectid")
    names = {"leginon": dbs.leginon_db, "project": dbs.project_db, "appion": appion_database(project, project_id)}
    return Connections(dbs.server, names, session, project_id, {"leginon": leginon, "project": project})
