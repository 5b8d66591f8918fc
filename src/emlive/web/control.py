"""Sessions in the facility layout: find them, report their status, start, stop and resume them.

Layout (DESIGN.md §3): ``<root>/<project>/sessions/<user>/<session>/raw/`` holds the movies;
emlive writes ``workflow/`` and ``processed/`` beside ``raw/``. Starting a session records it in
the database with state ``processing``; the service's controller picks up every session in that
state and drops those set to ``stopped`` (after their exposures in flight finish).

The status is the one facility scripts already parse (:data:`COMPAT_STATES`); the richer
states live in ``/api/v1``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from emlive.acquisition import Acquisition
from emlive.db.models import Exposure, Project, Session, canonical_dir
from emlive.db import store
from emlive.db.store import acquisition_fields
from emlive.runtime.watcher import scan_movies
from emlive.web.access import valid_name

CompatState = Literal[
    "unknown",
    "needs_processing",
    "processing_start",
    "processing",
    "processing_complete",
    "processing_failure",
    "incomplete_or_empty",
    "no_such_session",
]
COMPAT_STATES: tuple[str, ...] = get_args(CompatState)

log = logging.getLogger(__name__)


class BadName(ValueError):
    """A project, user or session name that is not one safe folder name (answered with 400)."""


@dataclass(frozen=True)
class CompatStatus:
    """``GET /{project}/{user}/session/{session}``: exactly the fields facility scripts read."""

    state: CompatState
    raw_files: int
    processed_files: int
    failed_jobs: int
    percent_done_total: float
    percent_current_cycle: float


def session_dir(data_root: Path, project_id: str, user: str, session_id: str) -> Path:
    """``<root>/<project>/sessions/<user>/<session>``; raises :class:`BadName` for unsafe names
    and when the resolved folder (symlinks followed) lies outside the data root."""
    for kind, value in (("project", project_id), ("user", user), ("session", session_id)):
        if not valid_name(value):
            raise BadName(f"{kind} name {value!r}: use letters, digits, '.', '_' or '-' (no '..', no '/')")
    root = Path(data_root).expanduser().resolve()
    folder = (root / project_id / "sessions" / user / session_id).resolve()
    if not folder.is_relative_to(root):
        raise BadName(f"session {project_id}/{user}/{session_id} resolves outside the data root")
    return folder


def list_sessions(data_root: Path, project_id: str, user: str) -> list[str]:
    """Names of ``user``'s session folders in ``project_id`` that have a ``raw/`` folder, sorted."""
    parent = session_dir(data_root, project_id, user, "x").parent
    if not parent.is_dir():
        return []
    return sorted(
        entry.name for entry in os.scandir(parent) if valid_name(entry.name) and (Path(entry.path) / "raw").is_dir()
    )


def recorded_session(folder: Path) -> Session | None:
    """The database's session for the session folder ``folder``, or None if never started."""
    return Session.objects.select_related("project").filter(raw_dir=canonical_dir(folder / "raw")).first()


def session_status(data_root: Path, project_id: str, user: str, session_id: str) -> CompatStatus:
    """The compatible status of one session (see the module doc)."""
    folder = session_dir(data_root, project_id, user, session_id)
    if not folder.is_dir():
        return CompatStatus("no_such_session", 0, 0, 0, 0.0, 0.0)
    session = recorded_session(folder)
    if session is None:
        n_raw = len(scan_movies(folder / "raw"))
        return CompatStatus("needs_processing" if n_raw else "incomplete_or_empty", n_raw, 0, 0, 0.0, 0.0)
    return status_of(session)


def status_of(session: Session) -> CompatStatus:
    """The compatible status of a recorded session, from the database alone (one query)."""
    processed, failed, waiting = Exposure.State.PROCESSED, Exposure.State.FAILED, (Exposure.State.FOUND, Exposure.State.SUBMITTED)
    since = session.cycle_started_at or session.created_at
    in_cycle = Q(found_at__gte=since) | Q(processed_at__gte=since) | Q(failed_at__gte=since) | Q(state__in=waiting)
    counts = Exposure.objects.filter(session_id=session.pk).aggregate(
        total=Count("id"),
        processed=Count("id", filter=Q(state=processed)),
        failed=Count("id", filter=Q(state=failed)),
        cycle=Count("id", filter=in_cycle),
        cycle_done=Count("id", filter=in_cycle & Q(state__in=(processed, failed))),
    )
    total, n_done = counts["total"], counts["processed"] + counts["failed"]
    backlog = total - n_done
    match session.state:
        case Session.State.FAILED:
            state = "processing_failure"
        case Session.State.PROCESSING if total == 0:
            state = "processing_start"
        case Session.State.PROCESSING:
            state = "processing" if backlog else "processing_complete"
        case Session.State.COMPLETE:
            state = "processing_complete"
        case Session.State.IDLE | Session.State.STOPPED:
            state = "needs_processing" if backlog or total == 0 else "processing_complete"
        case _:
            state = "unknown"
    if total and counts["failed"] == total:
        state = "processing_failure"
    return CompatStatus(
        state=state,
        raw_files=total,
        processed_files=counts["processed"],
        failed_jobs=counts["failed"],
        percent_done_total=round(100.0 * n_done / total, 1) if total else 0.0,
        percent_current_cycle=round(100.0 * counts["cycle_done"] / counts["cycle"], 1) if counts["cycle"] else 0.0,
    )


def start_processing(
    data_root: Path,
    project_id: str,
    user: str,
    session_id: str,
    acquisition: Acquisition,
    *,
    params: dict[str, dict[str, object]] | None = None,
) -> Session:
    """Record the session (or update a stopped one's parameters) and ask for it to be processed.

    A stopped session given other acquisition values keeps its output folder: the exposures done
    are processed again, recomputed where the values change them (:func:`store.change_acquisition`,
    logged).

    Raises FileNotFoundError when the session has no ``raw/`` folder. Outputs go to
    ``processed/`` beside ``raw/``.
    """
    folder = session_dir(data_root, project_id, user, session_id)
    raw = folder / "raw"
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: no such folder; the microscope's movies must be in the session's raw/")
    with transaction.atomic():
        project, _ = Project.objects.get_or_create(name=project_id)
        session, created = Session.objects.select_for_update().get_or_create(
            raw_dir=canonical_dir(raw),
            defaults=dict(
                project=project,
                name=session_id,
                owner=user,
                out_dir=str(folder / "processed"),
                **acquisition_fields(acquisition),
                params_json=params or {},
            ),
        )
        if not created and session.state != Session.State.PROCESSING:
            if (change := store.change_acquisition(session, acquisition)) is not None:
                log.warning("%s/%s/%s: %s", project_id, user, session_id, change)  # same folders, results redone
            session.params_json = params or {}
        if created or session.state != Session.State.PROCESSING:
            session.state = Session.State.PROCESSING
            session.cycle_started_at = timezone.now()
        session.save()
    return session


def stop_processing(session: Session) -> Session:
    """Ask the controller to stop: it finishes the exposures in flight and drops the session."""
    Session.objects.filter(pk=session.pk).update(state=Session.State.STOPPED, updated_at=timezone.now())
    session.refresh_from_db()
    return session


def resume_processing(session: Session) -> Session:
    """Process a stopped session again with the parameters it was started with (a new cycle)."""
    if session.state != Session.State.PROCESSING:
        now = timezone.now()
        Session.objects.filter(pk=session.pk).update(
            state=Session.State.PROCESSING, cycle_started_at=now, updated_at=now
        )
        session.refresh_from_db()
    return session
