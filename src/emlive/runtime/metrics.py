"""Live metrics of a session: is processing keeping up with the microscope?

``session_metrics`` is pure (times in, numbers out); ``PrometheusMetrics`` publishes them as
Prometheus gauges, labelled by session, for a facility's monitoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, start_http_server


@dataclass(frozen=True)
class SessionMetrics:
    """Rates over the last ``window_s``; lag = result time − movie's mtime (arrival), seconds."""

    arrivals_per_min: float
    processed_per_min: float
    backlog: int
    failed: int
    lag_p50_s: float | None
    lag_p95_s: float | None
    window_s: float


def session_metrics(
    arrivals_s: Sequence[float],
    results: Sequence[tuple[float, float]],
    *,
    backlog: int,
    failed: int,
    now_s: float,
    window_s: float = 600.0,
) -> SessionMetrics:
    """Metrics from arrival times and (arrival, result) pairs, all in seconds since the epoch."""
    since_s = now_s - window_s
    arrivals = np.asarray(arrivals_s, dtype=float)
    pairs = np.asarray(results, dtype=float).reshape(-1, 2)
    recent = pairs[pairs[:, 1] >= since_s]
    lags_s = recent[:, 1] - recent[:, 0]
    per_min = 60.0 / window_s
    return SessionMetrics(
        arrivals_per_min=float(np.count_nonzero(arrivals >= since_s)) * per_min,
        processed_per_min=float(len(recent)) * per_min,
        backlog=backlog,
        failed=failed,
        lag_p50_s=float(np.percentile(lags_s, 50)) if len(lags_s) else None,
        lag_p95_s=float(np.percentile(lags_s, 95)) if len(lags_s) else None,
        window_s=window_s,
    )


class PrometheusMetrics:
    """Gauges ``emlive_*{session=...}`` served over HTTP on ``port`` (0: any free port)."""

    def __init__(self, port: int, *, address: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry()
        labels = ["session"]
        self._gauges = {
            "arrivals_per_min": Gauge("emlive_arrivals_per_minute", "Movies arriving", labels, registry=self.registry),
            "processed_per_min": Gauge(
                "emlive_processed_per_minute", "Exposures processed", labels, registry=self.registry
            ),
            "backlog": Gauge("emlive_backlog", "Exposures waiting or in flight", labels, registry=self.registry),
            "failed": Gauge("emlive_failed", "Exposures failed", labels, registry=self.registry),
            "lag_p50_s": Gauge("emlive_lag_p50_seconds", "Median movie-to-result lag", labels, registry=self.registry),
            "lag_p95_s": Gauge("emlive_lag_p95_seconds", "95th percentile lag", labels, registry=self.registry),
        }
        self.server, _ = start_http_server(port, addr=address, registry=self.registry)
        self.port = self.server.server_port

    def update(self, session: str, metrics: SessionMetrics) -> None:
        for name, gauge in self._gauges.items():
            value = getattr(metrics, name)
            gauge.labels(session=session).set(float("nan") if value is None else value)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
