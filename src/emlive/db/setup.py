"""Configure Django for the data plane from one database URL, without a settings module.

One process serves one database: :func:`setup_database` configures Django the first time it is
called (settings, app registry, migrations) and is a no-op when called again with the same
database. A different database in the same process is an error, because Django's settings and
connections are process-global. Tests that need several databases in one process use
:func:`switch_database`, which re-points the default connection (see its docstring).

Supported URLs (parsed by ``dj-database-url``):

- ``sqlite:///ABSOLUTE/PATH.sqlite3`` (four slashes for an absolute path; :func:`sqlite_url`
  builds one from a path). Opened in WAL mode with ``synchronous=NORMAL``, ``BEGIN IMMEDIATE``
  transactions and a busy timeout, so the API can read while the controller writes.
- ``postgres://USER:PASSWORD@HOST:PORT/NAME`` (also ``postgresql://``), via psycopg 3 and a
  connection pool (psycopg_pool, 1–20 connections; ``?pool=`` in the URL cannot turn it off).
- ``mysql://USER:PASSWORD@HOST:PORT/NAME`` (also ``mariadb://``): MySQL 8.0.11+ or MariaDB
  10.5+, through mysqlclient where it is installed, else PyMySQL (pure Python, a dependency).
  Connections use utf8mb4, strict mode (``STRICT_TRANS_TABLES``: a value too long is an error,
  never cut) and READ COMMITTED, like PostgreSQL, so a ``select_for_update`` that finds no row
  takes no gap lock and a retry after an IntegrityError sees the row that won. Create the
  database with ``CHARACTER SET utf8mb4`` (the path columns compare byte-exact whatever its
  collation: see :class:`emlive.db.models.PathField`).

Query parameters of the URL become the backend's ``OPTIONS`` and win over the defaults here
(for example ``sqlite:////data/emlive.sqlite3?timeout=60``).
"""

from __future__ import annotations

import copy
import os
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import dj_database_url

__all__ = [
    "SUPPORTED_URLS",
    "configure_django",
    "current_database_url",
    "database_settings",
    "setup_database",
    "sqlite_url",
    "switch_database",
]

SUPPORTED_URLS = (
    "sqlite:///ABSOLUTE/PATH.sqlite3",
    "postgres://USER:PASSWORD@HOST:PORT/NAME",
    "mysql://USER:PASSWORD@HOST:PORT/NAME",
    "mariadb://USER:PASSWORD@HOST:PORT/NAME",
)

_ENGINES = {
    "sqlite": "django.db.backends.sqlite3",
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "pgsql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "mariadb": "django.db.backends.mysql",
}

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long an SQLite connection waits for another writer's lock before failing, seconds."""

_SQLITE_OPTIONS: dict[str, Any] = {
    # WAL lets readers (API, CLI) run while the controller writes; NORMAL is durable in WAL
    # mode except for the last transactions before a power loss (never corrupts the file).
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    # Take the write lock at BEGIN, so two writers queue on the busy timeout instead of
    # failing with "database is locked" when a read transaction tries to upgrade.
    "transaction_mode": "IMMEDIATE",
    "timeout": SQLITE_BUSY_TIMEOUT_S,
}

_POSTGRES_POOL: dict[str, Any] = {"min_size": 1, "max_size": 20, "timeout": 30.0}
"""psycopg_pool options: connections kept open, most at once, seconds to wait for one."""

_MYSQL_OPTIONS: dict[str, Any] = {
    # Four bytes a character: paths and names may hold any Unicode (MySQL's "utf8" cannot).
    "charset": "utf8mb4",
    # Strict: a too-long or invalid value is an error as on PostgreSQL, not cut with a warning;
    # never a silent fallback to a storage engine without transactions.
    "init_command": "SET sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'",
    # PostgreSQL's default: no gap locks under select_for_update, each statement sees what
    # other transactions committed (the store's "created meanwhile" retries rely on it).
    "isolation_level": "read committed",
    "connect_timeout": 10,
}

_lock = threading.RLock()
_active_url: str | None = None
_active_db: dict[str, Any] | None = None
_migrated = False


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The database URL of the SQLite file ``path`` (made absolute; odd characters quoted)."""
    return "sqlite:///" + quote(str(Path(path).absolute()))


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url


def _bad_url(url: str, problem: str) -> ValueError:
    return ValueError(
        f"database URL {redact_url(url)!r}: {problem.rstrip('.')}. Supported: {', '.join(SUPPORTED_URLS)}"
    )


def database_settings(url: str) -> dict[str, Any]:
    """Django's ``DATABASES["default"]`` for ``url`` (pure apart from resolving a relative
    SQLite path against the current folder).

    Raises ValueError naming the URL and the supported forms when the URL cannot be used.
    """
    if not isinstance(url, str) or not url.strip():
        raise _bad_url(str(url), "empty")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _ENGINES:
        problem = f"unsupported scheme {scheme!r}" if scheme else "not a URL (no scheme://)"
        raise _bad_url(url, problem)
    # dj-database-url knows MariaDB as mysql
    parsed = "mysql" + url[len(scheme):] if scheme == "mariadb" else url
    try:
        db: dict[str, Any] = dict(dj_database_url.parse(parsed))
    except ValueError as exc:  # dj-database-url's ParseError/UnknownSchemeError are ValueErrors
        raise _bad_url(url, str(exc) or "cannot be parsed") from exc
    if db["ENGINE"] != _ENGINES[scheme]:
        raise _bad_url(url, f"scheme {scheme!r} maps to {db['ENGINE']}")
    options = dict(db.get("OPTIONS", {}))
    if db["ENGINE"] == _ENGINES["sqlite"]:
        name = str(db.get("NAME") or ":memory:")
        if name != ":memory:":
            name = str(Path(name).absolute())
        db["NAME"] = name
        options = {**_SQLITE_OPTIONS, **options}
    else:
        if not db.get("NAME"):
            raise _bad_url(url, "no database name after the host")
    if db["ENGINE"] == _ENGINES["mysql"]:
        options = {**_MYSQL_OPTIONS, **options}
    # Connections are checked before reuse, so close_old_connections reconnects a long-running
    # controller after a database restart. PostgreSQL: a pool (psycopg_pool), since the service
    # answers each request in a thread of its own and a new server process per request costs
    # more than the request; others keep one persistent connection per thread.
    if db["ENGINE"] == _ENGINES["postgres"]:
        options.setdefault("pool", dict(_POSTGRES_POOL))
        db["CONN_MAX_AGE"] = 0 if options["pool"] else None
    else:
        db["CONN_MAX_AGE"] = None
    db["OPTIONS"] = options
    db["CONN_HEALTH_CHECKS"] = True
    return db


def _django_settings(db: dict[str, Any], secret_key: str) -> dict[str, Any]:
    """The whole of Django's settings: the data plane, plus auth, sessions and the web app
    (``emlive.web``: API, dashboard), so every emlive process sees the same apps and tables."""
    return {
        "INSTALLED_APPS": [
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "emlive.db",
            "emlive.web",
        ],
        # Django fills defaults into the dict it is given: keep ours pristine for comparisons.
        "DATABASES": {"default": copy.deepcopy(db)},
        "USE_TZ": True,
        "TIME_ZONE": "UTC",
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        # DEBUG keeps every query in memory: never in a long-running controller.
        "DEBUG": False,
        # Logging is configured by the CLI only; Django must not install its own handlers.
        "LOGGING_CONFIG": None,
        "SECRET_KEY": secret_key,
        "ROOT_URLCONF": "emlive.web.urls",
        "ALLOWED_HOSTS": ["*"],
        "MIDDLEWARE": [
            "emlive.web.middleware.limit_request_size",
            "emlive.web.middleware.reject_traversal",
            "django.middleware.security.SecurityMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.middleware.clickjacking.XFrameOptionsMiddleware",
        ],
        "TEMPLATES": [
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                    ]
                },
            }
        ],
        "LOGIN_URL": "/login/",
        "LOGIN_REDIRECT_URL": "/dashboard/",
        "LOGOUT_REDIRECT_URL": "/login/",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "CSRF_COOKIE_SAMESITE": "Lax",
    }


def _prepare_storage(db: dict[str, Any]) -> None:
    if db["ENGINE"] == _ENGINES["sqlite"] and db["NAME"] != ":memory:":
        Path(db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    if db["ENGINE"] == _ENGINES["mysql"]:
        _mysql_driver()


def _mysql_driver() -> None:
    """Django's MySQL backend imports ``MySQLdb``: mysqlclient's where it is installed (a C
    extension, built against the MySQL client library), else PyMySQL standing in for it."""
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        import pymysql

        pymysql.install_as_MySQLdb()


def current_database_url() -> str | None:
    """The URL this process is configured for, or None before :func:`setup_database`."""
    return _active_url


def configure_django(url: str, *, secret_key: str | None = None) -> None:
    """Configure Django's settings and app registry for ``url`` without touching the database.

    :func:`setup_database` is this plus migrations; use this one for management commands that
    must not migrate (``python -m emlive.db makemigrations``). ``secret_key`` signs the
    dashboard's login cookies (``emlive serve`` passes a persistent one); default: a random key
    for this process only.
    """
    global _active_url, _active_db
    db = database_settings(url)
    with _lock:
        if _active_db is not None:
            if db == _active_db:
                return
            raise RuntimeError(
                f"this process already uses the database {redact_url(_active_url or '')!r} and "
                f"cannot also use {redact_url(url)!r}: Django's settings are process-wide. "
                "Run one emlive process per database (tests: emlive.db.setup.switch_database)."
            )
        import django
        from django.conf import settings

        if settings.configured:
            raise RuntimeError(
                "Django settings were configured outside emlive.db.setup; emlive configures "
                "Django itself from a database URL (call setup_database(url) instead)"
            )
        _prepare_storage(db)
        settings.configure(**_django_settings(db, secret_key or secrets.token_urlsafe(50)))
        django.setup()
        _active_url, _active_db = url, db


def _migrate(url: str) -> None:
    from django.core.management import call_command

    try:
        call_command("migrate", verbosity=0, interactive=False)
    except Exception as exc:
        exc.add_note(f"while applying emlive's migrations to {redact_url(url)!r}")
        raise


def setup_database(url: str, *, secret_key: str | None = None) -> None:
    """Configure Django for the database at ``url`` and apply emlive's migrations.

    Called once per process (the CLI and the service call it at start). Calling it again with
    the same database does nothing; with another database it raises RuntimeError. A URL that
    cannot be used raises ValueError naming it and the supported forms (see module doc).
    """
    global _migrated
    with _lock:
        configure_django(url, secret_key=secret_key)
        if not _migrated:
            _migrate(url)
            _migrated = True


def switch_database(url: str) -> None:
    """Re-point this process's default database to ``url`` and migrate it. **Tests only.**

    Closes this thread's connections, replaces ``settings.DATABASES["default"]``, drops every
    thread's connection objects (threads still holding an open connection must close it
    themselves: ``django.db.connections.close_all()``), clears the content-type cache and
    applies the migrations. Not safe while other threads use the database. In a process not
    yet configured it is :func:`setup_database`.
    """
    global _active_url, _active_db, _migrated
    db = database_settings(url)
    with _lock:
        if _active_db is None:
            setup_database(url)
            return
        if db == _active_db:
            if not _migrated:
                _migrate(url)
                _migrated = True
            return
        from asgiref.local import Local
        from django.conf import settings
        from django.contrib.contenttypes.models import ContentType
        from django.db import connections

        connections.close_all()
        if hasattr(connections["default"], "close_pool"):  # PostgreSQL pools are per alias
            connections["default"].close_pool()
        _prepare_storage(db)
        settings.DATABASES = {"default": copy.deepcopy(db)}
        # ConnectionHandler caches the settings it read and the per-thread connections.
        connections._settings = None
        connections.__dict__.pop("settings", None)
        connections._connections = Local(connections.thread_critical)
        ContentType.objects.clear_cache()
        _active_url, _active_db, _migrated = url, db, False
        _migrate(url)
        _migrated = True
