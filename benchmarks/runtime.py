"""Runtime benchmark: controller overhead, and lag in a simulated live session.

(a) Controller overhead: every exposure goes through the real watcher, database (SQLite, then
    PostgreSQL), controller, Dask and exports, but the step run on the worker is a no-op that
    returns a fixed result: what is measured is emlive's own cost per exposure, on a local
    cluster that is up and warm; the one-time costs of starting one (workers importing the
    pipeline included) are reported beside it, and the rate with them counted (cold).
(b) Live session: movies arrive at a set rate, each "computes" for a set time (a sleep on the
    worker), and the controller scales a local Dask cluster between 0 and --max-workers
    workers. Reported: lag (movie mtime → result in the database) percentiles and scale
    reversals inside the hysteresis window: a scale-down soon after a scale-up (flapping, which
    cancels workers that are still wanted) and a scale-up soon after a scale-down.

    .venv/bin/python benchmarks/runtime.py [--exposures 300] [--rate-per-s 0.5] [--compute-s 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

POSTGRES_URL = os.environ.get("EMLIVE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def noop_result(spec, params, *, compute_s: float = 0.0):
    """The no-op step: waits ``compute_s`` and returns a fixed, well-formed result."""
    from emlive.ctf.types import CtfResult
    from emlive.motion.types import MotionResult
    from emlive.pipeline.exposure import ExposureResult
    from emlive.pipeline.steps import StepRecord
    from emlive.pipeline.thumbnail import Thumbnail

    time.sleep(compute_s)
    now = datetime.now(UTC)
    out = spec.out_dir / spec.name
    record = {"engine": "noop", "engine_version": "0", "started_at": now, "finished_at": now, "reused": False}
    return ExposureResult(results=dict(
        motion=MotionResult(
            shifts_px=[(0.0, 0.0), (1.0, 0.5)], total_drift_a=1.1, early_drift_a=1.1, late_drift_a=0.0,
            micrograph_path=out.with_suffix(".mrc"), dose_weighted_path=out.with_suffix(".dw.mrc"),
            star_path=out.with_suffix(".star"), pixel_size_a=1.0, n_frames=2,
        ),
        ctf=CtfResult(
            defocus_u_a=15000.0, defocus_v_a=14800.0, azimuth_deg=30.0, cross_correlation=0.2,
            fit_resolution_a=3.5, fit_ok=True, ice_ring_ratio=1.0, output_txt_path=out.with_suffix(".txt"),
            avrot_path=out.with_suffix(".avrot"),
            diagnostic_png_path=out.with_suffix(".png"),
        ),
        thumbnail=Thumbnail(png_path=out.with_suffix(".thumb.png")),
        ), steps=[StepRecord(step=step, **record) for step in ("motion", "ctf", "thumbnail")],
    )


def _tiny_movie(path: Path) -> None:
    from emlive.io.mrc import write_mrc_atomic

    write_mrc_atomic(path, np.zeros((2, 8, 8), np.int8), pixel_size_a=1.0)


def _session(root: Path, database_url: str):
    from emlive.acquisition import Acquisition
    from emlive.db.setup import setup_database

    setup_database(database_url)
    from emlive.db import store

    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    return store.get_or_create_session(root / "raw", root / "out", acq, name=f"bench-{root.name}"), acq


def _warm_worker() -> None:
    """What a worker has done once it has processed its first exposure (and what emlive's
    worker plugin does when a worker starts): import the pipeline and load the installed steps."""
    from emlive.pipeline.registry import registry

    registry()


def overhead(database_url: str, n_exposures: int, workers: int, max_in_flight: int) -> dict[str, float]:
    """(a): exposures per second through the whole controller path with a no-op step.

    Timed: ``run_session`` on a cluster that is up and whose workers have imported the pipeline
    (as in a service, where workers outlive a session), from the call until it returns:
    scanning, recording, scheduling, Dask round trips, storing, exports. Reported apart: the
    one-time costs of starting the cluster, warming its workers and closing it, and the rate
    with them included (``cold_per_s``).
    """
    from emlive.config import load_settings
    from emlive.pipeline.exposure import PipelineParams
    from emlive.runtime.cluster import open_cluster
    from emlive.runtime.loop import run_session

    root = Path(tempfile.mkdtemp(prefix="emlive-bench-"))
    (root / "raw").mkdir()
    for i in range(n_exposures):
        _tiny_movie(root / "raw" / f"m{i:05d}.mrc")
    old = time.time() - 60
    for path in (root / "raw").iterdir():
        os.utime(path, (old, old))
    session, acq = _session(root, database_url)
    settings = load_settings(
        watch={"settle_s": 0, "poll_interval_s": 0.2}, cluster={"n_workers": workers},
        scheduler={"max_in_flight": max_in_flight},
    )
    params = PipelineParams(acquisition=acq)  # planned before the run, as the CLI and the service do
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    with open_cluster(settings.cluster) as cluster:
        t_up = time.perf_counter()
        cluster.client.run(_warm_worker)
        t_warm = time.perf_counter()
        counts = run_session(session, params, settings, watch=False, task=noop_result, cluster=cluster)
        t_done = time.perf_counter()
    t_closed = time.perf_counter()
    assert counts.get("processed") == n_exposures, counts
    elapsed_s = t_done - t_warm
    return {
        "exposures": n_exposures, "seconds": elapsed_s, "per_s": n_exposures / elapsed_s,
        "cluster_start_s": t_up - t_start, "worker_warmup_s": t_warm - t_up, "cluster_close_s": t_closed - t_done,
        "cold_per_s": n_exposures / (t_closed - t_start),
        "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0],
    }


def live(rate_per_s: float, duration_s: float, compute_s: float, settle_s: float, max_workers: int,
         window_s: float) -> dict[str, object]:
    """(b): a simulated live session on a local cluster the controller scales."""
    from distributed import Client, LocalCluster

    from emlive.config import load_settings
    from emlive.db.setup import sqlite_url
    from emlive.pipeline.exposure import PipelineParams
    from emlive.runtime.cluster import Cluster
    from emlive.runtime.loop import StopSignals, run_session

    root = Path(tempfile.mkdtemp(prefix="emlive-live-"))
    (root / "raw").mkdir()
    session, acq = _session(root, sqlite_url(root / "emlive.sqlite3"))
    settings = load_settings(
        watch={"settle_s": settle_s, "poll_interval_s": 0.5},
        cluster={"n_workers": max_workers, "min_workers": 0, "scale_down_after_s": window_s},
        scheduler={"export_interval_s": 5},
    )
    signals = StopSignals(threading.Event(), threading.Event())
    n_movies = int(duration_s * rate_per_s)

    def microscope() -> None:
        for i in range(n_movies):
            _tiny_movie(root / "raw" / f"m{i:05d}.mrc")
            time.sleep(1.0 / rate_per_s)
        time.sleep(compute_s + settle_s + 5 * window_s / 4)  # let it drain and scale down
        signals.stop.set()

    scale_log: list[tuple[float, int]] = []
    with LocalCluster(n_workers=0, threads_per_worker=1, processes=True, dashboard_address=":0") as local:
        with Client(local) as client:

            def scale(n: int) -> None:
                scale_log.append((time.monotonic(), n))
                local.scale(n)

            arrivals = threading.Thread(target=microscope, daemon=True)
            arrivals.start()
            run_session(
                session, PipelineParams(acquisition=acq), settings, watch=True, signals=signals,
                cluster=Cluster(client, scale, 1),
                task=lambda spec, params: noop_result(spec, params, compute_s=compute_s),
            )
    from emlive.db import queries

    _, results, _, _ = queries.metric_inputs(session)
    lags_s = np.array([done - arrived for arrived, done in results])
    steps = [(t1, n1 - n0) for (_, n0), (t1, n1) in zip(scale_log, scale_log[1:], strict=False)]
    flaps = sum(1 for (ta, da), (tb, db) in zip(steps, steps[1:], strict=False) if da > 0 > db and tb - ta < window_s)
    returns = sum(1 for (ta, da), (tb, db) in zip(steps, steps[1:], strict=False) if da < 0 < db and tb - ta < window_s)
    return {
        "movies": n_movies, "processed": len(results), "rate_per_s": rate_per_s, "compute_s": compute_s,
        "settle_s": settle_s, "lag_p50_s": float(np.percentile(lags_s, 50)),
        "lag_p95_s": float(np.percentile(lags_s, 95)), "lag_max_s": float(lags_s.max()),
        "target_p95_s": compute_s + settle_s + 10, "scale_changes": [n for _, n in scale_log],
        "down_after_up_in_window": flaps, "up_after_down_in_window": returns,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exposures", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-in-flight", type=int, default=32, help="(a): exposures submitted at once")
    parser.add_argument("--rate-per-s", type=float, default=0.5)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--compute-s", type=float, default=4.0)
    parser.add_argument("--settle-s", type=float, default=1.0)
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--part", choices=["all", "overhead-sqlite", "overhead-postgres", "live"], default="all")
    args = parser.parse_args()
    if args.part == "overhead-sqlite":
        from emlive.db.setup import sqlite_url

        db = Path(tempfile.mkdtemp(prefix="emlive-db-")) / "emlive.sqlite3"
        print(json.dumps(overhead(sqlite_url(db), args.exposures, args.workers, args.max_in_flight)))
        return
    if args.part == "overhead-postgres":
        print(json.dumps(overhead(POSTGRES_URL, args.exposures, args.workers, args.max_in_flight)))
        return
    if args.part == "live":
        print(json.dumps(live(args.rate_per_s, args.duration_s, args.compute_s, args.settle_s,
                              args.max_workers, args.window_s)))
        return
    # each part in its own process: one database per process (Django's settings are global)
    rows = {}
    for part in ("overhead-sqlite", "overhead-postgres", "live"):
        out = subprocess.run(
            [sys.executable, __file__, "--part", part, *sys.argv[1:]], capture_output=True, text=True, check=True
        )
        rows[part] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"machine: {os.cpu_count()} cores; {datetime.now(UTC):%Y-%m-%d}")
    print(f"(a) controller overhead, no-op step, {args.workers} local workers, {args.max_in_flight} in flight")
    print(f"{'database':<10}{'exposures':>10}{'seconds':>9}{'per s':>8}{'target':>8}"
          f"{'start s':>9}{'warm s':>8}{'close s':>9}{'cold/s':>8}{'load':>11}")
    for part in ("overhead-sqlite", "overhead-postgres"):
        r = rows[part]
        print(f"{part.split('-')[1]:<10}{r['exposures']:>10}{r['seconds']:>9.2f}{r['per_s']:>8.1f}{'>= 50':>8}"
              f"{r['cluster_start_s']:>9.1f}{r['worker_warmup_s']:>8.1f}{r['cluster_close_s']:>9.1f}"
              f"{r['cold_per_s']:>8.1f}{r['load_1min_before']:>5.1f}->{r['load_1min_after']:<4.1f}")
    r = rows["live"]
    print(f"(b) live session: {r['movies']} movies at {r['rate_per_s']}/s, compute {r['compute_s']} s, "
          f"settle {r['settle_s']} s, 0..{args.max_workers} workers, hysteresis {args.window_s} s")
    print(f"lag p50 {r['lag_p50_s']:.1f} s, p95 {r['lag_p95_s']:.1f} s (target <= {r['target_p95_s']:.1f} s), "
          f"max {r['lag_max_s']:.1f} s; processed {r['processed']}/{r['movies']}")
    print(f"scale requests {r['scale_changes']}; inside the hysteresis window: "
          f"{r['down_after_up_in_window']} scale-down after a scale-up (flapping; target 0), "
          f"{r['up_after_down_in_window']} scale-up after a scale-down (demand came back)")


if __name__ == "__main__":
    main()
