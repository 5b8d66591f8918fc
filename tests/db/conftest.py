"""Data-plane fixtures: every test that takes ``db`` runs on SQLite, PostgreSQL and MariaDB/MySQL.

Django is configured programmatically (no pytest-django): the first database used calls
``setup_database``; later ones ``switch_database`` (the test-only re-pointing of the default
connection). SQLite lives in the session's tmp folder. PostgreSQL is reached at
``EMLIVE_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``); the run
creates a database of its own there (dropped at the end) so parallel runs never share tables.
MariaDB (or MySQL) likewise at ``EMLIVE_TEST_MYSQL_URL`` (default
``mysql://root@127.0.0.1:3306/test``), through PyMySQL. An unreachable server skips its tests
with the reason, or fails them when ``EMLIVE_REQUIRE_SERVICES=1``. Every test starts from empty
emlive tables.

Modules that use Django models are imported only after Django is configured, so tests reach
them through the ``db`` fixture (``db.store``, ``db.queries``, ``db.export``, ``db.models``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pymysql
import pytest
from psycopg import sql

from emlive.acquisition import Acquisition
from emlive.ctf.types import CtfResult
from emlive.db.setup import current_database_url, redact_url, setup_database, sqlite_url, switch_database
from emlive.motion.types import MotionResult

POSTGRES_URL = os.environ.get("EMLIVE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("EMLIVE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REQUIRE_SERVICES = os.environ.get("EMLIVE_REQUIRE_SERVICES") == "1"


def activate(url: str) -> None:
    """Point this process's Django at ``url`` (configuring Django the first time)."""
    if current_database_url() is None:
        setup_database(url)
    else:
        switch_database(url)


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return sqlite_url(tmp_path_factory.mktemp("db") / "emlive.sqlite3")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def postgres_database_url() -> Iterator[str]:
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        _unreachable(f"PostgreSQL unreachable at {redact_url(POSTGRES_URL)} (set EMLIVE_TEST_POSTGRES_URL): {exc}".strip())
    name = f"emlive_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        try:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege:
            name = ""  # no CREATEDB: use the given database; tables are emptied per test anyway
    try:
        yield _with_database(POSTGRES_URL, name) if name else POSTGRES_URL
    finally:
        if name:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _unreachable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}; EMLIVE_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


def _mysql_admin(url: str) -> pymysql.connections.Connection:
    from emlive.db.setup import database_settings

    db = database_settings(url)
    return pymysql.connect(
        host=db["HOST"] or "localhost", port=int(db["PORT"] or 3306), user=db["USER"], password=db["PASSWORD"],
        charset="utf8mb4", autocommit=True, connect_timeout=5,
    )


@pytest.fixture(scope="session")
def mysql_database_url() -> Iterator[str]:
    try:
        admin = _mysql_admin(MYSQL_URL)
    except (pymysql.Error, ValueError) as exc:
        _unreachable(f"MariaDB/MySQL unreachable at {redact_url(MYSQL_URL)} (set EMLIVE_TEST_MYSQL_URL): {exc}".strip())
    name = f"emlive_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin, admin.cursor() as cursor:
        try:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        except pymysql.err.OperationalError as exc:
            if exc.args[0] not in (1044, 1227):  # access denied: use the given database
                raise
            name = ""
    try:
        yield _with_database(MYSQL_URL, name) if name else MYSQL_URL
    finally:
        if name:
            from django.db import connections

            connections.close_all()
            with _mysql_admin(MYSQL_URL) as admin, admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(
    scope="session",
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_database_url"))


@dataclass(frozen=True)
class DataPlane:
    url: str
    vendor: str
    models: ModuleType
    store: ModuleType
    queries: ModuleType
    export: ModuleType


@pytest.fixture
def db(database_url: str) -> Iterator[DataPlane]:
    """The data plane on a clean database (SQLite, PostgreSQL or MariaDB/MySQL)."""
    activate(database_url)
    from django.db import connection

    from emlive.db import export, models, queries, store

    models.Project.objects.all().delete()  # cascades to sessions, exposures and results
    yield DataPlane(database_url, connection.vendor, models, store, queries, export)


@pytest.fixture
def acquisition() -> Acquisition:
    return Acquisition(pixel_size_a=1.05, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07, dose_per_frame_e_a2=1.2)


ResultsFactory = Callable[..., tuple[MotionResult, CtfResult]]


@pytest.fixture
def make_results(tmp_path: Path) -> ResultsFactory:
    """Results of one exposure whose output files exist on disk (empty placeholders)."""

    def make(
        stem: str,
        *,
        total_drift_a: float = 12.5,
        defocus_u_a: float = 15000.0,
        defocus_v_a: float = 14000.0,
        phase_shift_rad: float = 0.0,
        pixel_size_a: float = 1.05,
        fit_ok: bool = True,
        ice_ring_ratio: float | None = 1.02,
    ) -> tuple[MotionResult, CtfResult]:
        motion_dir, ctf_dir = tmp_path / "out" / "motion", tmp_path / "out" / "ctf"
        motion_dir.mkdir(parents=True, exist_ok=True)
        ctf_dir.mkdir(parents=True, exist_ok=True)
        files = {
            "mic": motion_dir / f"{stem}.mrc",
            "dw": motion_dir / f"{stem}_DW.mrc",
            "star": motion_dir / f"{stem}.star",
            "txt": ctf_dir / f"{stem}.txt",
            "avrot": ctf_dir / f"{stem}_avrot.txt",
            "png": ctf_dir / f"{stem}.png",
        }
        for path in files.values():
            path.write_bytes(b"")
        motion = MotionResult(
            shifts_px=[(0.0, 0.0), (-1.25, 0.5), (-2.5, 1.0)],
            total_drift_a=total_drift_a,
            early_drift_a=total_drift_a / 4,
            late_drift_a=total_drift_a * 3 / 4,
            micrograph_path=files["mic"],
            dose_weighted_path=files["dw"],
            star_path=files["star"],
            pixel_size_a=pixel_size_a,
            n_frames=3,
        )
        ctf = CtfResult(
            defocus_u_a=defocus_u_a,
            defocus_v_a=defocus_v_a,
            azimuth_deg=33.0,
            phase_shift_rad=phase_shift_rad,
            cross_correlation=0.21,
            fit_resolution_a=4.2,
            fit_ok=fit_ok,
            ice_ring_ratio=ice_ring_ratio,
            output_txt_path=files["txt"],
            avrot_path=files["avrot"],
            diagnostic_png_path=files["png"],
        )
        return motion, ctf

    return make


ENGINES = {
    "motion_engine": "native",
    "motion_engine_version": "test-1",
    "ctf_engine": "native",
    "ctf_engine_version": "test-1",
}


@pytest.fixture
def engines() -> dict[str, str]:
    """Engine names and versions for ``store_result``."""
    return dict(ENGINES)


@pytest.fixture
def store_processed(db: DataPlane, make_results: ResultsFactory) -> Callable[..., object]:
    """Store results for an exposure (by id) as the controller would; returns the exposure."""

    def store(exposure_id: int, stem: str, **result_options: float | bool | None) -> object:
        motion, ctf = make_results(stem, **result_options)
        return db.store.store_result(exposure_id, motion, ctf, **ENGINES)

    return store


@pytest.fixture
def assert_num_queries(db: DataPlane) -> Callable[[int], AbstractContextManager[object]]:
    """``with assert_num_queries(n): ...`` fails unless the block ran exactly n SQL queries."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    @contextmanager
    def check(expected: int) -> Iterator[object]:
        with CaptureQueriesContext(connection) as captured:
            yield captured
        queries = [q["sql"] for q in captured.captured_queries]
        assert len(queries) == expected, f"expected {expected} queries, ran {len(queries)}: {queries}"

    return check
