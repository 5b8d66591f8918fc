"""Reads of the data plane for the CLI, the API and the exports (no writes here)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime

from django.db.models import BooleanField, Case, Count, Exists, F, FloatField, Max, OuterRef, Q, QuerySet, Value, When
from django.db.models.functions import Abs
from django.db.models.lookups import GreaterThanOrEqual, LessThanOrEqual

from emlive.curation import Curation
from emlive.db.models import Exposure, Session, StepResult, Tilt, TiltSeries, canonical_dir, path_digest

__all__ = [
    "ProcessedRow",
    "ResultSeries",
    "accepted_exposures",
    "accepted_q",
    "change_marker",
    "counts_by_state",
    "curation_counts",
    "exposures",
    "last_stored_at",
    "metric_inputs",
    "processed_exposures",
    "processed_rows",
    "rejected_exposures",
    "result_series",
    "session_by_raw_dir",
    "session_curation",
    "session_step_metrics",
    "session_step_names",
    "step_metrics",
    "stored_metric_names",
    "sessions",
    "with_progress",
    "with_verdict",
]


def _pk(session: Session | int) -> int:
    return int(session) if isinstance(session, int) else int(session.pk)


def sessions(project: str | None = None) -> QuerySet[Session]:
    """All sessions (of ``project`` if given), oldest first, with their project loaded."""
    qs = Session.objects.select_related("project")
    return qs.filter(project__name=project) if project is not None else qs.all()


def session_by_raw_dir(raw_dir: str | os.PathLike[str]) -> Session | None:
    """The session recorded for the movie folder ``raw_dir`` (any spelling of it), or None."""
    return Session.objects.select_related("project").filter(raw_dir_sha256=path_digest(canonical_dir(raw_dir))).first()


def exposures(session: Session | int, state: str | None = None) -> QuerySet[Exposure]:
    """A session's exposures in the order they were found, optionally only those in ``state``."""
    qs = Exposure.objects.filter(session_id=_pk(session))
    if state is not None:
        try:
            qs = qs.filter(state=Exposure.State(state))
        except ValueError:
            raise ValueError(f"exposure state {state!r} is not one of: {', '.join(Exposure.State.values)}") from None
    return qs.order_by("found_at", "id")


def counts_by_state(session: Session | int) -> dict[str, int]:
    """Number of exposures in each state, every state present (zero when none)."""
    counts = dict.fromkeys(Exposure.State.values, 0)
    grouped = Exposure.objects.filter(session_id=_pk(session)).values("state").annotate(n=Count("id")).order_by()
    for row in grouped:
        counts[row["state"]] = row["n"]
    return counts


def processed_exposures(session: Session | int) -> QuerySet[Exposure]:
    """Processed exposures with their session, motion and CTF rows loaded (one query), by path."""
    return (
        Exposure.objects.filter(
            session_id=_pk(session), state=Exposure.State.PROCESSED, motion__isnull=False, ctf__isnull=False
        )
        .select_related("session", "motion", "ctf")
        .order_by("path", "id")
    )


@dataclass(frozen=True)
class ProcessedRow:
    """One processed exposure as plain data (CLI table, API)."""

    path: str
    total_drift_a: float
    early_drift_a: float
    late_drift_a: float
    defocus_u_a: float
    defocus_v_a: float
    azimuth_deg: float
    astigmatism_a: float
    phase_shift_rad: float
    cross_correlation: float
    fit_resolution_a: float
    micrograph_path: str
    dose_weighted_path: str


def processed_rows(session: Session | int) -> list[ProcessedRow]:
    """The per-exposure results of a session, ordered by path."""
    return [
        ProcessedRow(
            path=e.path,
            total_drift_a=e.motion.total_drift_a,
            early_drift_a=e.motion.early_drift_a,
            late_drift_a=e.motion.late_drift_a,
            defocus_u_a=e.ctf.defocus_u_a,
            defocus_v_a=e.ctf.defocus_v_a,
            azimuth_deg=e.ctf.azimuth_deg,
            astigmatism_a=e.ctf.astigmatism_a,
            phase_shift_rad=e.ctf.phase_shift_rad,
            cross_correlation=e.ctf.cross_correlation,
            fit_resolution_a=e.ctf.fit_resolution_a,
            micrograph_path=e.motion.micrograph_path,
            dose_weighted_path=e.motion.dose_weighted_path,
        )
        for e in processed_exposures(session)
    ]


def metric_inputs(session: Session | int) -> tuple[list[float], list[tuple[float, float]], int, int]:
    """For ``runtime.metrics.session_metrics``: movie arrival times (mtime, s), (arrival, result)
    pairs of processed exposures (s), the backlog (found or submitted) and the failed count."""
    arrivals: list[float] = []
    results: list[tuple[float, float]] = []
    backlog = failed = 0
    rows = Exposure.objects.filter(session_id=_pk(session)).values_list("mtime_ns", "state", "processed_at")
    for mtime_ns, state, processed_at in rows.iterator():
        arrival_s = mtime_ns / 1e9
        arrivals.append(arrival_s)
        if state == Exposure.State.PROCESSED and processed_at is not None:
            results.append((arrival_s, processed_at.timestamp()))
        elif state == Exposure.State.FAILED:
            failed += 1
        else:
            backlog += 1
    return arrivals, results, backlog, failed


def step_metrics(exposure_ids: list[int], *, skip: tuple[str, ...] = ()) -> dict[int, dict[str, float | None]]:
    """Every declared metric of these exposures' finished steps (but those of the ``skip``
    steps), ``{id: {"step.metric": value}}`` (one query)."""
    found: dict[int, dict[str, float | None]] = {}
    rows = StepResult.objects.filter(exposure_id__in=exposure_ids, state=StepResult.State.DONE).exclude(step__in=skip)
    for exposure_id, step, metrics in rows.values_list("exposure_id", "step", "metrics"):
        found.setdefault(exposure_id, {}).update((f"{step}.{name}", value) for name, value in metrics.items())
    return found


# --- Curation ------------------------------------------------------------------------------
#
# ``emlive.curation.accepts`` is the reference (pure Python, one exposure); the functions below
# ask the same question of the database for a whole session at once, so a session of 20,000
# exposures is split into accepted and rejected by one query. tests/db/test_queries.py checks
# that both agree on random thresholds and results.


def _mean_defocus_a() -> F:
    return (F("ctf__defocus_u_a") + F("ctf__defocus_v_a")) / Value(2.0, output_field=FloatField())


def accepted_q(curation: Curation) -> Q:
    """A filter on :class:`Exposure` that keeps the processed exposures ``curation`` accepts.

    Apply it to exposures that have a motion and a CTF row (:func:`processed_exposures`);
    the defaults (no threshold) give an empty Q, which keeps everything.
    """
    q = Q()
    if curation.reject_no_fit:
        q &= Q(ctf__fit_ok=True)
    if curation.max_fit_resolution_a is not None:
        q &= Q(ctf__fit_resolution_a__lte=curation.max_fit_resolution_a)
    if curation.max_total_drift_a is not None:
        q &= Q(motion__total_drift_a__lte=curation.max_total_drift_a)
    if curation.min_defocus_a is not None:
        q &= Q(GreaterThanOrEqual(_mean_defocus_a(), curation.min_defocus_a))
    if curation.max_defocus_a is not None:
        q &= Q(LessThanOrEqual(_mean_defocus_a(), curation.max_defocus_a))
    if curation.max_astigmatism_a is not None:
        astigmatism = Abs(F("ctf__defocus_u_a") - F("ctf__defocus_v_a"), output_field=FloatField())
        q &= Q(LessThanOrEqual(astigmatism, curation.max_astigmatism_a))
    if curation.max_ice_ring_ratio is not None:
        q &= Q(ctf__ice_ring_ratio__isnull=True) | Q(ctf__ice_ring_ratio__lte=curation.max_ice_ring_ratio)
    for key, bounds in curation.metrics.items():
        step, metric = key.split(".")
        within = {f"metrics__{metric}__isnull": False}
        if bounds.min is not None:
            within[f"metrics__{metric}__gte"] = bounds.min
        if bounds.max is not None:
            within[f"metrics__{metric}__lte"] = bounds.max
        done = StepResult.objects.filter(exposure=OuterRef("pk"), step=step, state=StepResult.State.DONE)
        # a JSON null is a key that is there (isnull=False) and, as JSON, compares with numbers
        # (PostgreSQL: below all of them; MariaDB: as 0); the reference rejects it
        q &= Q(Exists(done.filter(**within).exclude(**{f"metrics__{metric}": None})))
    return q


def session_curation(session: Session | int) -> Curation:
    """The session's thresholds as stored now (read afresh: the dashboard may have changed
    them since ``session`` was loaded, e.g. in the controller's long-lived session object)."""
    stored = Session.objects.filter(pk=_pk(session)).values_list("curation_json", flat=True).first()
    if stored is None:
        raise Session.DoesNotExist(f"no session with id {_pk(session)}")
    return Curation.model_validate(stored)


def accepted_exposures(session: Session | int, curation: Curation | None = None) -> QuerySet[Exposure]:
    """:func:`processed_exposures` that meet ``curation`` (default: the session's stored thresholds)."""
    curation = session_curation(session) if curation is None else curation
    return processed_exposures(session).filter(accepted_q(curation))


def rejected_exposures(session: Session | int, curation: Curation | None = None) -> QuerySet[Exposure]:
    """:func:`processed_exposures` that fail any threshold of ``curation`` (default: the
    session's stored thresholds). Never an exposure that is not processed yet."""
    curation = session_curation(session) if curation is None else curation
    q = accepted_q(curation)
    if not q:
        return processed_exposures(session).none()
    return processed_exposures(session).exclude(q)


def with_verdict(queryset: QuerySet[Exposure], curation: Curation) -> QuerySet[Exposure]:
    """``queryset`` with ``accepted`` annotated: True or False for processed exposures, None for
    those without results yet (found, submitted, failed)."""
    processed = Q(state=Exposure.State.PROCESSED, motion__isnull=False, ctf__isnull=False)
    q = accepted_q(curation)
    verdict = Case(
        When(~processed, then=Value(None, output_field=BooleanField())),
        *([When(q, then=Value(True))] if q else []),
        default=Value(not q),
        output_field=BooleanField(),
    )
    return queryset.annotate(accepted=verdict)


def curation_counts(session: Session | int, curation: Curation | None = None) -> dict[str, int]:
    """``{"processed": n, "accepted": n, "rejected": n}`` for the session (one query)."""
    curation = session_curation(session) if curation is None else curation
    q = accepted_q(curation)
    counts = processed_exposures(session).order_by().aggregate(
        processed=Count("id"), accepted=Count("id", filter=q) if q else Count("id")
    )
    return {**counts, "rejected": counts["processed"] - counts["accepted"]}


def change_marker(session: Session | int) -> str:
    """A short string that changes whenever the session's exposures or thresholds change (new
    exposures, state changes, results stored again, new thresholds): the dashboard's live
    fragments are re-sent only when it differs from the one the page holds."""
    row = Exposure.objects.filter(session_id=_pk(session)).order_by().aggregate(
        n=Count("id"),
        processed=Count("id", filter=Q(state=Exposure.State.PROCESSED)),
        failed=Count("id", filter=Q(state=Exposure.State.FAILED)),
        submitted=Count("id", filter=Q(state=Exposure.State.SUBMITTED)),
        found=Max("found_at"),
        done=Max("ctf_done_at"),
        failed_at=Max("failed_at"),
    )
    curation = Session.objects.filter(pk=_pk(session)).values_list("curation_json", flat=True).first()
    parts = [row["n"], row["processed"], row["failed"], row["submitted"]]
    parts += [t.timestamp() if t is not None else 0 for t in (row["found"], row["done"], row["failed_at"])]
    text = repr((parts, sorted((curation or {}).items())))
    return hashlib.blake2s(text.encode(), digest_size=8).hexdigest()


# --- Dashboard reads ---------------------------------------------------------------------


def with_progress(queryset: QuerySet[Session]) -> QuerySet[Session]:
    """Sessions with ``n_exposures``, ``n_processed`` and ``n_failed`` annotated (one query)."""
    return queryset.annotate(
        n_exposures=Count("exposures"),
        n_processed=Count("exposures", filter=Q(exposures__state=Exposure.State.PROCESSED)),
        n_failed=Count("exposures", filter=Q(exposures__state=Exposure.State.FAILED)),
    )


@dataclass(frozen=True)
class ResultSeries:
    """A session's processed exposures as columns, in acquisition order (movie mtime).

    ``acquired_s`` is the movie's modification time (s since the epoch); defocus is the mean
    of U and V (Å, positive = underfocus); ``ice_ring_ratio`` holds None where not measured.
    """

    exposure_id: list[int]
    path: list[str]
    acquired_s: list[float]
    defocus_a: list[float]
    astigmatism_a: list[float]
    fit_resolution_a: list[float]
    total_drift_a: list[float]
    ice_ring_ratio: list[float | None]
    accepted: list[bool]


def result_series(session: Session | int, curation: Curation | None = None) -> ResultSeries:
    """Every processed exposure's main numbers and verdict (one query, no model objects)."""
    curation = session_curation(session) if curation is None else curation
    rows = (
        with_verdict(processed_exposures(session), curation)
        .order_by("mtime_ns", "id")
        .values_list(
            "id", "path", "mtime_ns", "ctf__defocus_u_a", "ctf__defocus_v_a", "ctf__fit_resolution_a",
            "motion__total_drift_a", "ctf__ice_ring_ratio", "accepted",
        )
    )
    columns: list[list] = [[] for _ in range(9)]
    for pk, path, mtime_ns, u, v, res, drift, ice, accepted in rows.iterator(chunk_size=5000):
        for column, value in zip(
            columns, (pk, path, mtime_ns / 1e9, (u + v) / 2, abs(u - v), res, drift, ice, bool(accepted)), strict=True
        ):
            column.append(value)
    return ResultSeries(*columns)


# --- Every step's results (dashboard) -------------------------------------------------------


def session_step_names(session: Session | int) -> list[str]:
    """The steps that have results (done or failed) in the session, sorted (one query)."""
    rows = StepResult.objects.filter(exposure__session_id=_pk(session)).values_list("step", flat=True).distinct()
    return sorted(rows.order_by())


def last_stored_at(session: Session | int) -> datetime | None:
    """When results were last stored for the session's exposures: the store writes every
    step's result in the transaction that upserts the exposure's CTF row, so this moves
    whenever any step result is stored, even again with the same step times, which
    :func:`change_marker` does not see (one query, cheaper than reading the step results)."""
    return Exposure.objects.filter(session_id=_pk(session)).order_by().aggregate(t=Max("ctf__updated_at"))["t"]


def session_step_metrics(
    session: Session | int, steps: list[str] | None = None
) -> dict[int, dict[str, float | None]]:
    """:func:`step_metrics` of every exposure of the session (of ``steps`` only, if given;
    one query, however many exposures)."""
    found: dict[int, dict[str, float | None]] = {}
    rows = StepResult.objects.filter(exposure__session_id=_pk(session), state=StepResult.State.DONE)
    if steps is not None:
        rows = rows.filter(step__in=steps)
    for exposure_id, step, metrics in rows.values_list("exposure_id", "step", "metrics").iterator(chunk_size=5000):
        found.setdefault(exposure_id, {}).update((f"{step}.{name}", value) for name, value in metrics.items())
    return found


def stored_metric_names(session: Session | int, step: str) -> list[str]:
    """The metric names of ``step``'s latest finished result in the session (for a step that
    is not installed here, whose declaration cannot say), sorted (PostgreSQL's JSON keeps no
    order; one query)."""
    metrics = (
        StepResult.objects.filter(exposure__session_id=_pk(session), step=step, state=StepResult.State.DONE)
        .order_by("-updated_at", "-id")
        .values_list("metrics", flat=True)
        .first()
    )
    return sorted(metrics or {})


# --- Tilt series ---------------------------------------------------------------------------


def tilt_series(session: Session | int, state: str | None = None) -> QuerySet[TiltSeries]:
    """A session's tilt series in the order they were found, optionally only those in ``state``."""
    qs = TiltSeries.objects.filter(session_id=_pk(session))
    if state is not None:
        try:
            qs = qs.filter(state=TiltSeries.State(state))
        except ValueError:
            raise ValueError(f"tilt series state {state!r} is not one of: {', '.join(TiltSeries.State.values)}") from None
    return qs.order_by("created_at", "id")


def tilt_series_by_name(session: Session | int, name: str) -> TiltSeries | None:
    """The session's tilt series called ``name`` (its mdoc's stem), or None."""
    return TiltSeries.objects.filter(session_id=_pk(session), name=name).first()


def series_tilts(series: TiltSeries | int) -> QuerySet[Tilt]:
    """A series' tilts by nominal tilt angle, with their exposure and its motion and CTF rows
    loaded (one query; a tilt whose movie has not come has ``exposure`` None)."""
    series_id = int(series) if isinstance(series, int) else int(series.pk)
    return (
        Tilt.objects.filter(series_id=series_id)
        .select_related("exposure", "exposure__motion", "exposure__ctf")
        .order_by("tilt_angle_deg", "z_value")
    )


def tilt_series_counts(session: Session | int) -> dict[str, int]:
    """Number of tilt series in each state, every state present (zero when none)."""
    counts = dict.fromkeys(TiltSeries.State.values, 0)
    grouped = TiltSeries.objects.filter(session_id=_pk(session)).values("state").annotate(n=Count("id")).order_by()
    for row in grouped:
        counts[row["state"]] = row["n"]
    return counts


def tilt_exposure_ids(session: Session | int) -> set[int]:
    """The ids of a session's exposures that are tilts of a tilt series."""
    return set(
        Tilt.objects.filter(series__session_id=_pk(session), exposure__isnull=False).values_list("exposure_id", flat=True)
    )


__all__ += ["series_tilts", "tilt_exposure_ids", "tilt_series", "tilt_series_by_name", "tilt_series_counts"]
