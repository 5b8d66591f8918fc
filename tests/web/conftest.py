"""Web tests use the data-plane fixtures (``db`` on SQLite, PostgreSQL and MariaDB, ``acquisition``,
``store_processed`` …) of tests/db/conftest.py."""

from tests.db.conftest import (  # noqa: F401  (fixtures are found by name)
    acquisition,
    assert_num_queries,
    database_url,
    db,
    engines,
    make_results,
    mysql_database_url,
    postgres_database_url,
    sqlite_database_url,
    store_processed,
)
