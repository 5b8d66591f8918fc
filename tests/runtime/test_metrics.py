"""Session metrics: rates, backlog and lag from times; served to Prometheus."""

from __future__ import annotations

import urllib.request

import pytest

from emlive.runtime.metrics import PrometheusMetrics, session_metrics


def test_rates_and_lag_percentiles_over_the_window():
    now = 10_000.0
    arrivals = [now - 900, now - 500, now - 400, now - 100, now - 10]  # one before the window
    results = [(now - 900, now - 880), (now - 500, now - 470), (now - 400, now - 390)]
    metrics = session_metrics(arrivals, results, backlog=2, failed=1, now_s=now, window_s=600)
    assert metrics.arrivals_per_min == pytest.approx(4 / 10)
    assert metrics.processed_per_min == pytest.approx(2 / 10)  # the first result is too old
    assert metrics.lag_p50_s == pytest.approx(20.0)
    assert metrics.lag_p95_s == pytest.approx(29.0)
    assert (metrics.backlog, metrics.failed) == (2, 1)


def test_no_results_yet_means_no_lag_rather_than_zero():
    metrics = session_metrics([5.0], [], backlog=1, failed=0, now_s=10.0)
    assert metrics.lag_p50_s is None and metrics.processed_per_min == 0


def test_prometheus_serves_the_metrics_per_session():
    prometheus = PrometheusMetrics(0)
    try:
        prometheus.update("grid3", session_metrics([1.0], [(1.0, 4.0)], backlog=7, failed=2, now_s=5.0))
        text = urllib.request.urlopen(f"http://127.0.0.1:{prometheus.port}/metrics", timeout=5).read().decode()
    finally:
        prometheus.close()
    assert 'emlive_backlog{session="grid3"} 7.0' in text
    assert 'emlive_failed{session="grid3"} 2.0' in text
    assert 'emlive_lag_p50_seconds{session="grid3"} 3.0' in text
