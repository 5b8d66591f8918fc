"""Reads of the data plane for the CLI, the API and the exports (no writes here)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from django.db.models import Count, QuerySet

from emlive.db.models import Exposure, Session, canonical_dir

__all__ = [
    "ProcessedRow",
    "counts_by_state",
    "exposures",
    "processed_exposures",
    "processed_rows",
    "session_by_raw_dir",
    "sessions",
]


def _pk(session: Session | int) -> int:
    return int(session) if isinstance(session, int) else int(session.pk)


def sessions(project: str | None = None) -> QuerySet[Session]:
    """All sessions (of ``project`` if given), oldest first, with their project loaded."""
    qs = Session.objects.select_related("project")
    return qs.filter(project__name=project) if project is not None else qs.all()


def session_by_raw_dir(raw_dir: str | os.PathLike[str]) -> Session | None:
    """The session recorded for the movie folder ``raw_dir`` (any spelling of it), or None."""
    return Session.objects.select_related("project").filter(raw_dir=canonical_dir(raw_dir)).first()


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
