"""Plotly figures of the dashboard, as plain JSON-ready dicts (pure: numbers in, dicts out).

The browser draws them with the Plotly JS bundled in the ``plotly`` wheel (``Plotly.react``),
so a refresh re-renders from new JSON without reloading the page and keeps the user's zoom
(``uirevision``). Time runs along x as minutes since the session's first movie was written
(movie mtime = acquisition time). Accepted and rejected exposures are separate traces, so
the curation thresholds show in every plot; each point carries its exposure id
(``customdata``) so a click opens the exposure's page. Besides the fixed figures
(:data:`FIGURE_KEYS`), every declared metric of another step gets its own
(:class:`MetricSeries`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the dataclass lives with the query that fills it (Django models)
    from emlive.db.queries import ResultSeries

Figure = dict[str, Any]

ACCEPTED_COLOR = "#1f77b4"
REJECTED_COLOR = "#d62728"
ARRIVED_COLOR = "#7f7f7f"
WEBGL_ABOVE_POINTS = 3000
"""Above this many points the time series use WebGL (``scattergl``); SVG below (works without a GPU)."""
MAX_CURVE_POINTS = 400
"""Cumulative curves are thinned to at most this many points."""

_TIME_SERIES = (
    # (figure key, series attribute, title, y axis title, scale)
    ("defocus", "defocus_a", "Defocus", "mean defocus (µm)", 1e-4),
    ("resolution", "fit_resolution_a", "CTF fit resolution", "fit resolution (Å)", 1.0),
    ("drift", "total_drift_a", "Total drift", "total drift (Å)", 1.0),
    ("ice", "ice_ring_ratio", "Ice-ring ratio", "ice-ring ratio (~1 vitreous)", 1.0),
)
_HISTOGRAMS = (
    ("defocus_hist", "defocus_a", "Defocus distribution", "mean defocus (µm)", 1e-4),
    ("resolution_hist", "fit_resolution_a", "Fit resolution distribution", "fit resolution (Å)", 1.0),
    ("drift_hist", "total_drift_a", "Drift distribution", "total drift (Å)", 1.0),
)
FIGURE_KEYS = ("rates", *(key for key, *_ in _TIME_SERIES), *(key for key, *_ in _HISTOGRAMS))


def _layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "xaxis": {"title": {"text": x_title}},
        "yaxis": {"title": {"text": y_title}},
        "margin": {"l": 55, "r": 10, "t": 35, "b": 80},
        "height": 290,
        "showlegend": True,
        "legend": {"orientation": "h", "y": -0.35, "yanchor": "top", "traceorder": "normal", "font": {"size": 11}},
        "uirevision": "keep",
        **extra,
    }


def _round(values: Sequence[float | None], digits: int) -> list[float | None]:
    return [None if v is None else round(float(v), digits) for v in values]


@dataclass(frozen=True)
class MetricSeries:
    """A declared metric of a step besides motion and CTF, one value per exposure of the
    :class:`ResultSeries` (None where the step did not run or failed); ``key`` names its
    figures (``key`` and ``key + HISTOGRAM_SUFFIX``)."""

    key: str
    title: str
    axis_title: str
    values: Sequence[float | None]


HISTOGRAM_SUFFIX = "-hist"


def session_figures(
    series: ResultSeries,
    arrivals_s: Sequence[float],
    done_s: Sequence[float],
    metrics: Sequence[MetricSeries] = (),
) -> dict[str, Figure]:
    """Every figure of a session page: ``rates`` (movies acquired and processed over time),
    the time series of defocus, fit resolution, drift and ice, and their histograms; then a
    time series and a histogram of each of ``metrics`` (only the exposures that have it)."""
    start_s = min(arrivals_s[0] if arrivals_s else np.inf, series.acquired_s[0] if series.acquired_s else np.inf)
    start_s = 0.0 if not np.isfinite(start_s) else float(start_s)
    minutes = _round([(t - start_s) / 60.0 for t in series.acquired_s], 3)
    accepted = np.asarray(series.accepted, dtype=bool)
    figures: dict[str, Figure] = {"rates": rates_figure(arrivals_s, done_s, start_s=start_s)}
    kind = "scattergl" if len(minutes) > WEBGL_ABOVE_POINTS else "scatter"
    for key, attribute, title, y_title, scale in _TIME_SERIES:
        values = [None if v is None else v * scale for v in getattr(series, attribute)]
        figures[key] = time_series_figure(
            minutes, values, accepted, series.exposure_id, title=title, y_title=y_title, kind=kind
        )
    for key, attribute, title, x_title, scale in _HISTOGRAMS:
        figures[key] = histogram_figure(
            np.asarray(getattr(series, attribute), dtype=float) * scale, accepted, title=title, x_title=x_title
        )
    for metric in metrics:
        present = [i for i, v in enumerate(metric.values) if v is not None]  # exposures the step ran on
        keep = np.asarray(present, dtype=int)
        figures[metric.key] = time_series_figure(
            [minutes[i] for i in present], [metric.values[i] for i in present], accepted[keep],
            [series.exposure_id[i] for i in present], title=metric.title, y_title=metric.axis_title, kind=kind,
        )
        figures[f"{metric.key}{HISTOGRAM_SUFFIX}"] = histogram_figure(
            np.asarray([metric.values[i] for i in present], dtype=float), accepted[keep],
            title=f"{metric.title}: distribution", x_title=metric.axis_title,
        )
    return figures


def time_series_figure(
    minutes: Sequence[float | None],
    values: Sequence[float | None],
    accepted: np.ndarray,
    exposure_ids: Sequence[int],
    *,
    title: str,
    y_title: str,
    kind: str = "scatter",
) -> Figure:
    """One value per exposure against time, accepted and rejected exposures as two traces
    (blue dots, red crosses), each point carrying its exposure id."""
    traces = []
    for name, keep, color, symbol in (
        ("accepted", accepted, ACCEPTED_COLOR, "circle"),
        ("rejected", ~accepted, REJECTED_COLOR, "x"),
    ):
        index = np.flatnonzero(keep)
        traces.append({
            "type": kind,
            "mode": "markers",
            "name": f"{name} ({len(index)})",
            "x": [minutes[i] for i in index],
            "y": _round([values[i] for i in index], 4),
            "customdata": [exposure_ids[i] for i in index],
            "hovertemplate": f"%{{y}}<br>{name}, exposure %{{customdata}}<extra></extra>",
            "marker": {"color": color, "size": 6, "symbol": symbol},
        })
    return {"data": traces, "layout": _layout(title, "minutes since the first movie", y_title)}


def histogram_figure(values: np.ndarray, accepted: np.ndarray, *, title: str, x_title: str, bins: int = 30) -> Figure:
    """Counts of accepted and rejected exposures in shared bins (binned here: a few numbers to
    send instead of every value), stacked."""
    finite = np.isfinite(values)
    edges = np.histogram_bin_edges(values[finite], bins=bins) if finite.any() else np.array([0.0, 1.0])
    centers = _round(((edges[:-1] + edges[1:]) / 2).tolist(), 4)
    traces = []
    for name, keep, color in (("accepted", accepted, ACCEPTED_COLOR), ("rejected", ~accepted, REJECTED_COLOR)):
        counts, _ = np.histogram(values[finite & keep], bins=edges)
        traces.append({
            "type": "bar",
            "name": f"{name} ({int(counts.sum())})",
            "x": centers,
            "y": counts.tolist(),
            "width": float(edges[1] - edges[0]),
            "marker": {"color": color},
        })
    return {"data": traces, "layout": _layout(title, x_title, "exposures", barmode="stack", bargap=0.05)}


def _cumulative(times_s: Sequence[float], start_s: float) -> tuple[list[float], list[int]]:
    times = np.sort(np.asarray(times_s, dtype=float))
    counts = np.arange(1, len(times) + 1)
    if len(times) > MAX_CURVE_POINTS:
        keep = np.unique(np.linspace(0, len(times) - 1, MAX_CURVE_POINTS).round().astype(int))
        times, counts = times[keep], counts[keep]
    return _round(((times - start_s) / 60.0).tolist(), 3), counts.tolist()  # type: ignore[return-value]


def rates_figure(arrivals_s: Sequence[float], done_s: Sequence[float], *, start_s: float) -> Figure:
    """Movies acquired and exposures processed so far, against time: processing keeps up when
    the two curves run together (the horizontal gap is the lag, the vertical one the backlog)."""
    traces = []
    for name, times, color in (("acquired", arrivals_s, ARRIVED_COLOR), ("processed", done_s, ACCEPTED_COLOR)):
        x, y = _cumulative(times, start_s)
        traces.append({"type": "scatter", "mode": "lines", "line": {"shape": "hv", "color": color}, "name": name, "x": x, "y": y})
    return {"data": traces, "layout": _layout("Acquisition and processing", "minutes since the first movie", "movies")}


def drift_figure(shifts_px: Sequence[Sequence[float]], *, pixel_size_a: float) -> Figure:
    """One exposure's frame trajectory: the per-frame correction (RELION's shift, px of the
    unbinned movie) as a path in x–y, frame numbers on hover; the axes say Å too."""
    shifts = np.asarray(shifts_px, dtype=float).reshape(-1, 2)
    frames = list(range(1, len(shifts) + 1))
    trace = {
        "type": "scatter",
        "mode": "lines+markers",
        "name": "correction",
        "x": _round(shifts[:, 0].tolist(), 3),
        "y": _round(shifts[:, 1].tolist(), 3),
        "customdata": frames,
        "hovertemplate": "frame %{customdata}<br>x %{x} px, y %{y} px<extra></extra>",
        "marker": {"size": 6, "color": frames, "colorscale": "Viridis", "showscale": False},
        "line": {"color": "#999"},
    }
    first = {
        "type": "scatter", "mode": "markers", "name": "frame 1", "x": trace["x"][:1], "y": trace["y"][:1],
        "marker": {"size": 11, "symbol": "circle-open", "color": "#000"},
    }
    layout = _layout(
        "Drift (per-frame correction)",
        f"x shift (px, {pixel_size_a:g} Å/px)",
        "y shift (px)",
        height=380,
    )
    layout["yaxis"]["scaleanchor"] = "x"
    return {"data": [trace, first], "layout": layout}


# --- Tilt series -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TiltPoint:
    """One tilt of a tilt series as its page plots it: the nominal stage tilt (°), where it
    came in the acquisition (0 = first), the dose before it (e/Å²), its CTF and drift (None
    until known) and, for an excluded view, why."""

    exposure_id: int | None
    tilt_angle_deg: float
    acquisition_index: int | None
    pre_exposure_e_a2: float | None
    defocus_u_a: float | None
    defocus_v_a: float | None
    fit_resolution_a: float | None
    total_drift_a: float | None
    excluded_reason: str | None = None


_TILT_SERIES = (
    # (figure key, title, y axis title, value of a tilt)
    ("tilt-defocus", "Defocus", "mean defocus (µm)",
     lambda t: None if t.defocus_u_a is None or t.defocus_v_a is None else (t.defocus_u_a + t.defocus_v_a) / 2e4),
    ("tilt-drift", "Total drift", "total drift (Å)", lambda t: t.total_drift_a),
    ("tilt-dose", "Dose before each tilt", "pre-exposure (e/Å²)", lambda t: t.pre_exposure_e_a2),
    ("tilt-resolution", "CTF fit resolution", "fit resolution (Å)", lambda t: t.fit_resolution_a),
)  # fmt: skip
TILT_FIGURE_KEYS = tuple(key for key, *_ in _TILT_SERIES)
EXCLUDED_COLOR = REJECTED_COLOR


def tilt_series_figures(tilts: Sequence[TiltPoint]) -> dict[str, Figure]:
    """The figures of a tilt-series page: mean defocus, total drift, the dose before each
    tilt (accumulated in acquisition order: a dose-symmetric series draws a V) and the CTF
    fit resolution, each against the nominal tilt angle. Tilts used by the series are a blue
    line in angle order; excluded ones are red crosses whose hover says why. Each point
    carries its exposure id (a click opens the tilt's exposure page)."""
    ordered = sorted(tilts, key=lambda t: t.tilt_angle_deg)
    return {
        key: tilt_figure(ordered, [value(t) for t in ordered], title=title, y_title=y_title)
        for key, title, y_title, value in _TILT_SERIES
    }


def tilt_figure(tilts: Sequence[TiltPoint], values: Sequence[float | None], *, title: str, y_title: str) -> Figure:
    """``values`` (one per tilt, None where unknown) against the tilts' angles: the tilts the
    series uses and the excluded ones as two traces; hover shows the acquisition order and,
    for an excluded tilt, the reason."""
    traces = []
    for name, excluded, color, symbol, mode in (
        ("used", False, ACCEPTED_COLOR, "circle", "lines+markers"),
        ("excluded", True, EXCLUDED_COLOR, "x", "markers"),
    ):
        index = [i for i, t in enumerate(tilts) if (t.excluded_reason is not None) == excluded]
        texts = [
            f"acquired #{tilts[i].acquisition_index + 1}" if tilts[i].acquisition_index is not None else "not acquired"
            for i in index
        ]
        if excluded:
            texts = [f"{text}<br>excluded: {tilts[i].excluded_reason}" for text, i in zip(texts, index, strict=True)]
        traces.append({
            "type": "scatter",
            "mode": mode,
            "name": f"{name} ({len(index)})",
            "x": _round([tilts[i].tilt_angle_deg for i in index], 3),
            "y": _round([values[i] for i in index], 4),
            "text": texts,
            "customdata": [tilts[i].exposure_id for i in index],
            "hovertemplate": "%{x}°: %{y}<br>%{text}<extra></extra>",
            "marker": {"color": color, "size": 7 if excluded else 6, "symbol": symbol},
            "line": {"color": color},
            "connectgaps": False,
        })
    return {"data": traces, "layout": _layout(title, "tilt angle (°)", y_title)}
