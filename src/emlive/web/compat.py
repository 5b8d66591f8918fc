"""The compatible REST routes facility scripts already call (DESIGN.md §3).

``/{project_id}/{user}/…`` addresses the session folder ``<root>/<project>/sessions/<user>/
<session>`` of the facility layout; the token (``access_token`` query parameter or
``Authorization: Bearer``) must belong to a member of the project (or staff): for anyone else
the project does not exist (404). Start, stop and resume answer with the session's status, so a
script sees the result of what it asked. OpenAPI schema: ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.views.decorators.http import require_safe
from ninja import NinjaAPI, Query, Schema
from ninja.errors import HttpError
from pydantic import Field, PositiveFloat
from pydantic import ValidationError as PydanticValidationError

from emlive.acquisition import Acquisition
from emlive.db.models import Session
from emlive.web import control
from emlive.web.access import can_access_project
from emlive.web.api import AUTH, ERRORS, NamePath, data_root, install_error_handlers, session_status
from emlive.web.schemas import CompatStatusOut, Error, validation_message

compat = NinjaAPI(
    title="emlive compatible routes",
    version="1",
    description="The session routes facility scripts call: list, status, start, stop and resume "
    "processing of a session folder. The typed API is at /api/v1.",
    urls_namespace="compat",
    docs_url=None,
    auth=AUTH,
    docs_decorator=require_safe,  # the schema and docs answer GET (and HEAD); anything else 405
)
install_error_handlers(compat)


class SessionList(Schema):
    """``GET /{project_id}/{user}/sessions``: the user's session folders that have a raw/."""

    sessions: list[str]


class StartQuery(Schema):
    """The start-processing parameters (query string; a POST may send them as a form instead)."""

    apix: PositiveFloat | None = Field(None, description="Pixel size of the movies, Å (required)")
    fmdose: PositiveFloat | None = Field(None, description="Exposure per movie frame, e/Å² (required)")
    kev: PositiveFloat | None = Field(None, description="Accelerating voltage, kV (default 300)")
    superresolution: bool | None = Field(
        None, description="Super-resolution movies: motion correction bins them by 2 (default false)"
    )


def _require_project(request: HttpRequest, project_id: str) -> None:
    if not can_access_project(request.auth, project_id):  # type: ignore[attr-defined]
        raise HttpError(404, f"no project {project_id!r} among those you can see; ask its owner or staff for access")


def _recorded(request: HttpRequest, project_id: str, user: str, session_id: str) -> Session | None:
    """The recorded session of the folder, after the access check; 404 for a missing folder."""
    _require_project(request, project_id)
    folder = control.session_dir(data_root(), project_id, user, session_id)
    if not folder.is_dir():
        raise HttpError(404, f"no session {project_id}/{user}/{session_id}: no folder {folder}")
    session = control.recorded_session(folder)
    if session is not None and session.project.name != project_id:  # a link into another project
        raise HttpError(404, f"no session {project_id}/{user}/{session_id} in project {project_id!r}")
    return session


def _status(session: Session) -> CompatStatusOut:
    return CompatStatusOut(**vars(session_status(session)))


@compat.get("/{project_id}/{user}/sessions", response={200: SessionList, **ERRORS}, summary="A user's sessions")
def sessions(request: HttpRequest, project_id: NamePath, user: NamePath) -> dict[str, list[str]]:
    _require_project(request, project_id)
    return {"sessions": control.list_sessions(data_root(), project_id, user)}


@compat.get("/{project_id}/{user}/session/{session_id}", response={200: CompatStatusOut, **ERRORS}, summary="Status")
def status(request: HttpRequest, project_id: NamePath, user: NamePath, session_id: NamePath) -> CompatStatusOut:
    """``state`` is ``no_such_session`` for a folder that does not exist, ``needs_processing`` or
    ``incomplete_or_empty`` for one never started (with or without movies in raw/)."""
    _require_project(request, project_id)
    folder = control.session_dir(data_root(), project_id, user, session_id)
    session = control.recorded_session(folder) if folder.is_dir() else None
    if session is not None and session.project.name != project_id:
        return CompatStatusOut(**vars(control.CompatStatus("no_such_session", 0, 0, 0, 0.0, 0.0)))
    if session is not None:
        return _status(session)
    return CompatStatusOut(**vars(control.session_status(data_root(), project_id, user, session_id)))


def _start_query(request: HttpRequest, query: StartQuery) -> StartQuery:
    given = query.model_dump(exclude_none=True)
    if request.method == "POST" and request.POST:
        form = {key: request.POST[key] for key in StartQuery.model_fields if key in request.POST}
        try:
            given = StartQuery.model_validate(form).model_dump(exclude_none=True) | given
        except PydanticValidationError as exc:
            raise HttpError(400, "invalid request: " + validation_message(exc, "form")) from None
    missing = [name for name in ("apix", "fmdose") if name not in given]
    if missing:
        raise HttpError(
            400,
            f"invalid request: {' and '.join(missing)} required (apix: pixel size in Å, fmdose: e/Å² per frame), "
            "e.g. ?apix=0.83&fmdose=1.1&kev=300",
        )
    return StartQuery(**given)


@compat.api_operation(
    ["GET", "POST"],
    "/{project_id}/{user}/session/{session_id}/start-processing",
    response={200: CompatStatusOut, 409: Error, **ERRORS},
    summary="Start processing a session folder",
)
def start_processing(
    request: HttpRequest,
    project_id: NamePath,
    user: NamePath,
    session_id: NamePath,
    query: Query[StartQuery],
) -> CompatStatusOut:
    """Starts (or, for a stopped session, restarts with new parameters) the session; a session
    already processing keeps its parameters."""
    _recorded(request, project_id, user, session_id)
    values = _start_query(request, query)
    try:
        acquisition = Acquisition(
            pixel_size_a=values.apix, dose_per_frame_e_a2=values.fmdose, voltage_kv=values.kev or 300.0
        )
    except PydanticValidationError as exc:
        raise HttpError(400, "invalid request: " + validation_message(exc, "")) from None
    params: dict[str, dict[str, Any]] = {"motion": {"bin_factor": 2}} if values.superresolution else {}
    try:
        session = control.start_processing(data_root(), project_id, user, session_id, acquisition, params=params)
    except FileNotFoundError as exc:
        raise HttpError(404, str(exc)) from None
    return _status(session)


def _never_started(project_id: str, user: str, session_id: str) -> HttpError:
    return HttpError(
        409,
        f"session {project_id}/{user}/{session_id} was never started; start it with "
        f"/{project_id}/{user}/session/{session_id}/start-processing?apix=…&fmdose=…",
    )


@compat.api_operation(
    ["GET", "POST"],
    "/{project_id}/{user}/session/{session_id}/stop-processing",
    response={200: CompatStatusOut, 409: Error, **ERRORS},
    summary="Stop processing (exposures in flight finish)",
)
def stop_processing(request: HttpRequest, project_id: NamePath, user: NamePath, session_id: NamePath) -> CompatStatusOut:
    session = _recorded(request, project_id, user, session_id)
    if session is None:
        raise _never_started(project_id, user, session_id)
    return _status(control.stop_processing(session))


@compat.api_operation(
    ["GET", "POST"],
    "/{project_id}/{user}/session/{session_id}/resume-processing",
    response={200: CompatStatusOut, 409: Error, **ERRORS},
    summary="Resume processing with the parameters it was started with",
)
def resume_processing(request: HttpRequest, project_id: NamePath, user: NamePath, session_id: NamePath) -> CompatStatusOut:
    session = _recorded(request, project_id, user, session_id)
    if session is None:
        raise _never_started(project_id, user, session_id)
    return _status(control.resume_processing(session))


