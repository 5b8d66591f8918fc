"""The dashboard's figures (pure: no database, no browser)."""

from __future__ import annotations

from types import SimpleNamespace

from emlive.web.dashboard import plots

T0 = 1_700_000_000.0


def series(n: int, rejected: set[int] = frozenset()):
    """n exposures a minute apart; defocus 1.0, 1.1 … µm, fit resolution 3, 4 … Å."""
    return SimpleNamespace(
        exposure_id=list(range(100, 100 + n)),
        path=[f"m{i}.tif" for i in range(n)],
        acquired_s=[T0 + 60 * i for i in range(n)],
        defocus_a=[10000.0 + 1000 * i for i in range(n)],
        astigmatism_a=[200.0] * n,
        fit_resolution_a=[3.0 + i for i in range(n)],
        total_drift_a=[5.0] * n,
        ice_ring_ratio=[None if i == 0 else 1.0 for i in range(n)],
        accepted=[i not in rejected for i in range(n)],
    )


def test_time_series_split_accepted_from_rejected_with_their_exposure_ids():
    figures = plots.session_figures(series(4, rejected={1, 3}), [T0 + 60 * i for i in range(5)], [T0 + 60 * i + 30 for i in range(4)])
    assert set(figures) == set(plots.FIGURE_KEYS)
    accepted, rejected = figures["defocus"]["data"]
    assert (accepted["x"], accepted["y"], accepted["customdata"]) == ([0.0, 2.0], [1.0, 1.2], [100, 102])
    assert (rejected["x"], rejected["y"], rejected["customdata"]) == ([1.0, 3.0], [1.1, 1.3], [101, 103])
    assert accepted["name"] == "accepted (2)" and accepted["type"] == "scatter"
    assert figures["ice"]["data"][0]["y"] == [None, 1.0]  # not measured: a gap, not a zero
    assert all(f["layout"]["uirevision"] == "keep" for f in figures.values())


def test_histograms_count_every_exposure_once():
    figures = plots.session_figures(series(10, rejected={0, 9}), [], [])
    accepted, rejected = figures["resolution_hist"]["data"]
    assert sum(accepted["y"]) == 8 and sum(rejected["y"]) == 2
    assert accepted["x"] == rejected["x"] and figures["resolution_hist"]["layout"]["barmode"] == "stack"


def test_an_empty_session_has_empty_figures():
    figures = plots.session_figures(series(0), [], [])
    assert figures["defocus"]["data"][0]["x"] == [] and figures["rates"]["data"][0]["y"] == []
    assert sum(figures["drift_hist"]["data"][0]["y"]) == 0


def test_rate_curves_count_movies_and_results_and_stay_small():
    arrivals = [T0 + i for i in range(5000)]
    figure = plots.rates_figure(arrivals, arrivals[:10], start_s=T0)
    acquired, processed = figure["data"]
    assert len(acquired["x"]) <= plots.MAX_CURVE_POINTS and acquired["y"][-1] == 5000 and acquired["y"][0] == 1
    assert processed["y"] == list(range(1, 11)) and processed["x"][-1] == round(9 / 60, 3)


def test_large_sessions_are_drawn_with_webgl():
    n = plots.WEBGL_ABOVE_POINTS + 1
    assert plots.session_figures(series(n), [], [])["drift"]["data"][0]["type"] == "scattergl"


def test_the_drift_plot_is_the_frame_trajectory():
    figure = plots.drift_figure([[0.0, 0.0], [-1.0, 0.5], [-1.5, 2.0]], pixel_size_a=0.83)
    path = figure["data"][0]
    assert path["x"] == [0.0, -1.0, -1.5] and path["y"] == [0.0, 0.5, 2.0] and path["customdata"] == [1, 2, 3]
    assert figure["layout"]["yaxis"]["scaleanchor"] == "x" and "0.83 Å/px" in figure["layout"]["xaxis"]["title"]["text"]


def test_a_step_metric_is_plotted_where_the_step_has_a_value():
    particles = plots.MetricSeries("pick-n_particles", "Particles (pick)", "Particles", [50, None, 30, 10])
    figures = plots.session_figures(series(4, rejected={3}), [], [], [particles])
    accepted, rejected = figures["pick-n_particles"]["data"]
    assert (accepted["x"], accepted["y"], accepted["customdata"]) == ([0.0, 2.0], [50, 30], [100, 102])
    assert (rejected["x"], rejected["y"], rejected["customdata"]) == ([3.0], [10], [103])
    assert accepted["name"] == "accepted (2)" and figures["pick-n_particles"]["layout"]["yaxis"]["title"]["text"] == "Particles"
    counts = figures["pick-n_particles" + plots.HISTOGRAM_SUFFIX]["data"]
    assert sum(counts[0]["y"]) == 2 and sum(counts[1]["y"]) == 1
    empty = plots.MetricSeries("blob-score", "blob.score", "blob.score", [None] * 4)
    assert plots.session_figures(series(4), [], [], [empty])["blob-score"]["data"][0]["x"] == []


def test_every_figure_is_valid_plotly():
    """Plotly's own schema accepts every trace and layout property the dashboard sends."""
    import plotly.graph_objects as go

    figures = plots.session_figures(series(5, rejected={2}), [T0, T0 + 60], [T0 + 30])
    figures["drift"] = plots.drift_figure([[0.0, 0.0], [1.0, 1.0]], pixel_size_a=1.0)
    figures["webgl"] = plots.session_figures(series(plots.WEBGL_ABOVE_POINTS + 1), [], [])["defocus"]
    metric = plots.MetricSeries("pick-n_particles", "Particles (pick)", "Particles", [5, None, 3, 2, 1])
    figures.update(plots.session_figures(series(5, rejected={2}), [], [], [metric]))
    for name, figure in figures.items():
        go.Figure(figure)  # raises ValueError naming any property Plotly does not know
        assert figure["layout"]["title"]["text"], name
