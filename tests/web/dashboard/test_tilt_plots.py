"""The tilt-series page's figures (pure: no database, no browser)."""

from __future__ import annotations

from emlive.web.dashboard import plots


def tilt(angle: float, order: int | None, *, reason: str | None = None, exposure_id: int | None = None) -> plots.TiltPoint:
    known = order is not None
    return plots.TiltPoint(
        exposure_id=exposure_id if exposure_id is not None else (100 + order if known else None),
        tilt_angle_deg=angle,
        acquisition_index=order,
        pre_exposure_e_a2=3.0 * order if known else None,
        defocus_u_a=30000.0 + 100 * angle if known else None,
        defocus_v_a=29000.0 + 100 * angle if known else None,
        fit_resolution_a=8.0 + abs(angle) / 10 if known else None,
        total_drift_a=2.0 + order if known else None,
        excluded_reason=reason,
    )


def test_tilts_are_drawn_in_angle_order_against_the_angle_with_excluded_ones_apart():
    # dose-symmetric: 0, +3, -3, -6, +6 acquired in that order; -6 is dark
    tilts = [tilt(6.0, 4), tilt(-3.0, 2), tilt(0.0, 0), tilt(-6.0, 3, reason="dark: mean 12 counts"), tilt(3.0, 1)]
    figures = plots.tilt_series_figures(tilts)
    assert tuple(figures) == plots.TILT_FIGURE_KEYS
    used, excluded = figures["tilt-dose"]["data"]
    assert used["x"] == [-3.0, 0.0, 3.0, 6.0] and used["y"] == [6.0, 0.0, 3.0, 12.0]  # the V of a dose-symmetric series
    assert used["customdata"] == [102, 100, 101, 104] and used["name"] == "used (4)" and used["mode"] == "lines+markers"
    assert excluded["x"] == [-6.0] and excluded["y"] == [9.0] and excluded["customdata"] == [103]
    assert excluded["text"] == ["acquired #4<br>excluded: dark: mean 12 counts"] and excluded["name"] == "excluded (1)"
    assert used["text"][1] == "acquired #1"
    defocus = figures["tilt-defocus"]["data"][0]
    assert defocus["y"] == [2.92, 2.95, 2.98, 3.01]  # mean of U and V, µm
    assert figures["tilt-drift"]["data"][0]["y"] == [4.0, 2.0, 3.0, 6.0]
    assert figures["tilt-resolution"]["layout"]["xaxis"]["title"]["text"] == "tilt angle (°)"
    assert all(f["layout"]["uirevision"] == "keep" for f in figures.values())


def test_a_tilt_not_processed_yet_is_a_gap_not_a_zero():
    figures = plots.tilt_series_figures([tilt(0.0, 0), tilt(3.0, None), tilt(-3.0, 1)])
    used = figures["tilt-defocus"]["data"][0]
    assert used["x"] == [-3.0, 0.0, 3.0] and used["y"][2] is None and used["connectgaps"] is False
    assert used["customdata"][2] is None and used["text"][2] == "not acquired"


def test_an_empty_series_has_empty_figures():
    figures = plots.tilt_series_figures([])
    assert all(f["data"][0]["x"] == [] and f["data"][1]["x"] == [] for f in figures.values())
