"""The dashboard's tilt series (docs/tomo.md): a session's series on its page, and a page per
series with per-tilt plots against the tilt angle, the montage, the tomogram's central slice
and every tilt's results, excluded tilts marked with their reason.

Same rules as the rest of the dashboard (:mod:`emlive.web.dashboard.views`): a logged-in user,
sessions only through :func:`emlive.web.access.visible_sessions` (another group's series is a
404), files only from the paths the database holds (the pictures are the API's routes,
:mod:`emlive.web.tilt_series`, which take the dashboard's login too). The live parts are htmx
fragments that poll with a change marker and get ``204 No Content`` while nothing changed.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.db.models import Count, Max, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.html import json_script
from django.views.decorators.http import require_GET

from emlive.db import queries
from emlive.db.models import Exposure, Session, Tilt, TiltSeries
from emlive.web.access import visible_sessions
from emlive.web.dashboard import plots
from emlive.web.dashboard.views import dashboard_login_required
from emlive.web.tilt_series import picture_url, series_queryset

PARTS = ("head", "tilts")
"""The live fragments of a series' page: its summary with the pictures and the figures' data,
and its table of tilts."""


def _digest(value: object) -> str:
    return hashlib.blake2s(repr(value).encode(), digest_size=8).hexdigest()


def _stamp(t: object) -> float:
    return t.timestamp() if t is not None else 0.0  # type: ignore[attr-defined]


def _session(request: HttpRequest, session_id: int) -> Session:
    session = visible_sessions(request.user).filter(pk=session_id).first()
    if session is None:
        raise Http404("no such session")
    return session


def _series(request: HttpRequest, series_id: int) -> TiltSeries:
    found = (
        TiltSeries.objects.select_related("session__project")
        .filter(pk=series_id, session__in=visible_sessions(request.user))
        .first()
    )
    if found is None:
        raise Http404("no such tilt series")
    return found


# --- the session page's list ------------------------------------------------------------------


def session_series_marker(session: Session) -> str:
    """Changes whenever a series of the session is recorded or changes (one query)."""
    row = TiltSeries.objects.filter(session_id=session.pk).order_by().aggregate(n=Count("id"), t=Max("updated_at"))
    return _digest((row["n"], _stamp(row["t"])))


@dashboard_login_required
@require_GET
def session_tilt_series(request: HttpRequest, session_id: int) -> HttpResponse:
    """The session's tilt series (nothing when it has none), polled by its page."""
    session = _session(request, session_id)
    marker = session_series_marker(session)
    if request.GET.get("since") == marker:
        return HttpResponse(status=204)
    rows = list(series_queryset(session.pk))
    for series in rows:
        series.n_excluded = len(series.excluded_tilts)
    return render(request, "emlive/_tilt_series_list.html", {"session": session, "series_list": rows, "marker": marker})


# --- a series' page ---------------------------------------------------------------------------


def series_marker(series: TiltSeries) -> str:
    """Changes whenever the series or any of its tilts' exposures changes: the series' row
    (state, counts, result, exclusions) and its tilts' movies found, processed, failed or
    stored again (one query besides the series' row)."""
    row = Tilt.objects.filter(series_id=series.pk).order_by().aggregate(
        n=Count("id"),
        linked=Count("exposure"),
        processed=Count("id", filter=Q(exposure__state=Exposure.State.PROCESSED)),
        failed=Count("id", filter=Q(exposure__state=Exposure.State.FAILED)),
        stored=Max("exposure__ctf__updated_at"),
        failed_at=Max("exposure__failed_at"),
    )
    parts = (series.state, _stamp(series.updated_at), _stamp(series.processed_at), series.excluded_json, row["n"],
             row["linked"], row["processed"], row["failed"], _stamp(row["stored"]), _stamp(row["failed_at"]))
    return _digest(parts)


def tilt_points(tilts: list[Tilt]) -> list[plots.TiltPoint]:
    """What the plots need of each tilt (read with :func:`emlive.db.queries.series_tilts`)."""
    points = []
    for t in tilts:
        exposure = t.exposure
        motion = getattr(exposure, "motion", None) if exposure is not None else None
        ctf = getattr(exposure, "ctf", None) if exposure is not None else None
        points.append(plots.TiltPoint(
            exposure_id=t.exposure_id,
            tilt_angle_deg=t.tilt_angle_deg,
            acquisition_index=t.acquisition_index,
            pre_exposure_e_a2=t.pre_exposure_e_a2,
            defocus_u_a=ctf.defocus_u_a if ctf else None,
            defocus_v_a=ctf.defocus_v_a if ctf else None,
            fit_resolution_a=ctf.fit_resolution_a if ctf else None,
            total_drift_a=motion.total_drift_a if motion else None,
            excluded_reason=t.excluded_reason or None,
        ))
    return points


def _context(series: TiltSeries, marker: str) -> dict[str, Any]:
    session = series.session
    tilts = list(queries.series_tilts(series).defer("exposure__motion__shifts_px", "exposure__fail_reason"))
    for t in tilts:
        exposure = t.exposure
        t.motion = getattr(exposure, "motion", None) if exposure is not None else None
        t.ctf = getattr(exposure, "ctf", None) if exposure is not None else None
        t.mean_defocus_um = (t.ctf.defocus_u_a + t.ctf.defocus_v_a) / 2e4 if t.ctf else None
    figures = plots.tilt_series_figures(tilt_points(tilts))
    excluded = [t for t in tilts if t.excluded_reason]
    version = int(_stamp(series.processed_at))
    montage = picture_url(series, session, "montage")
    central = picture_url(series, session, "central-slice")
    return {
        "session": session,
        "series": series,
        "tilts": tilts,
        "n_named": len(tilts),
        "excluded": excluded,
        "montage_url": f"{montage}?v={version}" if montage else None,
        "central_slice_url": f"{central}?v={version}" if central else None,
        "figures_script": json_script(figures, "plot-figures"),
        "figure_keys": list(figures),
        "marker": marker,
    }


@dashboard_login_required
@require_GET
def tilt_series_page(request: HttpRequest, series_id: int) -> HttpResponse:
    """One tilt series: state, counts, alignment, excluded tilts and why, per-tilt plots of
    defocus, drift, dose and fit resolution against the tilt angle, the montage, the central
    slice, and every tilt."""
    series = _series(request, series_id)
    return render(request, "emlive/tilt_series.html", _context(series, series_marker(series)))


@dashboard_login_required
@require_GET
def tilt_series_part(request: HttpRequest, series_id: int, part: str) -> HttpResponse:
    """A live fragment of the series' page (:data:`PARTS`); 204 while nothing changed."""
    if part not in PARTS:
        raise Http404("no such part")
    series = _series(request, series_id)
    marker = series_marker(series)
    if request.GET.get("since") == marker:
        return HttpResponse(status=204)
    return render(request, f"emlive/_tilt_series_{part}.html", _context(series, marker))
