"""A session's results as pandas tables, read from the database (the truth).

- :func:`micrograph_table`: one row per *accepted* micrograph (processed, meeting the
  session's curation thresholds, as the exports), ordered by path: ``exposure`` (the movie's
  path under raw/), ``movie_size_bytes``, ``movie_mtime_ns``, then for every step that ran, in
  the session's step order, ``<step>.engine``, ``<step>.engine_version`` and each field of its
  result that is a number, a flag, a text or a file (``<step>.<field>``; files as absolute paths).
  Lists (per-frame shifts, polynomial coefficients) stay in the database and the sidecars.
  This is the dataset manifest's row before paths are made relative and files hashed.
- :func:`exposure_table`: every exposure, whatever its state, with why it failed.
- :func:`step_table`: every step result (long form): state, engine and version, error, when.

Django must be set up (:func:`emlive.db.setup.setup_database`) before these are called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pandas as pd

from emlive.pipeline.registry import registry
from emlive.pipeline.step import path_fields

if TYPE_CHECKING:
    from emlive.db.models import Session

__all__ = ["exposure_table", "micrograph_table", "output_columns", "step_table"]

_SCALARS = (int, float, bool, str)


def _step_order(names: Iterable[str]) -> list[str]:
    """Steps in the order the session's pipeline runs them (motion, ctf, … then the rest by name)."""
    first = ["motion", "ctf", "thumbnail", "pick"]
    found = set(names)
    return [name for name in first if name in found] + sorted(found - set(first))


def output_columns(table: pd.DataFrame) -> list[str]:
    """The columns of :func:`micrograph_table` that name files (``<step>.<Path field>``)."""
    installed = registry().steps
    columns = []
    for column in table.columns:
        step, _, field = column.partition(".")
        if step in installed and field in path_fields(installed[step].result):
            columns.append(column)
    return columns


def micrograph_table(session: Session | int) -> pd.DataFrame:
    """The accepted micrographs with every step's results (see the module doc)."""
    from emlive.db.models import StepResult
    from emlive.db.queries import accepted_exposures

    accepted = accepted_exposures(session)
    rows: dict[int, dict[str, Any]] = {
        pk: {"exposure": path, "movie_size_bytes": size, "movie_mtime_ns": mtime}
        for pk, path, size, mtime in accepted.values_list("id", "path", "size_bytes", "mtime_ns").iterator(2000)
    }
    results = StepResult.objects.filter(  # a subquery: no list of ids (SQLite limits a statement's parameters)
        exposure__in=accepted.values("id"), state=StepResult.State.DONE
    ).values_list("exposure_id", "step", "engine", "engine_version", "result")
    steps: set[str] = set()
    by_step: dict[int, dict[str, dict[str, Any]]] = {pk: {} for pk in rows}
    for exposure_id, step, engine, engine_version, result in results.iterator(chunk_size=2000):
        if exposure_id not in by_step:  # accepted since the first read
            continue
        steps.add(step)
        values: dict[str, Any] = {"engine": engine, "engine_version": engine_version}
        values |= {key: value for key, value in result.items() if isinstance(value, _SCALARS) or value is None}
        by_step[exposure_id][step] = values
    ordered = _step_order(steps)
    columns: list[str] = ["exposure", "movie_size_bytes", "movie_mtime_ns"]
    for step in ordered:
        names: dict[str, None] = {}
        for values in by_step.values():
            names.update(dict.fromkeys(values.get(step, {})))
        columns += [f"{step}.{name}" for name in names]
    records = []
    for pk, row in rows.items():
        record = dict(row)
        for step, values in by_step[pk].items():
            record.update({f"{step}.{name}": value for name, value in values.items()})
        records.append(record)
    table = pd.DataFrame.from_records(records, columns=columns)
    return table.sort_values("exposure", kind="stable").reset_index(drop=True)


def exposure_table(session: Session | int) -> pd.DataFrame:
    """Every exposure of the session: path, state, size, mtime, failures and times, by path."""
    from emlive.db.queries import exposures

    fields = ["path", "state", "size_bytes", "mtime_ns", "fail_count", "fail_reason", "found_at", "processed_at",
              "failed_at"]
    table = pd.DataFrame.from_records(list(exposures(session).values_list(*fields)), columns=fields)
    return table.rename(columns={"path": "exposure"}).sort_values("exposure", kind="stable").reset_index(drop=True)


def step_table(session: Session | int) -> pd.DataFrame:
    """Every step result of the session's exposures: exposure, step, state, engine, engine
    version, error and when it finished, by exposure then step order."""
    from emlive.db.models import StepResult

    pk = session if isinstance(session, int) else session.pk
    fields = ["exposure__path", "step", "state", "engine", "engine_version", "error", "finished_at"]
    rows = StepResult.objects.filter(exposure__session_id=pk).values_list(*fields)
    table = pd.DataFrame.from_records(list(rows), columns=fields).rename(columns={"exposure__path": "exposure"})
    order = {name: i for i, name in enumerate(_step_order(table["step"]))}
    table["_order"] = table["step"].map(order)
    return table.sort_values(["exposure", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)
