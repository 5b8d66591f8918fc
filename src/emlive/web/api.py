"""The typed REST API, ``/api/v1`` (django-ninja; OpenAPI at ``/api/v1/openapi.json``).

Every route needs a caller: an API token (``Authorization: Bearer <token>`` or
``?access_token=<token>``, made with ``emlive token create USER``) or the dashboard's Django
login (plus the CSRF token for POST/PUT). A session of a project the caller is not a member of
answers 404, exactly like a session that does not exist; staff see every project.

Errors are JSON ``{"detail": "..."}`` saying what to do: 400 for a bad parameter (path, query
or body), 401 without a valid token, 404 for what the caller cannot see, 409 for a request that
conflicts with the session's state. docs/api.md lists the routes with examples.

The request plumbing shared with the compatible routes (:mod:`emlive.web.compat`) lives here
too: authentication, error answers and the data root.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.db.models import Count, F, QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_safe
from ninja import NinjaAPI
from ninja import Path as PathParam
from ninja import Query
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import APIKeyCookie, APIKeyQuery, HttpBearer
from ninja.utils import check_csrf
from pydantic import AfterValidator

from emlive.curation import Curation
from emlive.db import queries, store
from emlive.db.export import write_exports
from emlive.db.models import OUTPUT_PATH_MAX_CHARS, Exposure, Project, Session
from emlive.pipeline.registry import registry
from emlive.runtime.metrics import session_metrics
from emlive.web import control
from emlive.web.access import can_access_project, user_for_token, visible_sessions
from emlive.web.schemas import (
    NAME_HINT,
    NAME_SHAPE,
    CompatStatusOut,
    CtfOut,
    Error,
    ExportFile,
    ExportName,
    ExposureCounts,
    ExposureDetail,
    ExposurePage,
    ExposureState,
    ExposureSummary,
    MetricInfo,
    MetricsOut,
    MotionOut,
    Parameters,
    ProjectOut,
    SessionDetail,
    SessionPage,
    SessionState,
    StartSession,
    StepInfo,
    StepOut,
    TiltMembership,
    check_name,
)

# ---------------------------------------------------------------------------------------------
# Shared plumbing: the data root, authentication, error answers.

_data_root: Path | None = None


def data_root() -> Path:
    """The facility root ``<root>/<project>/sessions/<user>/<session>/raw/`` the API serves.

    Set by ``emlive serve`` with :func:`set_data_root`; otherwise read once from the
    configuration (``EMLIVE_DATA_ROOT``, the TOML file, default ``~/emlive-data``).
    """
    global _data_root
    if _data_root is None:
        from emlive.config import load_settings

        _data_root = load_settings().data_root.expanduser().resolve()
    return _data_root


def set_data_root(path: str | Path | None) -> None:
    """Serve the facility root ``path`` (None: read it from the configuration on next use)."""
    global _data_root
    _data_root = None if path is None else Path(path).expanduser().resolve()


SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")


class BearerToken(HttpBearer):
    """``Authorization: Bearer emlive_…`` (scripts)."""

    def authenticate(self, request: HttpRequest, token: str) -> User | None:
        return user_for_token(token)


class QueryToken(APIKeyQuery):
    """``?access_token=emlive_…`` (facility scripts that cannot set headers)."""

    param_name = "access_token"

    def authenticate(self, request: HttpRequest, key: str | None) -> User | None:
        return user_for_token(key) if key else None


class LoginSession(APIKeyCookie):
    """The dashboard's Django login cookie; POST/PUT also need the CSRF token (header
    ``X-CSRFToken`` with the ``csrftoken`` cookie's value)."""

    param_name = "sessionid"

    def __init__(self) -> None:
        super().__init__(csrf=False)  # checked below, only for a logged-in user

    def __call__(self, request: HttpRequest) -> User | None:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        if request.method not in SAFE_METHODS and check_csrf(request) is not None:
            raise HttpError(
                403,
                "CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken header "
                "(or use an API token instead of the login cookie)",
            )
        return user

    def authenticate(self, request: HttpRequest, key: str | None) -> User | None:  # pragma: no cover
        return None  # __call__ does the work


AUTH = [BearerToken(), QueryToken(), LoginSession()]

UNAUTHENTICATED = (
    "authentication required: send an API token as 'Authorization: Bearer <token>' or as the "
    "access_token query parameter (create one with 'emlive token create USER'), or log in at /login/"
)


def _problem(error: dict[str, Any]) -> str:
    where = " ".join(str(part) for part in error.get("loc", ()))
    kind = str(error.get("type", ""))
    if kind == "string_pattern_mismatch" or (kind == "string_too_long" and "path" in error.get("loc", ())):
        message = NAME_HINT
    elif kind == "value_error":
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    elif kind == "int_parsing":
        message = "must be a whole number"
    elif kind == "missing":
        message = "is required"
    elif kind == "literal_error":
        message = f"must be {error.get('ctx', {}).get('expected', 'one of the documented values')}"
    else:
        message = str(error.get("msg", "invalid"))
    return f"{where}: {message}" if where else message


def install_error_handlers(ninja_api: NinjaAPI) -> None:
    """Answer every error of ``ninja_api`` as JSON ``{"detail": ...}`` that says what to do:
    bad parameters 400 (not ninja's 422), no valid credentials 401, unknown 404, a body over
    ``[web] max_body_bytes`` 413."""

    def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        detail = "invalid request: " + "; ".join(_problem(error) for error in exc.errors)
        return ninja_api.create_response(request, {"detail": detail}, status=400)

    def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        response = ninja_api.create_response(request, {"detail": UNAUTHENTICATED}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="emlive"'
        return response

    def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        detail = str(exc) or "not found: check the URL against docs/api.md"
        return ninja_api.create_response(request, {"detail": detail}, status=404)

    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        return ninja_api.create_response(request, {"detail": str(exc)}, status=exc.status_code)

    def bad_name(request: HttpRequest, exc: control.BadName) -> HttpResponse:
        return ninja_api.create_response(request, {"detail": str(exc)}, status=400)

    def too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
        detail = f"request body larger than the {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes allowed ([web] max_body_bytes)"
        return ninja_api.create_response(request, {"detail": detail}, status=413)

    def too_many_fields(request: HttpRequest, exc: TooManyFieldsSent) -> HttpResponse:
        detail = f"invalid request: more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} query or form fields"
        return ninja_api.create_response(request, {"detail": detail}, status=400)

    ninja_api.add_exception_handler(ValidationError, invalid)
    ninja_api.add_exception_handler(RequestDataTooBig, too_big)
    ninja_api.add_exception_handler(TooManyFieldsSent, too_many_fields)
    ninja_api.add_exception_handler(AuthenticationError, unauthenticated)
    ninja_api.add_exception_handler(Http404, not_found)
    ninja_api.add_exception_handler(HttpError, http_error)
    ninja_api.add_exception_handler(control.BadName, bad_name)


STATUS_TTL_S = 1.0
"""How long a session's status is reused, seconds: scripts poll it often and, on a session of
20,000 exposures, counting them takes tens of milliseconds. Starting, stopping or resuming
(a change of the session's state or cycle) is seen at once."""


@dataclass
class _CachedStatus:
    at_s: float
    key: tuple[object, ...]
    status: control.CompatStatus | None
    lock: threading.Lock = field(default_factory=threading.Lock)


_statuses: dict[int, _CachedStatus] = {}


def session_status(session: Session) -> control.CompatStatus:
    """:func:`control.status_of`, counted at most once per :data:`STATUS_TTL_S` per session.

    While one request counts, the others get the previous answer (or wait for the first one),
    so a burst of polls never runs the count more than once at a time.
    """
    key = (session.state, session.cycle_started_at)
    entry = _statuses.setdefault(session.pk, _CachedStatus(0.0, key, None))
    fresh = entry.status is not None and entry.key == key
    if fresh and time.monotonic() - entry.at_s < STATUS_TTL_S:
        return entry.status  # type: ignore[return-value]
    if not entry.lock.acquire(blocking=not fresh):
        return entry.status  # type: ignore[return-value]  # another request is counting
    try:
        status = control.status_of(session)
        entry.at_s, entry.key, entry.status = time.monotonic(), key, status
        return status
    finally:
        entry.lock.release()

NamePath = Annotated[str, PathParam(pattern=NAME_SHAPE, max_length=200, description=NAME_HINT), AfterValidator(check_name)]
IdPath = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="A positive whole number")]

ERRORS: dict[int, type[Error]] = {400: Error, 401: Error, 403: Error, 404: Error}

# ---------------------------------------------------------------------------------------------
# The API.

api = NinjaAPI(
    title="emlive",
    version="1",
    description="Sessions, exposures, results, processing control, parameters, exports and metrics "
    "of the emlive service. Authenticate with an API token (Bearer header or access_token query "
    "parameter) or the dashboard's login.",
    urls_namespace="api-v1",
    auth=AUTH,
    docs_decorator=require_safe,  # the schema and docs answer GET (and HEAD); anything else 405
)
install_error_handlers(api)


def _caller(request: HttpRequest) -> User:
    return request.auth  # type: ignore[attr-defined,no-any-return]


def _visible_session(request: HttpRequest, session_id: int) -> Session:
    session = visible_sessions(_caller(request)).filter(pk=session_id).first()
    if session is None:
        raise HttpError(404, f"no session {session_id} among those you can see; GET /api/v1/sessions lists them")
    return session


def _counts(session_ids: list[int]) -> dict[int, ExposureCounts]:
    per_session: dict[int, dict[str, int]] = {pk: dict.fromkeys(Exposure.State.values, 0) for pk in session_ids}
    rows = (
        Exposure.objects.filter(session_id__in=session_ids).values("session_id", "state").annotate(n=Count("id")).order_by()
    )
    for row in rows:
        per_session[row["session_id"]][row["state"]] = row["n"]
    return {pk: ExposureCounts(**counts, total=sum(counts.values())) for pk, counts in per_session.items()}


def _summary(session: Session, counts: ExposureCounts) -> dict[str, Any]:
    return {
        "id": session.pk,
        "project": session.project.name,
        "name": session.name,
        "owner": session.owner,
        "state": session.state,
        "counts": counts,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "cycle_started_at": session.cycle_started_at,
    }


def _detail(session: Session) -> dict[str, Any]:
    status = session_status(session)
    return _summary(session, _counts([session.pk])[session.pk]) | {
        "raw_dir": session.raw_dir,
        "out_dir": session.out_dir,
        "status": CompatStatusOut(**vars(status)),
        "acquisition": session.acquisition_json,
        "params": session.params_json,
        "curation": session.curation,
    }


@api.get("/projects", response={200: list[ProjectOut], **ERRORS}, summary="Projects you can see")
def list_projects(request: HttpRequest) -> list[dict[str, Any]]:
    user = _caller(request)
    projects = Project.objects.annotate(n_sessions=Count("sessions")).order_by("name")
    if not user.is_staff:
        projects = projects.filter(members__user_id=user.pk)
    return [{"name": p.name, "sessions": p.n_sessions} for p in projects]


@api.get("/sessions", response={200: SessionPage, **ERRORS}, summary="Sessions you can see, newest first")
def list_sessions(
    request: HttpRequest,
    project: Annotated[str | None, Query(None, pattern=NAME_SHAPE, max_length=200), AfterValidator(check_name)] = None,
    state: SessionState | None = None,
    limit: Annotated[int, Query(100, ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(0, ge=0, le=10**9)] = 0,
) -> dict[str, Any]:
    qs = visible_sessions(_caller(request))
    if project is not None:
        qs = qs.filter(project__name=project)
    if state is not None:
        qs = qs.filter(state=state)
    count = qs.count()
    page = list(qs.order_by("-created_at", "-id")[offset : offset + limit])
    counts = _counts([s.pk for s in page])
    return {"count": count, "limit": limit, "offset": offset, "items": [_summary(s, counts[s.pk]) for s in page]}


def _inside_data_root(value: Path | None, folder: Path, what: str) -> Path | None:
    if value is None:
        return None
    try:
        path = (folder / value).resolve()  # an absolute value stays as it is
    except (OSError, ValueError) as exc:
        raise HttpError(400, f"{what} {str(value)[:200]!r} is not a usable path: {exc}") from None
    if not path.is_relative_to(data_root()):
        raise HttpError(400, f"{what} {str(value)[:200]!r} lies outside the data root; put it in the session's folder")
    if len(str(path)) > OUTPUT_PATH_MAX_CHARS:
        raise HttpError(400, f"{what} is longer than {OUTPUT_PATH_MAX_CHARS} characters")
    return path


@api.post(
    "/sessions",
    response={200: SessionDetail, 409: Error, **ERRORS},
    summary="Start processing a session folder of the facility layout",
)
def start_session(request: HttpRequest, body: StartSession) -> dict[str, Any]:
    """Records the session ``<root>/<project>/sessions/<user>/<name>`` (or updates a stopped
    one's parameters) and asks the controller to process it. Gain and defects files must lie
    inside the data root; relative paths are relative to the session folder."""
    if not can_access_project(_caller(request), body.project):
        raise HttpError(404, f"no project {body.project!r} among those you can see; GET /api/v1/projects lists them")
    folder = control.session_dir(data_root(), body.project, body.user, body.name)
    acquisition = body.acquisition.model_copy(
        update={
            "gain_path": _inside_data_root(body.acquisition.gain_path, folder, "gain_path"),
            "defects_path": _inside_data_root(body.acquisition.defects_path, folder, "defects_path"),
        }
    )
    existing = control.recorded_session(folder)
    if existing is not None and existing.project.name != body.project:  # a link into another project
        raise HttpError(404, f"no session {body.project}/{body.user}/{body.name} in project {body.project!r}")
    if existing is not None and existing.state == Session.State.PROCESSING:
        raise HttpError(
            409,
            f"session {body.project}/{body.user}/{body.name} is already processing (id {existing.pk}); "
            f"stop it first (POST /api/v1/sessions/{existing.pk}/stop) to change its parameters",
        )
    try:
        session = control.start_processing(
            data_root(), body.project, body.user, body.name, acquisition, params=body.params.stored()
        )
    except FileNotFoundError as exc:
        raise HttpError(404, str(exc)) from None
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    return _detail(Session.objects.select_related("project").get(pk=session.pk))


@api.get("/sessions/{session_id}", response={200: SessionDetail, **ERRORS}, summary="One session")
def get_session(request: HttpRequest, session_id: IdPath) -> dict[str, Any]:
    return _detail(_visible_session(request, session_id))


@api.post("/sessions/{session_id}/stop", response={200: SessionDetail, **ERRORS}, summary="Stop processing")
def stop_session(request: HttpRequest, session_id: IdPath) -> dict[str, Any]:
    """The controller finishes the exposures in flight and leaves the rest for a resume."""
    session = control.stop_processing(_visible_session(request, session_id))
    return _detail(session)


@api.post(
    "/sessions/{session_id}/resume",
    response={200: SessionDetail, **ERRORS},
    summary="Resume processing with the same parameters",
)
def resume_session(request: HttpRequest, session_id: IdPath) -> dict[str, Any]:
    """Starts a new cycle (percent_current_cycle counts from now); a processing session is left as it is."""
    session = control.resume_processing(_visible_session(request, session_id))
    return _detail(session)


@api.get("/sessions/{session_id}/parameters", response={200: Parameters, **ERRORS}, summary="All parameters")
def get_parameters(request: HttpRequest, session_id: IdPath) -> dict[str, Any]:
    session = _visible_session(request, session_id)
    return {"acquisition": session.acquisition_json, "params": session.params_json, "curation": session.curation}


@api.get("/sessions/{session_id}/curation", response={200: Curation, **ERRORS}, summary="Curation thresholds")
def get_curation(request: HttpRequest, session_id: IdPath) -> Curation:
    return _visible_session(request, session_id).curation


@api.put("/sessions/{session_id}/curation", response={200: Curation, **ERRORS}, summary="Set curation thresholds")
def put_curation(request: HttpRequest, session_id: IdPath, body: Curation) -> Curation:
    """Replaces every threshold (one left out or null is not applied). Rejected exposures stay in
    the database and are left out of the exports."""
    session = _visible_session(request, session_id)
    try:
        store.check_storable("curation", body.model_dump())
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    Session.objects.filter(pk=session.pk).update(curation_json=body.model_dump(mode="json"), updated_at=timezone.now())
    return body


ExposureOrder = Literal[
    "found_at", "-found_at", "processed_at", "-processed_at", "path", "-path",
    "fit_resolution_a", "-fit_resolution_a", "total_drift_a", "-total_drift_a", "defocus_a", "-defocus_a",
]  # fmt: skip

_ORDER_FIELDS = {
    "found_at": "found_at",
    "processed_at": "processed_at",
    "path": "path",
    "fit_resolution_a": "ctf__fit_resolution_a",
    "total_drift_a": "motion__total_drift_a",
    "defocus_a": "_mean_defocus_a",
}


def _mean_defocus(qs: QuerySet[Exposure]) -> QuerySet[Exposure]:
    return qs.annotate(_mean_defocus_a=(F("ctf__defocus_u_a") + F("ctf__defocus_v_a")) / 2.0)


def _order_by(order: str) -> tuple[Any, Any]:
    descending = order.startswith("-")
    field = F(_ORDER_FIELDS[order.lstrip("-")])
    if descending:
        return field.desc(nulls_last=True), F("id").desc()
    return field.asc(nulls_last=True), F("id").asc()


def _membership(e: Exposure) -> TiltMembership | None:
    """The tilt series an exposure (read with ``tilt__series``) belongs to, if any."""
    tilt = getattr(e, "tilt", None)
    if tilt is None:
        return None
    return TiltMembership(
        series_id=tilt.series_id, series_name=tilt.series.name, z_value=tilt.z_value, tilt_angle_deg=tilt.tilt_angle_deg,
        acquisition_index=tilt.acquisition_index, pre_exposure_e_a2=tilt.pre_exposure_e_a2,
        excluded_reason=tilt.excluded_reason or None,
    )


@api.get("/sessions/{session_id}/exposures", response={200: ExposurePage, **ERRORS}, summary="A page of exposures")
def list_exposures(
    request: HttpRequest,
    session_id: IdPath,
    state: ExposureState | None = None,
    curation: Annotated[
        Literal["accepted", "rejected"] | None,
        Query(None, description="Only exposures the session's thresholds keep, or reject"),
    ] = None,
    order: Annotated[ExposureOrder, Query("found_at", description="Sort key; '-' for descending")] = "found_at",
    limit: Annotated[int, Query(100, ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(0, ge=0, le=10**9)] = 0,
) -> dict[str, Any]:
    session = _visible_session(request, session_id)
    thresholds = session.curation
    qs = queries.with_verdict(Exposure.objects.filter(session_id=session.pk), thresholds)
    if state is not None:
        qs = qs.filter(state=state)
    if curation is not None:
        qs = qs.filter(accepted=curation == "accepted")
    count = qs.count()
    page = (
        _mean_defocus(qs).select_related("motion", "ctf", "tilt__series")
        .defer("fail_reason", "motion__shifts_px").order_by(*_order_by(order))
    )
    page = list(page[offset : offset + limit])
    # motion's and CTF's metrics are the fields above; steps that declare none have none to read
    skip = ("motion", "ctf", *(name for name, step in registry().steps.items() if not step.metrics))
    metrics = queries.step_metrics([e.pk for e in page], skip=skip)
    items = []
    for e in page:
        motion, ctf = getattr(e, "motion", None), getattr(e, "ctf", None)
        items.append(
            ExposureSummary(
                id=e.pk,
                path=e.path,
                state=e.state,
                found_at=e.found_at,
                processed_at=e.processed_at,
                failed_at=e.failed_at,
                fail_count=e.fail_count,
                total_drift_a=motion.total_drift_a if motion else None,
                defocus_u_a=ctf.defocus_u_a if ctf else None,
                defocus_v_a=ctf.defocus_v_a if ctf else None,
                astigmatism_a=ctf.astigmatism_a if ctf else None,
                fit_resolution_a=ctf.fit_resolution_a if ctf else None,
                fit_ok=ctf.fit_ok if ctf else None,
                ice_ring_ratio=ctf.ice_ring_ratio if ctf else None,
                accepted=e.accepted,
                metrics=metrics.get(e.pk, {}),
                tilt=_membership(e),
            )
        )
    return {"count": count, "limit": limit, "offset": offset, "items": items}


@api.get(
    "/sessions/{session_id}/exposures/{exposure_id}",
    response={200: ExposureDetail, **ERRORS},
    summary="One exposure with every step's results",
)
def get_exposure(request: HttpRequest, session_id: IdPath, exposure_id: IdPath) -> ExposureDetail:
    session = _visible_session(request, session_id)
    exposures = Exposure.objects.select_related("motion", "ctf", "tilt__series").filter(session_id=session.pk, pk=exposure_id)
    e = queries.with_verdict(exposures, session.curation).first()
    if e is None:
        raise HttpError(
            404, f"session {session_id} has no exposure {exposure_id}; GET /api/v1/sessions/{session_id}/exposures lists them"
        )
    motion, ctf = getattr(e, "motion", None), getattr(e, "ctf", None)
    return ExposureDetail(
        id=e.pk,
        session_id=session.pk,
        path=e.path,
        state=e.state,
        size_bytes=e.size_bytes,
        found_at=e.found_at,
        submitted_at=e.submitted_at,
        motion_done_at=e.motion_done_at,
        ctf_done_at=e.ctf_done_at,
        processed_at=e.processed_at,
        failed_at=e.failed_at,
        fail_count=e.fail_count,
        fail_reason=e.fail_reason,
        accepted=e.accepted,
        motion=None if motion is None else MotionOut(
            engine=motion.engine,
            engine_version=motion.engine_version,
            shifts_px=[tuple(xy) for xy in motion.shifts_px],
            total_drift_a=motion.total_drift_a,
            early_drift_a=motion.early_drift_a,
            late_drift_a=motion.late_drift_a,
            n_frames=motion.n_frames,
            pixel_size_a=motion.pixel_size_a,
        ),
        ctf=None if ctf is None else CtfOut(
            engine=ctf.engine,
            engine_version=ctf.engine_version,
            defocus_u_a=ctf.defocus_u_a,
            defocus_v_a=ctf.defocus_v_a,
            astigmatism_a=ctf.astigmatism_a,
            azimuth_deg=ctf.azimuth_deg,
            phase_shift_rad=ctf.phase_shift_rad,
            cross_correlation=ctf.cross_correlation,
            fit_resolution_a=ctf.fit_resolution_a,
            fit_ok=ctf.fit_ok,
            ice_ring_ratio=ctf.ice_ring_ratio,
        ),
        steps=[
            StepOut(
                step=r.step, state=r.state, engine=r.engine, engine_version=r.engine_version,
                finished_at=r.finished_at, error=r.error, result=r.result, metrics=r.metrics,
            )
            for r in e.step_results.order_by("finished_at", "id")
        ],
        tilt=_membership(e),
    )


@api.get("/steps", response={200: list[StepInfo], **ERRORS}, summary="Installed steps and their metrics")
def list_steps(request: HttpRequest) -> list[StepInfo]:
    found = registry()
    return [
        StepInfo(
            name=name,
            description=step.description,
            needs=list(step.needs),
            engines={engine_name: engine.version for engine_name, engine in sorted(step.engines.items())},
            origin=found.origins.get(name, ""),
            metrics=[
                MetricInfo(key=f"{name}.{field}", label=metric.label or field, unit=metric.unit, better=metric.better)
                for field, metric in step.metrics.items()
            ],
        )
        for name, step in sorted(found.steps.items())
    ]


@api.get("/sessions/{session_id}/metrics", response={200: MetricsOut, **ERRORS}, summary="Is processing keeping up?")
def get_metrics(
    request: HttpRequest,
    session_id: IdPath,
    window_s: Annotated[float, Query(600.0, gt=0, le=30 * 86400, description="Rates over this last stretch, s")] = 600.0,
) -> dict[str, Any]:
    session = _visible_session(request, session_id)
    arrivals_s, results, backlog, failed = queries.metric_inputs(session)
    metrics = session_metrics(arrivals_s, results, backlog=backlog, failed=failed, now_s=time.time(), window_s=window_s)
    return vars(metrics)


EXPORT_NAMES: tuple[str, ...] = ExportName.__args__  # type: ignore[attr-defined]


@api.get("/sessions/{session_id}/exports", response={200: list[ExportFile], **ERRORS}, summary="STAR exports")
def list_exports(request: HttpRequest, session_id: IdPath) -> list[dict[str, str]]:
    session = _visible_session(request, session_id)
    return [{"name": name, "url": f"/api/v1/sessions/{session.pk}/exports/{name}"} for name in EXPORT_NAMES]


@api.get(
    "/sessions/{session_id}/exports/{name}",
    response={**ERRORS, 503: Error},
    summary="Download a STAR export (RELION 3.1+), written from the database now",
    openapi_extra={"responses": {"200": {"description": "The STAR file", "content": {"text/plain": {}}}}},
)
def download_export(
    request: HttpRequest, session_id: IdPath, name: Annotated[ExportName, PathParam(description="File name")]
) -> HttpResponse:
    """Writes both exports into ``<out_dir>/exports/`` (atomically, as the controller does) and
    sends the one asked for. Exposures the curation thresholds reject are left out."""
    session = _visible_session(request, session_id)
    folder = Path(session.out_dir) / "exports"
    try:
        write_exports(session, folder)
        handle = (folder / name).open("rb")
    except OSError as exc:
        raise HttpError(503, f"cannot write the exports of session {session.pk} to {folder}: {exc.strerror or exc}") from None
    return FileResponse(handle, as_attachment=True, filename=name, content_type="text/plain; charset=utf-8")


# The compatible status of one session, as /api/v1 sees it (scripts moving to /api/v1).
@api.get("/sessions/{session_id}/status", response={200: CompatStatusOut, **ERRORS}, summary="Compatible status")
def get_status(request: HttpRequest, session_id: IdPath) -> CompatStatusOut:
    return CompatStatusOut(**vars(session_status(_visible_session(request, session_id))))


__all__ = [
    "AUTH",
    "api",
    "data_root",
    "install_error_handlers",
    "session_status",
    "set_data_root",
]
