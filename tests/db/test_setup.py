"""Configuring Django from a URL: once per process, clear errors, SQLite tuned for one writer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emlive.db.setup import current_database_url, database_settings, setup_database, sqlite_url, switch_database


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "empty"),
        ("/data/emlive.sqlite3", "not a URL"),
        ("redis://localhost/0", "unsupported scheme 'redis'"),
        ("oracle://u:secret@h/db", "unsupported scheme 'oracle'"),
        ("postgres://u@h:notaport/db", "database URL"),
        ("postgres://u@h", "no database name"),
    ],
)
def test_bad_url_names_it_and_the_supported_forms(url, problem):
    with pytest.raises(ValueError, match=problem) as caught:
        setup_database(url)
    message = str(caught.value)
    assert "sqlite:///" in message and "postgres://" in message and "mysql://" in message
    assert "secret" not in message  # passwords are redacted


def test_sqlite_url_round_trips_odd_paths(tmp_path):
    path = tmp_path / "a b" / "c#d?e%f.sqlite3"
    url = sqlite_url(path)
    assert database_settings(url)["NAME"] == str(path)


def test_sqlite_gets_wal_immediate_transactions_and_a_busy_timeout(tmp_path):
    options = database_settings(sqlite_url(tmp_path / "x.sqlite3"))["OPTIONS"]
    assert options["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in options["init_command"]
    assert options["timeout"] >= 5
    assert database_settings(sqlite_url(tmp_path / "x.sqlite3") + "?timeout=60")["OPTIONS"]["timeout"] == 60


def test_postgres_url_uses_the_postgresql_backend():
    db = database_settings("postgres://emlive:pw@db.example:5433/emlive")
    assert (db["ENGINE"], db["HOST"], db["PORT"], db["NAME"]) == ("django.db.backends.postgresql", "db.example", 5433, "emlive")


@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
def test_mysql_url_is_utf8mb4_strict_read_committed_and_health_checked(scheme):
    db = database_settings(f"{scheme}://emlive:pw@db.example:3307/emlive")
    assert (db["ENGINE"], db["HOST"], db["PORT"], db["NAME"]) == ("django.db.backends.mysql", "db.example", 3307, "emlive")
    options = db["OPTIONS"]
    assert options["charset"] == "utf8mb4"
    assert "STRICT_TRANS_TABLES" in options["init_command"]
    assert options["isolation_level"] == "read committed"
    assert db["CONN_HEALTH_CHECKS"] is True
    assert database_settings(f"{scheme}://u@h/n?charset=utf8mb3")["OPTIONS"]["charset"] == "utf8mb3"  # the URL wins


@pytest.mark.mysql
def test_mysql_connection_is_strict_utf8mb4_and_read_committed(mysql_database_url):
    (setup_database if current_database_url() is None else switch_database)(mysql_database_url)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT @@SESSION.sql_mode, @@SESSION.character_set_connection")
        sql_mode, charset = cursor.fetchone()
        assert "STRICT_TRANS_TABLES" in sql_mode.split(",") and charset == "utf8mb4"
        cursor.execute("SELECT @@SESSION.tx_isolation" if connection.mysql_is_mariadb else "SELECT @@SESSION.transaction_isolation")
        assert cursor.fetchone()[0] == "READ-COMMITTED"


def test_setup_twice_is_a_no_op_and_another_database_is_an_error(db, tmp_path):
    setup_database(db.url)  # already configured for it: nothing happens
    with pytest.raises(RuntimeError, match="already uses the database"):
        setup_database(sqlite_url(tmp_path / "other.sqlite3"))
    assert not (tmp_path / "other.sqlite3").exists()


def test_sqlite_connection_runs_in_wal_mode(sqlite_database_url):
    (setup_database if current_database_url() is None else switch_database)(sqlite_database_url)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone()[0] == 1  # NORMAL
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] >= 5000  # ms


def test_migrations_match_the_models_and_models_need_setup():
    """In a fresh interpreter: importing models before setup is a clear error, and
    ``python -m emlive.db makemigrations --check`` finds nothing to generate."""
    guard = subprocess.run(
        [sys.executable, "-c", "import emlive.db.store"], capture_output=True, text=True, timeout=120
    )
    assert guard.returncode != 0
    assert "call emlive.db.setup.setup_database(url) before importing" in guard.stderr

    check = subprocess.run(
        [sys.executable, "-m", "emlive.db", "makemigrations", "emlive", "--check", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No changes detected" in check.stdout
