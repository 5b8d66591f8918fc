"""Migration operations whose database side depends on the database (the loader skips this
module: its name starts with ``_``)."""

from __future__ import annotations

from typing import Any

from django.db.migrations.operations.base import Operation


class NotOnMySQL(Operation):
    """``operation`` in the migration state on every database, but carried out in the database
    everywhere except MySQL/MariaDB.

    Used for the unique indexes on long paths that emlive had before the digest columns
    (migration 0006): MySQL cannot index 1024 utf8mb4 characters (3072 bytes at most), so there
    they are never created, and so never dropped.
    """

    def __init__(self, operation: Operation) -> None:
        self.operation = operation

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return self.__class__.__qualname__, [self.operation], {}

    @property
    def reversible(self) -> bool:  # type: ignore[override]
        return self.operation.reversible

    def state_forwards(self, app_label: str, state: Any) -> None:
        self.operation.state_forwards(app_label, state)

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor != "mysql":
            self.operation.database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor != "mysql":
            self.operation.database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        return f"{self.operation.describe()} (not on MySQL/MariaDB)"
