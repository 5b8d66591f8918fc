"""The controller's writes to the data plane: one function, one transaction.

The controller is the only caller (workers return plain results and never touch the
database). Every function is idempotent where the pipeline may repeat it: a rescan records a
file once, a result stored twice leaves one row per step and the exposure processed once.
The functions the controller calls every loop turn take many exposures at once and run a
fixed number of queries however many there are (``record_exposures``,
``mark_submitted_many``, ``store_exposure_results``).

Exposure states::

    found ──mark_submitted──▶ submitted ──store_result──▶ processed
      ▲                          │    ▲
      └────reset_in_flight───────┘    │
                       mark_failed ▼  │ mark_submitted (retry)
                                  failed ──record_exposure (file rewritten)──▶ found

Timestamps are timezone-aware (UTC); a naive datetime given to a function is an error.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, ParamSpec, Protocol, TypeVar

from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone
from pydantic import BaseModel

from emlive.acquisition import Acquisition
from emlive.ctf.types import CtfResult
from emlive.db.models import (
    PATH_MAX_CHARS,
    CtfEstimate,
    Exposure,
    MotionCorrection,
    Project,
    Session,
    StepResult,
    Tilt,
    TiltSeries,
    canonical_dir,
    path_digest,
)
from emlive.motion.types import MotionResult
from emlive.pipeline.step import check_storable, metrics_of

__all__ = [
    "FAIL_REASON_MAX_CHARS",
    "check_storable",
    "InvalidTransition",
    "AcquisitionChange",
    "SessionConflict",
    "change_acquisition",
    "get_or_create_session",
    "mark_failed",
    "mark_submitted",
    "mark_submitted_many",
    "record_exposure",
    "record_exposures",
    "reset_in_flight",
    "set_session_state",
    "store_exposure_result",
    "store_exposure_results",
    "store_result",
]

logger = logging.getLogger(__name__)

FAIL_REASON_MAX_CHARS = 20_000
"""Longer failure reasons (tracebacks) are cut to their last this-many characters."""

_ACQUISITION_FIELDS = (
    "pixel_size_a",
    "voltage_kv",
    "cs_mm",
    "amplitude_contrast",
    "dose_per_frame_e_a2",
    "pre_exposure_e_a2",
    "gain_path",
    "eer_fractions",
)


_CHUNK = 500
"""Most ids or paths in one ``IN (...)`` (SQLite limits the parameters of a statement)."""


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_DEADLOCK_RETRIES = 5
"""MySQL/MariaDB: how often a transaction that InnoDB rolled back as a deadlock victim is run again."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _retry_deadlocks(function: Callable[_P, _T]) -> Callable[_P, _T]:
    """Run ``function`` (one idempotent transaction) again when MySQL/MariaDB ends it as a
    deadlock victim (error 1213), as InnoDB asks of its clients.

    Two writers inserting the same new unique key there each keep a shared lock on it from
    the duplicate-key check, and both then want it exclusively (PostgreSQL and SQLite make
    the second writer wait instead). Not retried inside a caller's transaction, which the
    deadlock has rolled back as a whole.
    """

    @functools.wraps(function)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                return function(*args, **kwargs)
            except OperationalError as exc:
                deadlock = connection.vendor == "mysql" and exc.args[:1] == (1213,)
                if not deadlock or connection.in_atomic_block or attempt == _DEADLOCK_RETRIES:
                    raise
                logger.debug("%s: deadlock, running it again (%s)", function.__name__, exc)
                time.sleep(random.uniform(0.0, 0.02 * (attempt + 1)))
        raise AssertionError("unreachable")

    return run


class InvalidTransition(ValueError):
    """An exposure was asked to move to a state it cannot reach from where it is."""


class SessionConflict(ValueError):
    """A session folder is already recorded with different parameters."""


def _cut(reason: str) -> str:
    """A failure reason for people: never empty, and longer ones keep their end."""
    reason = str(reason).strip() or "unknown error"
    if len(reason) > FAIL_REASON_MAX_CHARS:
        reason = "…" + reason[-(FAIL_REASON_MAX_CHARS - 1):]
    return reason


def _pk(obj: Session | Exposure | int) -> int:
    return int(obj) if isinstance(obj, int) else int(obj.pk)


def _aware(name: str, value: datetime | None, default: datetime) -> datetime:
    if value is None:
        return default
    if timezone.is_naive(value):
        raise ValueError(f"{name} must be timezone-aware (got the naive datetime {value.isoformat()})")
    return value


def acquisition_fields(acquisition: Acquisition) -> dict[str, Any]:
    """The session's acquisition columns, and all parameters as JSON (gain path absolute)."""
    gain = str(Path(acquisition.gain_path).absolute()) if acquisition.gain_path else None
    every = acquisition.model_dump(mode="json") | {"gain_path": gain}
    columns = {key: every[key] for key in _ACQUISITION_FIELDS} | {"gain_path": gain or ""}
    return columns | {"acquisition_json": every}


def _default_session_name(raw_dir: str) -> str:
    """The session folder's name; for the facility layout ``<session_id>/raw`` the session id."""
    folder = Path(raw_dir)
    return folder.parent.name if folder.name == "raw" and folder.parent.name else folder.name


@_retry_deadlocks
def get_or_create_session(
    raw_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    acquisition: Acquisition,
    *,
    project: str = "default",
    name: str | None = None,
) -> Session:
    """The session of ``raw_dir`` (stored absolute, symlinks resolved), created if new.

    An existing session is returned as it is when everything given matches what is stored;
    other acquisition values are recorded and the exposures done are processed again with them
    (:func:`change_acquisition`, logged); another output folder, project or name is a
    :class:`SessionConflict` listing each difference. ``name`` defaults to the folder's
    name (for ``…/<session_id>/raw`` the session id); None means "any name" for an existing one.
    """
    raw = canonical_dir(raw_dir)
    out = canonical_dir(out_dir)
    if len(raw) > PATH_MAX_CHARS:
        raise ValueError(f"session folder {raw[:80]!r}… has {len(raw)} characters; at most {PATH_MAX_CHARS} are stored")
    fields = acquisition_fields(acquisition)
    check_storable("acquisition", fields)
    with transaction.atomic():
        by_dir = Session.objects.select_for_update().select_related("project")
        existing = by_dir.filter(raw_dir_sha256=path_digest(raw)).first()
        if existing is None:
            proj, _ = Project.objects.get_or_create(name=project)
            try:
                with transaction.atomic():
                    session = Session.objects.create(
                        project=proj,
                        name=name or _default_session_name(raw),
                        raw_dir=raw,
                        out_dir=out,
                        **fields,
                    )
            except IntegrityError:  # created concurrently by another process: compare with it
                existing = by_dir.get(raw_dir_sha256=path_digest(raw))
            else:
                logger.info("new session %s in project %s: %s", session.name, project, raw)
                return session
        wanted: dict[str, Any] = {"project": project, "out_dir": out}
        stored: dict[str, Any] = {"project": existing.project.name, "out_dir": existing.out_dir}
        if name is not None:
            wanted["name"], stored["name"] = name, existing.name
        differences = [
            f"{key}: stored {stored.get(key)!r}, given {value!r}" for key, value in wanted.items() if stored.get(key) != value
        ]
        if differences:
            raise SessionConflict(
                f"session {raw} is already recorded with another {' and '.join(differences)}; "
                "give the stored values, or a new database/output folder for a fresh start"
            )
        if (change := change_acquisition(existing, acquisition)) is not None:
            logger.warning("%s: %s", existing.name, change)
        return existing


_UNITS = (("_e_a2", "e/Å²"), ("_kv", "kV"), ("_mm", "mm"), ("_a", "Å"))


def _describe_value(key: str, before: Any, after: Any) -> str:
    """``pixel size 1.0 → 1.1 Å``: the unit from the field's name (DESIGN.md §4)."""
    label, unit = key, ""
    for suffix, name in _UNITS:
        if key.endswith(suffix):
            label, unit = key[: -len(suffix)], f" {name}"
            break
    return f"{label.replace('_', ' ')} {before} → {after}{unit}"


@dataclass(frozen=True)
class AcquisitionChange:
    """New acquisition values of a recorded session, and how many of its exposures that were done
    (processed or failed) are to be processed again with them."""

    changes: tuple[tuple[str, Any, Any], ...]  # (field, stored, given)
    recomputed: int

    def __str__(self) -> str:
        values = ", ".join(_describe_value(key, before, after) for key, before, after in self.changes)
        return f"acquisition values changed: {values}; {self.recomputed} exposures will be recomputed"


@_retry_deadlocks
def change_acquisition(session: Session | int, acquisition: Acquisition) -> AcquisitionChange | None:
    """Give a recorded session new acquisition values (a resume with other pixel size, dose, kV …).

    Nothing changes when the values are those stored (None). Otherwise the session keeps its
    output folder and its exposures: those done (processed or failed) go back to ``found``, so
    the controller processes them again; each step's checkpoint then decides, by its params
    hash, whether it is recomputed (the values change its result) or reused. Their results are
    replaced when they are stored again (one row per exposure and step), and the exports follow.
    """
    fields = acquisition_fields(acquisition)
    check_storable("acquisition", fields)
    given = fields["acquisition_json"]
    with transaction.atomic():
        locked = Session.objects.select_for_update().get(pk=_pk(session))
        stored = dict(locked.acquisition_json)
        changes = tuple(
            (key, stored.get(key), value) for key, value in given.items() if stored.get(key) != value
        )
        if not changes:
            return None
        for field, value in fields.items():
            setattr(locked, field, value)
        locked.save()
        redo = Exposure.objects.filter(
            session_id=locked.pk, state__in=[Exposure.State.PROCESSED, Exposure.State.FAILED]
        ).update(
            state=Exposure.State.FOUND, submitted_at=None, failed_at=None, fail_count=0, fail_reason=""
        )
    if isinstance(session, Session):
        session.refresh_from_db()
    return AcquisitionChange(changes, redo)


def _relative_path(rel_path: str | os.PathLike[str]) -> str:
    text = os.fspath(rel_path).replace(os.sep, "/")
    posix = PurePosixPath(text)
    if not text or posix.is_absolute() or Path(text).is_absolute() or ".." in posix.parts or text in (".", "./"):
        raise ValueError(f"exposure path {text!r} must be relative to the session's raw_dir, without '..'")
    rel = posix.as_posix()
    if len(rel) > PATH_MAX_CHARS:  # never cut: MySQL's INSERT IGNORE would store it shortened
        raise ValueError(f"exposure path {rel[:80]!r}… has {len(rel)} characters; at most {PATH_MAX_CHARS} are stored")
    return rel


@_retry_deadlocks
def record_exposure(
    session: Session | int,
    rel_path: str | os.PathLike[str],
    size_bytes: int,
    mtime_ns: int,
) -> tuple[Exposure, bool]:
    """Record a complete movie found at ``raw_dir / rel_path``; returns (exposure, created).

    Idempotent: (session, path) is unique, so a rescan returns the existing row
    (``created=False``) and never duplicates it. A *failed* exposure whose size or mtime has
    changed was rewritten: it is reset to ``found`` (fail count and reason cleared) so the
    controller schedules it again. Callers schedule every exposure returned in state ``found``.
    """
    rel = _relative_path(rel_path)
    if size_bytes < 0:
        raise ValueError(f"{rel}: size_bytes must be >= 0, got {size_bytes}")
    now = timezone.now()
    with transaction.atomic():
        exposure, created = Exposure.objects.select_for_update().get_or_create(
            session_id=_pk(session),
            path_sha256=path_digest(rel),
            defaults={"path": rel, "size_bytes": int(size_bytes), "mtime_ns": int(mtime_ns), "found_at": now},
        )
        if created:
            return exposure, True
        _rewritten(exposure, int(size_bytes), int(mtime_ns), now=now)
        return exposure, False


@_retry_deadlocks
def record_exposures(
    session: Session | int,
    found: Sequence[tuple[str | os.PathLike[str], int, int]],
) -> list[tuple[Exposure, bool]]:
    """:func:`record_exposure` for many movies, ``(rel_path, size_bytes, mtime_ns)`` each.

    Returns ``(exposure, created)`` in the order given, in three queries however many movies
    there are (plus one save per failed exposure whose file was rewritten). A path given twice
    is recorded once.
    """
    items: dict[str, tuple[int, int]] = {}
    for rel_path, size_bytes, mtime_ns in found:
        rel = _relative_path(rel_path)
        if size_bytes < 0:
            raise ValueError(f"{rel}: size_bytes must be >= 0, got {size_bytes}")
        items.setdefault(rel, (int(size_bytes), int(mtime_ns)))
    session_id = _pk(session)
    paths = list(items)
    digests = [path_digest(path) for path in paths]  # the indexed, unique column
    now = timezone.now()
    with transaction.atomic():
        of_session = Exposure.objects.filter(session_id=session_id).order_by()
        existing: dict[str, Exposure] = {}
        for chunk in _chunks(digests):
            existing.update((e.path, e) for e in of_session.select_for_update().filter(path_sha256__in=chunk))
        new = [path for path in paths if path not in existing]
        # ignore_conflicts: a row inserted meanwhile by another process is kept, not duplicated
        rows = [
            Exposure(session_id=session_id, path=path, size_bytes=items[path][0], mtime_ns=items[path][1], found_at=now)
            for path in new
        ]
        Exposure.objects.bulk_create(rows, ignore_conflicts=True)
        created: dict[str, Exposure] = {}
        for chunk in _chunks([path_digest(path) for path in new]):
            created.update((e.path, e) for e in of_session.filter(path_sha256__in=chunk))
        for path, exposure in existing.items():
            _rewritten(exposure, *items[path], now=now)
        recorded = existing | created
        return [(recorded[rel], rel in created) for rel in (_relative_path(p) for p, _, _ in found)]


def _rewritten(exposure: Exposure, size_bytes: int, mtime_ns: int, *, now: datetime) -> None:
    """A recorded file seen again: a failed one that changed is found again (see record_exposure)."""
    changed = (exposure.size_bytes, exposure.mtime_ns) != (size_bytes, mtime_ns)
    if changed and exposure.state == Exposure.State.FAILED:
        logger.info("%s was rewritten after failing (%s); processing it again", exposure.path, exposure.fail_reason)
        exposure.size_bytes, exposure.mtime_ns = size_bytes, mtime_ns
        exposure.state = Exposure.State.FOUND
        exposure.fail_count, exposure.fail_reason = 0, ""
        exposure.found_at = now
        exposure.submitted_at = exposure.failed_at = None
        exposure.motion_done_at = exposure.ctf_done_at = None
        exposure.save()
    elif changed:
        logger.warning(
            "%s changed on disk (size %d → %d) while %s; keeping the recorded file",
            exposure.path, exposure.size_bytes, size_bytes, exposure.state,
        )


def _locked(exposure_id: int) -> Exposure:
    try:
        return Exposure.objects.select_for_update().get(pk=exposure_id)
    except Exposure.DoesNotExist:
        raise Exposure.DoesNotExist(f"no exposure with id {exposure_id}") from None


def mark_submitted(exposure_id: int) -> Exposure:
    """found, submitted (a retry) or failed (a manual retry) → submitted, stamping submitted_at.

    A processed exposure is never submitted again: :class:`InvalidTransition`.
    """
    with transaction.atomic():
        exposure = _locked(exposure_id)
        if exposure.state == Exposure.State.PROCESSED:
            raise InvalidTransition(f"exposure {exposure_id} ({exposure.path}) is already processed")
        exposure.state = Exposure.State.SUBMITTED
        exposure.submitted_at = timezone.now()
        exposure.save(update_fields=["state", "submitted_at"])
        return exposure


def mark_submitted_many(exposure_ids: Collection[int], *, skip_missing: bool = False) -> int:
    """:func:`mark_submitted` for many exposures in one UPDATE; returns how many were marked.

    Raises :class:`InvalidTransition` (and marks none) if one of them is processed, and
    ``Exposure.DoesNotExist`` if one does not exist, unless ``skip_missing`` (exposures of a
    session deleted meanwhile are then left out).
    """
    ids = sorted({int(pk) for pk in exposure_ids})
    now = timezone.now()
    with transaction.atomic():
        marked = 0
        for chunk in _chunks(ids):
            marked += (
                Exposure.objects.filter(pk__in=chunk)
                .exclude(state=Exposure.State.PROCESSED)
                .update(state=Exposure.State.SUBMITTED, submitted_at=now)
            )
        if marked == len(ids):
            return marked
        states: dict[int, str] = {}
        for chunk in _chunks(ids):
            states.update(Exposure.objects.filter(pk__in=chunk).order_by().values_list("pk", "state"))
        processed = [pk for pk, state in states.items() if state == Exposure.State.PROCESSED]
        if processed:
            raise InvalidTransition(f"exposures {', '.join(map(str, sorted(processed)))} are already processed")
        if not skip_missing:
            missing = sorted(set(ids) - states.keys())
            raise Exposure.DoesNotExist(f"no exposure with id {', '.join(map(str, missing))}")
        return marked


@dataclass(frozen=True)
class _ResultRow:
    """One exposure's result, validated, as the columns it is stored in."""

    exposure_id: int
    motion: dict[str, Any]
    ctf: dict[str, Any]
    motion_done_at: datetime
    ctf_done_at: datetime
    steps: list[dict[str, Any]]


def _motion_fields(motion: MotionResult) -> dict[str, Any]:
    return {
        "shifts_px": [[float(x), float(y)] for x, y in motion.shifts_px],
        "total_drift_a": float(motion.total_drift_a),
        "early_drift_a": float(motion.early_drift_a),
        "late_drift_a": float(motion.late_drift_a),
        "n_frames": int(motion.n_frames),
        "pixel_size_a": float(motion.pixel_size_a),
        "micrograph_path": str(Path(motion.micrograph_path).absolute()),
        "dose_weighted_path": str(Path(motion.dose_weighted_path).absolute()),
        "star_path": str(Path(motion.star_path).absolute()),
    }


def _ctf_fields(ctf: CtfResult) -> dict[str, Any]:
    return {
        "defocus_u_a": float(ctf.defocus_u_a),
        "defocus_v_a": float(ctf.defocus_v_a),
        "azimuth_deg": float(ctf.azimuth_deg),
        "phase_shift_rad": float(ctf.phase_shift_rad),
        "cross_correlation": float(ctf.cross_correlation),
        "fit_resolution_a": float(ctf.fit_resolution_a),
        "fit_ok": bool(ctf.fit_ok),
        "ice_ring_ratio": None if ctf.ice_ring_ratio is None else float(ctf.ice_ring_ratio),
        "output_txt_path": str(Path(ctf.output_txt_path).absolute()),
        "avrot_path": str(Path(ctf.avrot_path).absolute()),
        "diagnostic_png_path": str(Path(ctf.diagnostic_png_path).absolute()),
    }


class StepRecordLike(Protocol):
    """What the store reads of a step's provenance record (``pipeline.steps.StepRecord``)."""

    step: str
    engine: str
    engine_version: str
    finished_at: datetime


def step_row(step: str, result: BaseModel, record: StepRecordLike, *, now: datetime) -> dict[str, Any]:
    """The StepResult columns of one step's result: its JSON and its declared metrics (checked
    storable: the typed motion and CTF columns hold the same values)."""
    data = result.model_dump(mode="json")
    metrics = {name: data.get(name) for name in metrics_of(type(result))}
    row = {
        "step": step, "state": StepResult.State.DONE, "engine": record.engine,
        "engine_version": record.engine_version, "result": data, "metrics": metrics, "error": "",
        "finished_at": _aware(f"{step} finished_at", record.finished_at, now),
    }
    check_storable(step, data)  # the metrics are some of its values
    return row


def failed_step_row(step: str, reason: str, *, now: datetime) -> dict[str, Any]:
    """The StepResult columns of a step that failed while its exposure went on."""
    reason = _cut(reason).replace("\x00", "")
    return {"step": step, "state": StepResult.State.FAILED, "engine": "", "engine_version": "", "result": {},
            "metrics": {}, "error": reason, "finished_at": now}


def _result_row(
    exposure_id: int,
    results: Mapping[str, BaseModel],
    records: Mapping[str, StepRecordLike],
    failures: Mapping[str, str],
    *,
    now: datetime,
) -> _ResultRow:
    """The columns of an exposure's result; ValueError for a missing core step, a non-finite
    number or a naive time."""
    if missing := [step for step in ("motion", "ctf") if step not in results or step not in records]:
        raise ValueError(f"exposure {exposure_id}: the result has no {' and no '.join(missing)} step")
    motion, ctf = results["motion"], results["ctf"]
    if not isinstance(motion, MotionResult) or not isinstance(ctf, CtfResult):
        raise ValueError(f"exposure {exposure_id}: motion and ctf results must be a MotionResult and a CtfResult")
    motion_record, ctf_record = records["motion"], records["ctf"]
    motion_fields = {"engine": motion_record.engine, "engine_version": motion_record.engine_version,
                     **_motion_fields(motion)}
    ctf_fields = {"engine": ctf_record.engine, "engine_version": ctf_record.engine_version, **_ctf_fields(ctf)}
    steps = [step_row(name, result, records[name], now=now) for name, result in results.items() if name in records]
    steps += [failed_step_row(name, reason, now=now) for name, reason in failures.items()]
    return _ResultRow(
        int(exposure_id),
        motion_fields,
        ctf_fields,
        _aware("motion_done_at", motion_record.finished_at, now),
        _aware("ctf_done_at", ctf_record.finished_at, now),
        steps,
    )


_STEP_COLUMNS = ["state", "engine", "engine_version", "result", "metrics", "error", "finished_at", "updated_at"]


def _conflict_target(fields: list[str]) -> list[str] | None:
    """``unique_fields`` of an upsert: the constraint a conflict is on (ON CONFLICT (...)), or
    None on MySQL/MariaDB, whose ON DUPLICATE KEY UPDATE takes any unique key and refuses a
    target (each table upserted here has one unique key besides its primary key)."""
    return fields if connection.features.supports_update_conflicts_with_target else None


def _store_rows(rows: Sequence[_ResultRow], *, now: datetime, skip_missing: bool = False) -> list[Exposure]:
    """Store results and mark their exposures processed: six statements however many rows
    (upserts keep one result row per step and exposure; the last of an id given twice wins)."""
    by_id = {row.exposure_id: row for row in rows}
    ids = sorted(by_id)
    with transaction.atomic():
        exposures: dict[int, Exposure] = {}
        for chunk in _chunks(ids):
            exposures.update((e.pk, e) for e in Exposure.objects.select_for_update().filter(pk__in=chunk).order_by())
        if missing := [pk for pk in ids if pk not in exposures]:
            if not skip_missing:
                raise Exposure.DoesNotExist(f"no exposure with id {', '.join(map(str, missing))}")
            logger.warning("exposures %s no longer exist (session deleted?); their results are not stored", missing)
        stored = [by_id[pk] for pk in ids if pk in exposures]
        if not stored:
            return []
        for model, columns in ((MotionCorrection, stored[0].motion), (CtfEstimate, stored[0].ctf)):
            model.objects.bulk_create(
                [
                    model(exposure_id=row.exposure_id, **(row.motion if model is MotionCorrection else row.ctf))
                    for row in stored
                ],
                update_conflicts=True,
                unique_fields=_conflict_target(["exposure"]),
                update_fields=[*columns, "updated_at"],
            )
        StepResult.objects.bulk_create(
            [StepResult(exposure_id=row.exposure_id, **step) for row in stored for step in row.steps],
            update_conflicts=True,
            unique_fields=_conflict_target(["exposure", "step"]),
            update_fields=_STEP_COLUMNS,
        )
        newly: list[int] = []
        for row in stored:
            exposure = exposures[row.exposure_id]
            exposure.motion_done_at, exposure.ctf_done_at = row.motion_done_at, row.ctf_done_at
            if exposure.state != Exposure.State.PROCESSED:
                exposure.state = Exposure.State.PROCESSED
                exposure.processed_at = now
                newly.append(exposure.pk)
            else:
                logger.info("exposure %s (%s) stored again; results updated", exposure.pk, exposure.path)
        for chunk in _chunks(newly):
            Exposure.objects.filter(pk__in=chunk).update(state=Exposure.State.PROCESSED, processed_at=now)
        _set_step_times(stored)
        return [exposures[row.exposure_id] for row in stored]


def _set_step_times(rows: Sequence[_ResultRow]) -> None:
    """Each exposure's own step finish times, in one executemany (Django's bulk_update builds a
    CASE expression per row and field, which cost more than all the other writes together)."""
    meta, quote = Exposure._meta, connection.ops.quote_name
    motion_at, ctf_at = (quote(meta.get_field(name).column) for name in ("motion_done_at", "ctf_done_at"))
    sql = f"UPDATE {quote(meta.db_table)} SET {motion_at} = %s, {ctf_at} = %s WHERE {quote(meta.pk.column)} = %s"
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.executemany(sql, [(adapt(r.motion_done_at), adapt(r.ctf_done_at), r.exposure_id) for r in rows])


@dataclass(frozen=True)
class _Record:
    step: str
    engine: str
    engine_version: str
    finished_at: datetime


def store_result(
    exposure_id: int,
    motion: MotionResult,
    ctf: CtfResult,
    *,
    motion_engine: str,
    motion_engine_version: str,
    ctf_engine: str,
    ctf_engine_version: str,
    motion_done_at: datetime | None = None,
    ctf_done_at: datetime | None = None,
) -> Exposure:
    """Store one exposure's motion and CTF results and mark it processed, in one transaction.

    Storing again (a task that ran twice, a sidecar ingested after a crash) updates the same
    result rows: never a duplicate, and ``processed_at`` keeps the first time the exposure
    was processed. ``*_done_at`` are when each step finished (aware datetimes; default now).
    Output paths are stored absolute. Non-finite numbers raise ValueError before anything is
    written.
    """
    now = timezone.now()
    records = {
        "motion": _Record("motion", motion_engine, motion_engine_version, motion_done_at or now),
        "ctf": _Record("ctf", ctf_engine, ctf_engine_version, ctf_done_at or now),
    }
    row = _result_row(exposure_id, {"motion": motion, "ctf": ctf}, records, {}, now=now)
    return _store_rows([row], now=now)[0]


class ExposureResultLike(Protocol):
    """What the store reads of a worker's result (``pipeline.ExposureResult``)."""

    @property
    def results(self) -> Mapping[str, BaseModel]: ...

    @property
    def steps(self) -> Sequence[StepRecordLike]: ...

    @property
    def failures(self) -> Mapping[str, str]: ...


def store_exposure_result(exposure_id: int, result: ExposureResultLike) -> Exposure:
    """:func:`store_result` for a whole pipeline result: every step's result (and the reason of
    every step that failed alone), with the engines, their versions and the steps' finish times
    from its step records (``motion`` and ``ctf`` must be there)."""
    return store_exposure_results([(exposure_id, result)])[0]


def store_exposure_results(
    results: Sequence[tuple[int, ExposureResultLike]], *, skip_missing: bool = False
) -> list[Exposure]:
    """:func:`store_exposure_result` for many exposures, in one transaction of six statements
    however many there are. Every result is checked before anything is written. Returns the
    exposures stored; ``skip_missing`` leaves out (with a warning) exposures that no longer
    exist instead of raising ``Exposure.DoesNotExist``."""
    now = timezone.now()
    rows = [
        _result_row(
            exposure_id, result.results, {record.step: record for record in result.steps}, result.failures, now=now
        )
        for exposure_id, result in results
    ]
    return _store_rows(rows, now=now, skip_missing=skip_missing)


def mark_failed(exposure_id: int, reason: str) -> Exposure:
    """Mark an exposure failed with ``reason`` (what went wrong, for a person), counting it.

    A processed exposure stays processed (a late failure of a duplicate task is logged and
    ignored). Reasons longer than :data:`FAIL_REASON_MAX_CHARS` keep their end.
    """
    reason = _cut(reason)
    with transaction.atomic():
        exposure = _locked(exposure_id)
        if exposure.state == Exposure.State.PROCESSED:
            logger.warning("exposure %s (%s) is processed; ignoring a failure: %s", exposure_id, exposure.path, reason)
            return exposure
        exposure.state = Exposure.State.FAILED
        exposure.fail_count += 1
        exposure.fail_reason = reason
        exposure.failed_at = timezone.now()
        exposure.save(update_fields=["state", "fail_count", "fail_reason", "failed_at"])
        return exposure


def reset_in_flight(session: Session | int) -> int:
    """Return every submitted exposure of ``session`` to found (after a crash or a stop).

    Returns how many were reset; their results, if a worker finished them, come back through
    the sidecars and :func:`store_result`.
    """
    with transaction.atomic():
        return Exposure.objects.filter(session_id=_pk(session), state=Exposure.State.SUBMITTED).update(
            state=Exposure.State.FOUND, submitted_at=None
        )


def set_session_state(session: Session | int, state: str) -> Session:
    """Set a session's state (one of :class:`Session.State`); returns the updated session."""
    try:
        value = Session.State(state)
    except ValueError:
        allowed = ", ".join(Session.State.values)
        raise ValueError(f"session state {state!r} is not one of: {allowed}") from None
    with transaction.atomic():
        updated = Session.objects.filter(pk=_pk(session)).update(state=value, updated_at=timezone.now())
        if not updated:
            raise Session.DoesNotExist(f"no session with id {_pk(session)}")
        return Session.objects.select_related("project").get(pk=_pk(session))


# --- tilt series (groups of exposures named by a SerialEM mdoc) ------------------------------


@dataclass(frozen=True)
class TiltRow:
    """One tilt as the mdoc names it (see :class:`~emlive.db.models.Tilt` for the units)."""

    z_value: int
    movie_name: str
    tilt_angle_deg: float
    acquisition_index: int = 0
    acquired_at: datetime | None = None
    dose_e_a2: float | None = None
    pre_exposure_e_a2: float = 0.0


_TILT_COLUMNS = ["movie_name", "tilt_angle_deg", "acquisition_index", "acquired_at", "dose_e_a2", "pre_exposure_e_a2"]
_SERIES_AGAIN = (TiltSeries.State.COMPLETE, TiltSeries.State.DONE, TiltSeries.State.PARTIAL, TiltSeries.State.FAILED)


@_retry_deadlocks
def record_tilt_series(
    session: Session | int,
    *,
    name: str,
    mdoc_path: str | os.PathLike[str],
    tilts: Sequence[TiltRow],
    tilt_axis_nominal_deg: float | None = None,
    problems: Sequence[str] = (),
    n_tilts_expected: int | None = None,
) -> tuple[TiltSeries, list[int]]:
    """Record a tilt series as its mdoc reads now (it grows while SerialEM collects); returns
    the series and the z values of the tilts new since last recorded.

    Idempotent: the series is unique on (session, mdoc path), a tilt on (series, z value); a
    tilt named again is updated (its exposure and exclusion kept). A series that gains tilts
    after it was complete or processed goes back to ``collecting`` (it is processed again).
    """
    mdoc = str(Path(mdoc_path).absolute())
    if len(mdoc) > PATH_MAX_CHARS:
        raise ValueError(f"mdoc path {mdoc[:80]!r}… has {len(mdoc)} characters; at most {PATH_MAX_CHARS} are stored")
    now = timezone.now()
    rows = {int(t.z_value): t for t in tilts}
    for tilt in rows.values():
        _aware(f"tilt {tilt.z_value} acquired_at", tilt.acquired_at, now)
        if not all(math.isfinite(v) for v in (tilt.tilt_angle_deg, tilt.pre_exposure_e_a2, tilt.dose_e_a2 or 0.0)):
            raise ValueError(f"{mdoc}: tilt {tilt.z_value} has a non-finite angle or dose")
    angles = [t.tilt_angle_deg for t in rows.values()]
    fields: dict[str, Any] = {
        "tilt_min_deg": min(angles, default=None), "tilt_max_deg": max(angles, default=None),
        "tilt_axis_nominal_deg": tilt_axis_nominal_deg, "problems_json": [str(p) for p in problems],
    }
    if n_tilts_expected is not None:
        fields["n_tilts_expected"] = int(n_tilts_expected)
    with transaction.atomic():
        series, created = TiltSeries.objects.select_for_update().get_or_create(
            session_id=_pk(session), mdoc_path_sha256=path_digest(mdoc),
            defaults={"name": name, "mdoc_path": mdoc, "last_tilt_at": now if rows else None, **fields},
        )
        known = set() if created else set(series.tilts.values_list("z_value", flat=True))
        new = sorted(rows.keys() - known)
        if not created:
            for key, value in fields.items():
                setattr(series, key, value)
            if new:
                series.last_tilt_at = now
                if series.state in _SERIES_AGAIN:
                    logger.info("tilt series %s grew by %d tilts; it will be processed again", series.name, len(new))
                    series.state = TiltSeries.State.COLLECTING
                    series.completed_at = None
            series.save()
        Tilt.objects.bulk_create(
            [
                Tilt(series=series, z_value=z, movie_name=t.movie_name, tilt_angle_deg=float(t.tilt_angle_deg),
                     acquisition_index=int(t.acquisition_index), acquired_at=t.acquired_at,
                     dose_e_a2=None if t.dose_e_a2 is None else float(t.dose_e_a2),
                     pre_exposure_e_a2=float(t.pre_exposure_e_a2))
                for z, t in sorted(rows.items())
            ],
            update_conflicts=True,
            unique_fields=_conflict_target(["series", "z_value"]),
            update_fields=_TILT_COLUMNS,
        )
        return series, new


def link_tilts(series: TiltSeries | int, exposures: Mapping[int, int]) -> int:
    """Link tilts (by z value) to the exposures of their movies, ``{z_value: exposure_id}``;
    returns how many links are new. Updates the series' counts."""
    series_id = _pk(series)
    linked = 0
    with transaction.atomic():
        tilts = {t.z_value: t for t in Tilt.objects.select_for_update().filter(series_id=series_id, z_value__in=list(exposures))}
        for z_value, exposure_id in exposures.items():
            tilt = tilts.get(int(z_value))
            if tilt is None:
                raise Tilt.DoesNotExist(f"tilt series {series_id} has no tilt with z value {z_value}")
            if tilt.exposure_id != int(exposure_id):
                Tilt.objects.filter(exposure_id=int(exposure_id)).exclude(pk=tilt.pk).update(exposure=None)
                tilt.exposure_id = int(exposure_id)
                tilt.save(update_fields=["exposure"])
                linked += 1
        update_tilt_series_counts(series_id)
    return linked


def update_tilt_series_counts(series: TiltSeries | int) -> TiltSeries:
    """Recount a series' received (movie found) and processed (motion and CTF stored) tilts."""
    series_id = _pk(series)
    with transaction.atomic():
        tilts = Tilt.objects.filter(series_id=series_id)
        received = tilts.filter(exposure__isnull=False).count()
        processed = tilts.filter(exposure__state=Exposure.State.PROCESSED).count()
        TiltSeries.objects.filter(pk=series_id).update(
            n_tilts_received=received, n_tilts_processed=processed, updated_at=timezone.now()
        )
        return TiltSeries.objects.get(pk=series_id)


def set_tilt_series_state(series: TiltSeries | int, state: str, *, error: str | None = None) -> TiltSeries:
    """Move a series to ``state`` (one of :class:`TiltSeries.State`), with ``error`` (the reason
    it failed, or what a partial one lacks) when given."""
    try:
        value = TiltSeries.State(state)
    except ValueError:
        raise ValueError(f"tilt series state {state!r} is not one of: {', '.join(TiltSeries.State.values)}") from None
    now = timezone.now()
    update: dict[str, Any] = {"state": value, "updated_at": now}
    if value == TiltSeries.State.COMPLETE:
        update["completed_at"] = now
    if error is not None:
        update["error"] = _cut(error).replace("\x00", "") if error else ""
    with transaction.atomic():
        if not TiltSeries.objects.filter(pk=_pk(series)).update(**update):
            raise TiltSeries.DoesNotExist(f"no tilt series with id {_pk(series)}")
        return TiltSeries.objects.get(pk=_pk(series))


def exclude_tilts(series: TiltSeries | int, reasons: Mapping[int, str | None]) -> TiltSeries:
    """Set why tilts (by z value) are left out of the reconstruction (None or "": used again),
    and the series' list of excluded tilts."""
    series_id = _pk(series)
    with transaction.atomic():
        for z_value, reason in reasons.items():
            Tilt.objects.filter(series_id=series_id, z_value=int(z_value)).update(
                excluded_reason=_cut(reason) if reason else ""
            )
        excluded = [
            {"z_value": t.z_value, "tilt_angle_deg": t.tilt_angle_deg, "movie_name": t.movie_name,
             "reason": t.excluded_reason}
            for t in Tilt.objects.filter(series_id=series_id).exclude(excluded_reason="").order_by("tilt_angle_deg", "z_value")
        ]
        TiltSeries.objects.filter(pk=series_id).update(excluded_json=excluded, updated_at=timezone.now())
        return TiltSeries.objects.get(pk=series_id)


def store_tilt_series_result(
    series: TiltSeries | int,
    *,
    state: str,
    result: Mapping[str, Any],
    input_hash: str,
    exclusions: Mapping[int, str | None],
    tilt_axis_refined_deg: float | None,
    alignment_residual_px: float | None,
    pixel_size_a: float | None,
    tomogram_path: str | os.PathLike[str] | None,
    central_slice_png_path: str | os.PathLike[str] | None,
    montage_png_path: str | os.PathLike[str] | None,
    error: str = "",
) -> TiltSeries:
    """Store a series' group-step result in one transaction: the alignment, the outputs
    (absolute paths), which tilts were left out and why, and its state (``done`` or
    ``partial``; ``error`` says what a partial one lacks). Storing again replaces it."""
    if state not in (TiltSeries.State.DONE, TiltSeries.State.PARTIAL):
        raise ValueError(f"a tilt series' result is stored as done or partial, not {state!r}")
    numbers = {"tilt_axis_refined_deg": tilt_axis_refined_deg, "alignment_residual_px": alignment_residual_px,
               "pixel_size_a": pixel_size_a}
    for key, value in numbers.items():
        if value is not None and not math.isfinite(value):
            raise ValueError(f"tilt series {_pk(series)}: {key} is {value}; a stored number must be finite")
    check_storable(f"tilt series {_pk(series)}'s result", dict(result))

    def absolute(path: str | os.PathLike[str] | None) -> str:
        return "" if path is None else str(Path(path).absolute())

    now = timezone.now()
    with transaction.atomic():
        exclude_tilts(series, exclusions)
        updated = TiltSeries.objects.filter(pk=_pk(series)).update(
            state=state, result_json=dict(result), input_hash=input_hash, error=_cut(error) if error else "",
            **{k: None if v is None else float(v) for k, v in numbers.items()},
            tomogram_path=absolute(tomogram_path), central_slice_png_path=absolute(central_slice_png_path),
            montage_png_path=absolute(montage_png_path), processed_at=now, updated_at=now,
        )
        if not updated:
            raise TiltSeries.DoesNotExist(f"no tilt series with id {_pk(series)}")
        return TiltSeries.objects.get(pk=_pk(series))


__all__ += [
    "TiltRow",
    "exclude_tilts",
    "link_tilts",
    "record_tilt_series",
    "set_tilt_series_state",
    "store_tilt_series_result",
    "update_tilt_series_counts",
]
