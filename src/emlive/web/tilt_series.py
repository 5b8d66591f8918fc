"""``/api/v1`` routes of tilt series (SerialEM mdoc groups of exposures; docs/tomo.md).

A session's tilt series with their state, tilt range, counts, excluded tilts and why, the
alignment and the tomogram; one series with every tilt's results; and the series' two
pictures, the montage of its tilts and the tomogram's central slice. Same authentication and
visibility as every ``/api/v1`` route (:mod:`emlive.web.api`): another group's series answers
404 like one that does not exist. The pictures are served only from the paths the database
holds, and only when they lie inside the session's output folder: never a path from the URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from django.db.models import Count, Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from ninja import Query
from ninja.errors import HttpError

from emlive.db import queries
from emlive.db.models import Session, Tilt, TiltSeries
from emlive.web.api import ERRORS, IdPath, _visible_session, api
from emlive.web.schemas import (
    ExcludedTilt,
    TiltOut,
    TiltSeriesCounts,
    TiltSeriesDetail,
    TiltSeriesPage,
    TiltSeriesState,
    TiltSeriesSummary,
)

PICTURES = {"montage": "montage_png_path", "central-slice": "central_slice_png_path"}
"""The series' pictures by their name in the URL, and the field that holds each one's path."""


def series_queryset(session_id: int) -> QuerySet[TiltSeries]:
    """A session's tilt series, oldest first, with the number of tilts the mdoc names and the
    excluded tilts loaded (two queries however many series)."""
    excluded = Tilt.objects.exclude(excluded_reason="").order_by("tilt_angle_deg", "z_value")
    return (
        TiltSeries.objects.filter(session_id=session_id)
        .annotate(n_named=Count("tilts"))
        .prefetch_related(Prefetch("tilts", queryset=excluded, to_attr="excluded_tilts"))
        .order_by("created_at", "id")
    )


def excluded_tilts(series: TiltSeries) -> list[ExcludedTilt]:
    """The tilts left out of the reconstruction and why, in tilt-angle order (of a series read
    through :func:`series_queryset`)."""
    return [
        ExcludedTilt(z_value=t.z_value, tilt_angle_deg=t.tilt_angle_deg, movie_name=t.movie_name, reason=t.excluded_reason)
        for t in series.excluded_tilts
    ]


def picture_path(series: TiltSeries, session: Session, picture: str) -> Path | None:
    """The PNG the series' row names for ``picture`` (``montage`` or ``central-slice``), when it
    is an absolute ``.png`` path inside the session's output folder that exists; else None."""
    stored = getattr(series, PICTURES[picture], "")
    if not stored:
        return None
    path = Path(stored)
    if not path.is_absolute() or path.suffix.lower() != ".png":
        return None
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(Path(session.out_dir).resolve()) or not resolved.is_file():
        return None
    return resolved


def picture_url(series: TiltSeries, session: Session, picture: str) -> str | None:
    """The API route of the series' ``picture``, or None while it does not exist."""
    if picture_path(series, session, picture) is None:
        return None
    return f"/api/v1/sessions/{session.pk}/tilt-series/{series.pk}/{picture}.png"


def _summary(series: TiltSeries, session: Session) -> dict[str, Any]:
    """The summary of a series read through :func:`series_queryset`."""
    excluded = excluded_tilts(series)
    return {
        "id": series.pk,
        "session_id": session.pk,
        "name": series.name,
        "mdoc_path": series.mdoc_path,
        "state": series.state,
        "tilt_min_deg": series.tilt_min_deg,
        "tilt_max_deg": series.tilt_max_deg,
        "counts": TiltSeriesCounts(
            expected=series.n_tilts_expected,
            named=series.n_named,
            received=series.n_tilts_received,
            processed=series.n_tilts_processed,
            excluded=len(excluded),
        ),
        "excluded": excluded,
        "tilt_axis_nominal_deg": series.tilt_axis_nominal_deg,
        "tilt_axis_refined_deg": series.tilt_axis_refined_deg,
        "alignment_residual_px": series.alignment_residual_px,
        "pixel_size_a": series.pixel_size_a,
        "tomogram_path": series.tomogram_path or None,
        "montage_url": picture_url(series, session, "montage"),
        "central_slice_url": picture_url(series, session, "central-slice"),
        "error": series.error,
        "created_at": series.created_at,
        "updated_at": series.updated_at,
        "completed_at": series.completed_at,
        "processed_at": series.processed_at,
    }


def _tilt(t: Tilt, session: Session) -> TiltOut:
    exposure = t.exposure
    motion = getattr(exposure, "motion", None) if exposure is not None else None
    ctf = getattr(exposure, "ctf", None) if exposure is not None else None
    return TiltOut(
        z_value=t.z_value,
        movie_name=t.movie_name,
        tilt_angle_deg=t.tilt_angle_deg,
        acquisition_index=t.acquisition_index,
        acquired_at=t.acquired_at,
        dose_e_a2=t.dose_e_a2,
        pre_exposure_e_a2=t.pre_exposure_e_a2,
        exposure_id=t.exposure_id,
        exposure_state=exposure.state if exposure is not None else None,
        defocus_u_a=ctf.defocus_u_a if ctf else None,
        defocus_v_a=ctf.defocus_v_a if ctf else None,
        defocus_angle_deg=ctf.azimuth_deg if ctf else None,
        fit_resolution_a=ctf.fit_resolution_a if ctf else None,
        fit_ok=ctf.fit_ok if ctf else None,
        total_drift_a=motion.total_drift_a if motion else None,
        excluded_reason=t.excluded_reason or None,
        exposure_url=f"/api/v1/sessions/{session.pk}/exposures/{t.exposure_id}" if exposure is not None else None,
        page_url=reverse("dashboard:exposure", args=[t.exposure_id]) if exposure is not None else None,
        thumbnail_url=reverse("dashboard:thumbnail", args=[t.exposure_id]) if motion else None,
        spectrum_url=reverse("dashboard:spectrum", args=[t.exposure_id]) if ctf else None,
    )


def _visible_series(request: HttpRequest, session_id: int, series_id: int) -> tuple[Session, TiltSeries]:
    session = _visible_session(request, session_id)
    series = series_queryset(session.pk).filter(pk=series_id).first()
    if series is None:
        raise HttpError(
            404, f"session {session_id} has no tilt series {series_id}; GET /api/v1/sessions/{session_id}/tilt-series lists them"
        )
    return session, series


@api.get(
    "/sessions/{session_id}/tilt-series",
    response={200: TiltSeriesPage, **ERRORS},
    summary="A page of the session's tilt series",
)
def list_tilt_series(
    request: HttpRequest,
    session_id: IdPath,
    state: TiltSeriesState | None = None,
    limit: Annotated[int, Query(100, ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(0, ge=0, le=10**9)] = 0,
) -> dict[str, Any]:
    """Oldest first: each series' state, tilt range, counts (expected, named by the mdoc,
    received, processed, excluded), excluded tilts and why, alignment and tomogram."""
    session = _visible_session(request, session_id)
    qs = series_queryset(session.pk)
    if state is not None:
        qs = qs.filter(state=state)
    count = qs.count()
    page = list(qs[offset : offset + limit])
    return {"count": count, "limit": limit, "offset": offset, "items": [_summary(s, session) for s in page]}


@api.get(
    "/sessions/{session_id}/tilt-series/{series_id}",
    response={200: TiltSeriesDetail, **ERRORS},
    summary="One tilt series with every tilt's results",
)
def get_tilt_series(request: HttpRequest, session_id: IdPath, series_id: IdPath) -> dict[str, Any]:
    session, series = _visible_series(request, session_id, series_id)
    return _summary(series, session) | {
        "problems": [str(p) for p in series.problems_json or []],
        "result": series.result_json or {},
        "tilts": [_tilt(t, session) for t in queries.series_tilts(series).defer("exposure__motion__shifts_px", "exposure__fail_reason")],
    }


def _picture(request: HttpRequest, session_id: int, series_id: int, picture: str) -> HttpResponse:
    session, series = _visible_series(request, session_id, series_id)
    path = picture_path(series, session, picture)
    if path is None:
        raise HttpError(404, f"tilt series {series.name} has no {picture} picture yet (state {series.state})")
    # Bytes, not FileResponse: under ASGI Django warns about (and buffers) synchronous file iterators.
    response = HttpResponse(path.read_bytes(), content_type="image/png")
    response["Cache-Control"] = "private, no-cache"
    return response


_PNG = {"responses": {"200": {"description": "The PNG", "content": {"image/png": {}}}}}


@api.get(
    "/sessions/{session_id}/tilt-series/{series_id}/montage.png",
    response=ERRORS,
    summary="The montage of the series' tilts (PNG)",
    openapi_extra=_PNG,
)
def tilt_series_montage(request: HttpRequest, session_id: IdPath, series_id: IdPath) -> HttpResponse:
    return _picture(request, session_id, series_id, "montage")


@api.get(
    "/sessions/{session_id}/tilt-series/{series_id}/central-slice.png",
    response=ERRORS,
    summary="The central slice of the series' tomogram (PNG)",
    openapi_extra=_PNG,
)
def tilt_series_central_slice(request: HttpRequest, session_id: IdPath, series_id: IdPath) -> HttpResponse:
    return _picture(request, session_id, series_id, "central-slice")


__all__ = ["PICTURES", "excluded_tilts", "picture_path", "picture_url", "series_queryset"]
