"""Django management commands for the data plane, without a settings module.

    python -m emlive.db [--database-url URL] COMMAND [ARGS...]

Examples: ``python -m emlive.db makemigrations emlive`` (after changing models.py; the
default database is an in-memory SQLite, so nothing on disk is touched),
``python -m emlive.db --database-url postgres://… showmigrations emlive``.
"""

from __future__ import annotations

import sys

from emlive.db.setup import configure_django


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    url = "sqlite://:memory:"
    if args[:1] == ["--database-url"]:
        if len(args) < 2:
            raise SystemExit("--database-url needs a URL")
        url, args = args[1], args[2:]
    configure_django(url)
    from django.core.management import execute_from_command_line

    execute_from_command_line(["python -m emlive.db", *args])


if __name__ == "__main__":
    main()
