"""The dashboard: sessions, a live session page, exposures, curation and STAR downloads.

Every view needs a logged-in user and finds sessions only through
:func:`emlive.web.access.visible_sessions`, so another group's session answers 404 (whether it
exists is not revealed). Files are served only from paths the database holds or the output
layout defines (never a path taken from the URL): a micrograph's thumbnail (the thumbnail
step's stored ``png_path``, else ``<out_dir>/thumbnail/<name>.png``), its CTF diagnostic
(``CtfEstimate.diagnostic_png_path``), any PNG a step's stored result names in a ``Path``
field of its declared result model, the two STAR exports in ``<out_dir>/exports/``, and the
dashboard's own scripts.

Every step shows without naming it here (:mod:`emlive.web.dashboard.steps`): its stored
results on the exposure's page, its declared metrics as table columns, plots and curation
thresholds on the session's.

Live parts of the session page are htmx fragments that poll: the status panel every few
seconds; the plots and the exposure table carry a change marker (the session's
:func:`emlive.db.queries.change_marker` and :func:`emlive.db.queries.last_stored_at`) and get
``204 No Content`` (htmx keeps what it shows) until something changed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Max
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import json_script
from django.views.decorators.http import require_GET, require_POST

from emlive.curation import Curation, rejection_reasons
from emlive.db import queries
from emlive.db.export import CORRECTED_STAR, CTF_STAR, write_exports
from emlive.db.models import Exposure, Session, StepResult
from emlive.runtime.metrics import session_metrics
from emlive.web import control
from emlive.web.access import visible_sessions
from emlive.web.dashboard import plots, steps
from emlive.web.dashboard.forms import CurationForm
from emlive.web.dashboard.steps import MetricColumn

log = logging.getLogger(__name__)

EXPOSURES_PER_PAGE = 50
METRICS_WINDOW_S = 600.0
"""Rates and lag on the session page are over this last stretch of time, s."""
EXPORT_NAMES = (CTF_STAR, CORRECTED_STAR)
THUMBNAIL_STEP = "thumbnail"
"""The step whose stored ``png_path`` is an exposure's thumbnail (its folder in the layout)."""
SHOW_CHOICES = {
    "all": "all",
    "accepted": "accepted",
    "rejected": "rejected",
    "waiting": "waiting or in flight",
    "failed": "failed",
}

_STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "emlive"
_STATIC_FILES: dict[str, tuple[Callable[[], Any], str]] = {
    "htmx.min.js": (lambda: _STATIC_DIR / "htmx.min.js", "text/javascript; charset=utf-8"),
    "dashboard.js": (lambda: _STATIC_DIR / "dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": (lambda: _STATIC_DIR / "dashboard.css", "text/css; charset=utf-8"),
    "plotly.min.js": (
        lambda: resources.files("plotly") / "package_data" / "plotly.min.js",
        "text/javascript; charset=utf-8",
    ),
}


def dashboard_login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """``login_required``; an htmx poll from a page whose login expired gets the login page
    as a full-page redirect (``HX-Redirect``) instead of a login form inside a fragment."""
    wrapped = login_required(view)

    @functools.wraps(view)
    def check(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated and request.headers.get("HX-Request"):
            return HttpResponse(status=401, headers={"HX-Redirect": reverse("dashboard:login")})
        return wrapped(request, *args, **kwargs)

    return check


def _session(request: HttpRequest, session_id: int) -> Session:
    session = visible_sessions(request.user).filter(pk=session_id).first()
    if session is None:
        raise Http404("no such session")
    return session


@dataclass(frozen=True)
class SessionSteps:
    """What the session page needs to know about the session's steps: the change marker
    (exposures, thresholds, and results stored again), and the declared metrics of the steps
    besides motion and CTF that have results."""

    marker: str
    columns: list[MetricColumn]


_STEPS_CACHE: OrderedDict[tuple[int, str], list[MetricColumn]] = OrderedDict()
_STEPS_CACHE_SIZE = 64
_steps_lock = threading.Lock()


def _marker(session: Session) -> str:
    """:func:`emlive.db.queries.change_marker` with the time results were last stored (a
    result stored again with the same step times, e.g. a step added to a session whose motion
    and CTF checkpoints were reused, changes nothing else)."""
    stored = queries.last_stored_at(session)
    text = repr((queries.change_marker(session), stored.timestamp() if stored else 0))
    return hashlib.blake2s(text.encode(), digest_size=8).hexdigest()


def _session_steps(session: Session) -> SessionSteps:
    """The marker (two queries), and the metric columns, read once per session and marker in
    this process (the steps with results are found among all of the session's results)."""
    marker = _marker(session)  # before the reads: a change meanwhile is sent next time
    key = (session.pk, marker)
    with _steps_lock:
        columns = _STEPS_CACHE.get(key)
    if columns is None:
        names = queries.session_step_names(session)
        unknown = {name: queries.stored_metric_names(session, name) for name in names if steps.declared_step(name) is None}
        columns = steps.metric_columns(names, unknown)
        with _steps_lock:
            _STEPS_CACHE[key] = columns
            while len(_STEPS_CACHE) > _STEPS_CACHE_SIZE:
                _STEPS_CACHE.popitem(last=False)
    return SessionSteps(marker, columns)


def _exposure(request: HttpRequest, exposure_id: int) -> Exposure:
    exposure = (
        Exposure.objects.select_related("session__project", "motion", "ctf")
        .filter(pk=exposure_id, session__in=visible_sessions(request.user))
        .first()
    )
    if exposure is None:
        raise Http404("no such exposure")
    return exposure


def _file_response(data: bytes, content_type: str, *, cache_s: int, filename: str | None = None) -> HttpResponse:
    # Bytes, not FileResponse: under ASGI Django warns about (and buffers) synchronous file iterators.
    response = HttpResponse(data, content_type=content_type)
    response["Cache-Control"] = f"private, max-age={cache_s}" if cache_s else "no-store"
    if filename is not None:
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- pages ----------------------------------------------------------------------------------


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect(reverse("dashboard:sessions"))


def _session_rows(request: HttpRequest) -> list[Session]:
    rows = list(queries.with_progress(visible_sessions(request.user)).order_by("-created_at", "-id"))
    for row in rows:
        done = row.n_processed + row.n_failed
        row.percent_done = round(100.0 * done / row.n_exposures, 1) if row.n_exposures else 0.0
    return rows


@dashboard_login_required
@require_GET
def sessions(request: HttpRequest) -> HttpResponse:
    """Every session the user may see, with its state and progress (refreshed live)."""
    return render(request, "emlive/sessions.html", {"sessions": _session_rows(request)})


@dashboard_login_required
@require_GET
def sessions_table(request: HttpRequest) -> HttpResponse:
    return render(request, "emlive/_sessions_table.html", {"sessions": _session_rows(request)})


MetricInputs = tuple[list[float], list[tuple[float, float]], int, int]


def _status_context(session: Session, inputs: MetricInputs | None = None) -> dict[str, Any]:
    arrivals, results, backlog, failed = inputs or queries.metric_inputs(session)
    metrics = session_metrics(arrivals, results, backlog=backlog, failed=failed, now_s=time.time(), window_s=METRICS_WINDOW_S)
    counts = queries.counts_by_state(session)
    verdicts = queries.curation_counts(session)
    total = sum(counts.values())
    done = counts["processed"] + counts["failed"]
    return {
        "session": session,
        "metrics": metrics,
        "counts": counts,
        "verdicts": verdicts,
        "total": total,
        "percent_done": round(100.0 * done / total, 1) if total else 0.0,
        "keeping_up": metrics.processed_per_min >= metrics.arrivals_per_min or metrics.backlog <= 2,
        "window_min": round(METRICS_WINDOW_S / 60),
    }


_FIGURES_CACHE: OrderedDict[tuple[int, str], tuple[str, list[str]]] = OrderedDict()
_FIGURES_CACHE_SIZE = 8
_figures_lock = threading.Lock()


def _plots_context(session: Session, state: SessionSteps, inputs: MetricInputs | None = None) -> dict[str, Any]:
    """The figures as a JSON ``<script>``, built once per session and change marker in this
    process (everyone watching a session shares them; a large session's figures take about a
    second to build), and their keys (one plot each)."""
    key = (session.pk, state.marker)
    with _figures_lock:
        cached = _FIGURES_CACHE.get(key)
    if cached is None:
        curation = queries.session_curation(session)
        arrivals, results, _, _ = inputs or queries.metric_inputs(session)
        series = queries.result_series(session, curation)
        figures = plots.session_figures(
            series, arrivals, [done for _, done in results], _metric_series(session, series, state.columns)
        )
        cached = (json_script(figures, "plot-figures"), list(figures))
        with _figures_lock:
            _FIGURES_CACHE[key] = cached
            while len(_FIGURES_CACHE) > _FIGURES_CACHE_SIZE:
                _FIGURES_CACHE.popitem(last=False)
    script, figure_keys = cached
    return {"session": session, "figures_script": script, "figure_keys": figure_keys, "plots_marker": state.marker}


def _metric_series(
    session: Session, series: queries.ResultSeries, columns: Sequence[MetricColumn]
) -> list[plots.MetricSeries]:
    if not columns:
        return []
    values = queries.session_step_metrics(session, sorted({column.step for column in columns}))
    return [
        plots.MetricSeries(
            column.slug, column.title, column.heading, [values.get(pk, {}).get(column.key) for pk in series.exposure_id]
        )
        for column in columns
    ]


def _show(request: HttpRequest) -> str:
    show = request.GET.get("show", "all")
    return show if show in SHOW_CHOICES else "all"


def _page_number(request: HttpRequest) -> int:
    try:
        return max(1, int(request.GET.get("page", "1")))
    except ValueError:
        return 1


def _exposures_context(request: HttpRequest, session: Session, state: SessionSteps) -> dict[str, Any]:
    curation = queries.session_curation(session)
    show = _show(request)
    rows = queries.with_verdict(
        Exposure.objects.filter(session_id=session.pk).select_related("motion", "ctf"), curation
    ).order_by("-found_at", "-id")
    match show:
        case "accepted":
            rows = rows.filter(accepted=True)
        case "rejected":
            rows = rows.filter(accepted=False)
        case "waiting":
            rows = rows.filter(state__in=(Exposure.State.FOUND, Exposure.State.SUBMITTED))
        case "failed":
            rows = rows.filter(state=Exposure.State.FAILED)
    page = Paginator(rows, EXPOSURES_PER_PAGE).get_page(_page_number(request))
    page.object_list = list(page.object_list)
    values = queries.step_metrics([e.pk for e in page.object_list]) if state.columns else {}
    for e in page.object_list:
        ctf = getattr(e, "ctf", None)
        e.mean_defocus_um = (ctf.defocus_u_a + ctf.defocus_v_a) / 2e4 if ctf is not None else None
        mine = values.get(e.pk, {})
        e.metric_values = [steps.format_metric(mine.get(column.key)) for column in state.columns]
    return {
        "session": session,
        "page": page,
        "show": show,
        "show_choices": SHOW_CHOICES,
        "marker": state.marker,
        "metric_columns": state.columns,
        "n_columns": 10 + len(state.columns),
    }


@dashboard_login_required
@require_GET
def session_page(request: HttpRequest, session_id: int) -> HttpResponse:
    """One session: status and rates, live plots, curation, exports and its exposures."""
    session = _session(request, session_id)
    state = _session_steps(session)
    form = CurationForm.from_curation(queries.session_curation(session), state.columns)
    return _render_session(request, session, form, state)


def _render_session(
    request: HttpRequest, session: Session, form: CurationForm, state: SessionSteps, *, status: int = 200
) -> HttpResponse:
    inputs = queries.metric_inputs(session)
    context = {
        **_status_context(session, inputs),
        **_plots_context(session, state, inputs),
        **_exposures_context(request, session, state),
        "form": form,
        "export_names": EXPORT_NAMES,
        "notice": {"saved": "Thresholds saved; the exports were rewritten."}.get(request.GET.get("curation", "")),
    }
    return render(request, "emlive/session.html", context, status=status)


@dashboard_login_required
@require_GET
def session_status(request: HttpRequest, session_id: int) -> HttpResponse:
    return render(request, "emlive/_status.html", _status_context(_session(request, session_id)))


@dashboard_login_required
@require_GET
def session_plots(request: HttpRequest, session_id: int) -> HttpResponse:
    session = _session(request, session_id)
    state = _session_steps(session)
    if request.GET.get("since") == state.marker:
        return HttpResponse(status=204)
    return render(request, "emlive/_plots.html", _plots_context(session, state))


@dashboard_login_required
@require_GET
def session_exposures(request: HttpRequest, session_id: int) -> HttpResponse:
    session = _session(request, session_id)
    state = _session_steps(session)
    if request.GET.get("since") == state.marker:
        return HttpResponse(status=204)
    return render(request, "emlive/_exposures.html", _exposures_context(request, session, state))


@dashboard_login_required
@require_POST
def set_curation(request: HttpRequest, session_id: int) -> HttpResponse:
    """Save the thresholds (validated by :class:`Curation`) and rewrite the STAR exports, so
    rejected micrographs leave them at once."""
    session = _session(request, session_id)
    state = _session_steps(session)
    form = CurationForm(request.POST, metrics=CurationForm.metric_fields_for(
        state.columns, queries.session_curation(session), request.POST
    ))
    if not form.is_valid():
        return _render_session(request, session, form, state, status=400)
    curation: Curation = form.curation
    # update(), not save(): the controller may change the session's state meanwhile.
    Session.objects.filter(pk=session.pk).update(
        curation_json=curation.model_dump(mode="json"), updated_at=timezone.now()
    )
    write_exports(session, Path(session.out_dir) / "exports")
    log.info("%s: curation thresholds set to %s by %s", session, curation.model_dump(exclude_defaults=True), request.user)
    return HttpResponseRedirect(reverse("dashboard:session", args=[session.pk]) + "?curation=saved#curation")


@dashboard_login_required
@require_POST
def control_session(request: HttpRequest, session_id: int, action: str) -> HttpResponse:
    """Stop, or start/resume, a session's processing (the controller follows the database)."""
    session = _session(request, session_id)
    if action == "stop":
        control.stop_processing(session)
    else:
        control.resume_processing(session)
    log.info("%s: %s by %s", session, action, request.user)
    return HttpResponseRedirect(reverse("dashboard:session", args=[session.pk]))


def _exports_fresh(session: Session, path: Path) -> bool:
    if not path.is_file():
        return False
    last_result = Exposure.objects.filter(session_id=session.pk).aggregate(t=Max("ctf_done_at"))["t"]
    changed = max(t for t in (session.updated_at, last_result) if t is not None)
    return path.stat().st_mtime >= changed.timestamp()


@dashboard_login_required
@require_GET
def download_export(request: HttpRequest, session_id: int, name: str) -> HttpResponse:
    """A STAR export as written from the database (rewritten first when older than the
    session's latest result or threshold change)."""
    session = _session(request, session_id)
    if name not in EXPORT_NAMES:
        raise Http404("no such export")
    folder = Path(session.out_dir) / "exports"
    path = folder / name
    if not _exports_fresh(session, path):
        write_exports(session, folder)
    return _file_response(path.read_bytes(), "text/plain; charset=utf-8", cache_s=0, filename=f"{session.name}_{name}")


@dashboard_login_required
@require_GET
def exposure_page(request: HttpRequest, exposure_id: int) -> HttpResponse:
    """One exposure: its results, verdict, drift plot, micrograph and CTF spectrum, and every
    step's stored result with its metrics and pictures."""
    exposure = _exposure(request, exposure_id)
    session = exposure.session
    curation = queries.session_curation(session)
    motion = getattr(exposure, "motion", None)
    ctf = getattr(exposure, "ctf", None)
    figure = plots.drift_figure(motion.shifts_px, pixel_size_a=session.pixel_size_a) if motion else None
    verdict = queries.with_verdict(Exposure.objects.filter(pk=exposure.pk), curation).values_list("accepted", flat=True).get()
    results = list(exposure.step_results.order_by("finished_at", "id"))
    metrics = {f"{r.step}.{name}": value for r in results if r.state == StepResult.State.DONE for name, value in r.metrics.items()}
    failing = (
        rejection_reasons(
            curation, fit_resolution_a=ctf.fit_resolution_a, total_drift_a=motion.total_drift_a,
            defocus_u_a=ctf.defocus_u_a, defocus_v_a=ctf.defocus_v_a, fit_ok=ctf.fit_ok, ice_ring_ratio=ctf.ice_ring_ratio,
            metrics=metrics,
        )
        if motion and ctf
        else []
    )
    thumbnail_path = _thumbnail_path(exposure, _stored_thumbnail(results))
    spectrum_path = _spectrum_path(ctf.diagnostic_png_path) if ctf else None
    step_views = [
        steps.step_view(r.step, r.state, r.engine, r.engine_version, r.finished_at, r.error, r.result, r.metrics)
        for r in results
    ]
    shown = {p.resolve() for p in (thumbnail_path, spectrum_path) if p is not None and p.is_file()}
    pictures = [p for view in step_views for p in view.pictures if p.path.resolve() not in shown]  # not twice
    return render(
        request,
        "emlive/exposure.html",
        {
            "session": session,
            "exposure": exposure,
            "motion": motion,
            "ctf": ctf,
            "mean_defocus_a": (ctf.defocus_u_a + ctf.defocus_v_a) / 2 if ctf else None,
            "accepted": verdict,
            "failing": failing,
            "figures": {"drift": figure} if figure else {},
            "has_thumbnail": thumbnail_path is not None and thumbnail_path.is_file(),
            "has_spectrum": spectrum_path is not None,
            "steps": step_views,
            "step_pictures": pictures,
        },
    )


# --- files ----------------------------------------------------------------------------------


def _stored_thumbnail(results: Sequence[StepResult]) -> object:
    """The thumbnail step's stored ``png_path`` among an exposure's step results (None if none)."""
    for r in results:
        if r.step == THUMBNAIL_STEP and r.state == StepResult.State.DONE:
            return r.result.get("png_path")
    return None


def _thumbnail_path(exposure: Exposure, stored: object = None) -> Path | None:
    """The thumbnail step's stored ``png_path`` when given, else the layout's
    ``<out_dir>/thumbnail/<name>.png`` (name = the movie's path under raw/ minus its suffix);
    None for a path that would leave the session's thumbnail folder or is not a PNG."""
    folder = (Path(exposure.session.out_dir) / THUMBNAIL_STEP).resolve()
    if isinstance(stored, str) and stored:
        candidate = Path(stored)
        if not candidate.is_absolute() or candidate.suffix.lower() != ".png":
            return None
        candidate = candidate.resolve()
    else:
        name = PurePosixPath(exposure.path).with_suffix("")
        candidate = (folder / Path(*name.parts)).with_name(name.name + ".png").resolve()
    return candidate if candidate.is_relative_to(folder) else None


def _spectrum_path(stored: str) -> Path | None:
    path = Path(stored)
    return path if stored and path.is_absolute() and path.suffix.lower() == ".png" and path.is_file() else None


@dashboard_login_required
@require_GET
def thumbnail(request: HttpRequest, exposure_id: int) -> HttpResponse:
    """The micrograph's thumbnail PNG."""
    exposure = _exposure(request, exposure_id)
    results = StepResult.objects.filter(exposure=exposure, step=THUMBNAIL_STEP)
    path = _thumbnail_path(exposure, _stored_thumbnail(list(results)))
    if path is None or not path.is_file():
        raise Http404("no thumbnail yet")
    return _file_response(path.read_bytes(), "image/png", cache_s=60)


@dashboard_login_required
@require_GET
def spectrum(request: HttpRequest, exposure_id: int) -> HttpResponse:
    """The CTF diagnostic PNG (power spectrum with the fitted model)."""
    ctf = getattr(_exposure(request, exposure_id), "ctf", None)
    path = _spectrum_path(ctf.diagnostic_png_path) if ctf is not None else None
    if path is None:
        raise Http404("no CTF spectrum yet")
    return _file_response(path.read_bytes(), "image/png", cache_s=60)


@dashboard_login_required
@require_GET
def step_picture(request: HttpRequest, exposure_id: int, step: str, field: str) -> HttpResponse:
    """A PNG a step's stored result names in ``field``: only a ``Path`` field of the step's
    declared result model (:func:`emlive.web.dashboard.steps.picture_path`); the file's path
    comes from the database."""
    exposure = _exposure(request, exposure_id)
    stored = (
        StepResult.objects.filter(exposure=exposure, step=step, state=StepResult.State.DONE)
        .values_list("result", flat=True)
        .first()
    )
    path = steps.picture_path(step, field, stored)
    if path is None:
        raise Http404("no such picture")
    return _file_response(path.read_bytes(), "image/png", cache_s=60)


@functools.cache
def _static_bytes(name: str) -> bytes:
    locate, _ = _STATIC_FILES[name]
    return locate().read_bytes()


@require_GET
def static_file(request: HttpRequest, name: str) -> HttpResponse:
    """The dashboard's scripts and style (htmx, Plotly from its wheel): a fixed list, no CDN."""
    if name not in _STATIC_FILES:
        raise Http404("no such file")
    response = HttpResponse(_static_bytes(name), content_type=_STATIC_FILES[name][1])
    response["Cache-Control"] = "public, max-age=3600"
    return response
