"""Tiny-movie benchmark: what the controller costs beside the compute, on a small machine.

Synthetic 128x128x4 MRC movies; two rates, measured back to back (``--rounds`` times):

(a) compute alone: ``process_exposure`` over the movies in ``--workers`` processes (a
    ProcessPoolExecutor whose processes have each processed a movie already), into a fresh
    output folder; rate = movies / wall seconds.
(b) emlive: the same movies through ``emlive process``'s path: ``run_session`` in this process
    (SQLite in the output folder, the CLI's default settings, logging configured as the CLI
    does) on a local cluster of ``--workers`` workers that is up and has processed a movie in
    each worker; timed from the call until it returns. Start-up (cluster start and warm-up) is
    printed apart. The controller's CPU is this process's CPU time during the call (the local
    Dask scheduler runs in it too), per exposure.
(c) with ``--cli``: the whole ``emlive process`` command, start-up included (wall seconds).

The target: (b) >= 0.8 x (a).

    .venv/bin/python benchmarks/tiny.py [--movies 300] [--workers 2] [--rounds 2] [--cli]
    .venv/bin/python benchmarks/tiny.py --part emlive --profile prof.out   # cProfile of the controller
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

APIX, DOSE, KV = 1.0, 1.0, 300.0


def make_movies(root: Path, n_movies: int) -> Path:
    """``root/raw`` with ``n_movies`` tiny movies (plus ``root/warm/raw`` with two, for warm-ups),
    their mtimes a minute old (settled)."""
    from emlive.synth.session import write_session

    write_session(root, n_movies=n_movies, shape=(128, 128), n_frames=4, formats=("mrc",), seed=1,
                  pixel_size_a=APIX, dose_per_frame_e_a2=DOSE, voltage_kv=KV)
    write_session(root / "warm", n_movies=2, shape=(128, 128), n_frames=4, formats=("mrc",), seed=2,
                  pixel_size_a=APIX, dose_per_frame_e_a2=DOSE, voltage_kv=KV)
    old = time.time() - 60
    for path in [*(root / "raw").iterdir(), *(root / "warm" / "raw").iterdir()]:
        os.utime(path, (old, old))
    return root / "raw"


def _params():
    from emlive.acquisition import Acquisition
    from emlive.config import load_settings
    from emlive.pipeline.params import pipeline_params

    settings = load_settings()
    acq = Acquisition(pixel_size_a=APIX, dose_per_frame_e_a2=DOSE, voltage_kv=KV)
    return pipeline_params(acq, settings), settings


def _specs(raw: Path, out: Path):
    from emlive.pipeline.exposure import ExposureSpec

    return [ExposureSpec(movie_path=path, name=path.stem, out_dir=out) for path in sorted(raw.glob("*.mrc"))]


def _warm(index: int, root: str) -> None:
    """Process one movie in this worker (imports, first-call costs), into a throwaway folder."""
    import logging

    from emlive.pipeline.exposure import process_exposure

    logging.getLogger("emlive").setLevel(logging.ERROR)  # the warm-up's warnings are not the benchmark's
    params, _ = _params()
    spec = _specs(Path(root) / "warm" / "raw", Path(root) / "warm" / f"out-{index}-{os.getpid()}")[index % 2]
    process_exposure(spec, params)
    logging.getLogger("emlive").setLevel(logging.NOTSET)


def _one(spec):
    from emlive.pipeline.exposure import process_exposure

    return process_exposure(spec, _POOL_PARAMS)


_POOL_PARAMS = None


def _pool_init() -> None:
    global _POOL_PARAMS
    _POOL_PARAMS, _ = _params()


def _children_cpu_s() -> float:
    """CPU seconds of this process's live descendants (workers, nannies, pool processes)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def compute_alone(root: Path, workers: int) -> dict[str, float]:
    """(a): movies per second through ``process_exposure`` in ``workers`` warm processes."""
    out = Path(tempfile.mkdtemp(prefix="out-compute-", dir=root))
    specs = _specs(root / "raw", out)
    with ProcessPoolExecutor(workers, initializer=_pool_init) as pool:
        list(pool.map(_warm, range(workers), [str(root)] * workers))
        load = os.getloadavg()[0]
        cpu0, workers_cpu0 = time.process_time(), _children_cpu_s()
        t0 = time.perf_counter()
        results = list(pool.map(_one, specs, chunksize=1))
        elapsed_s = time.perf_counter() - t0
        workers_cpu_s = _children_cpu_s() - workers_cpu0
    assert len(results) == len(specs)
    return {"movies": len(specs), "seconds": elapsed_s, "per_s": len(specs) / elapsed_s,
            "parent_cpu_s": time.process_time() - cpu0,
            "workers_cpu_ms_per_exposure": 1000 * workers_cpu_s / len(specs), "load_1min": load}


def emlive_path(root: Path, workers: int, profile: str | None = None) -> dict[str, float]:
    """(b): the same movies through ``run_session`` on a warm local cluster of ``workers``."""
    import logging

    from rich.logging import RichHandler

    from emlive.db.setup import setup_database, sqlite_url
    from emlive.runtime.cluster import open_cluster
    from emlive.runtime.loop import run_session

    logging.basicConfig(level=logging.INFO, format="%(message)s",  # as `emlive process` does
                        handlers=[RichHandler(show_path=False, markup=False)])
    for noisy in ("distributed", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    out = Path(tempfile.mkdtemp(prefix="out-emlive-", dir=root))
    params, settings = _params()
    settings = settings.model_copy(update={"cluster": settings.cluster.model_copy(update={"n_workers": workers})})
    setup_database(sqlite_url(out / "emlive.sqlite3"))
    from emlive.db import store

    session = store.get_or_create_session((root / "raw").resolve(), out.resolve(), params.acquisition)
    t_start = time.perf_counter()
    with open_cluster(settings.cluster) as cluster:
        t_up = time.perf_counter()
        names = list(cluster.client.scheduler_info()["workers"])
        for i, address in enumerate(names):
            cluster.client.submit(_warm, i, str(root), workers=[address], pure=False).result()
        t_warm = time.perf_counter()
        load = os.getloadavg()[0]
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        cpu0, workers_cpu0 = time.process_time(), _children_cpu_s()
        t0 = time.perf_counter()
        counts = run_session(session, params, settings, watch=False, cluster=cluster)
        elapsed_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
        workers_cpu_s = _children_cpu_s() - workers_cpu0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
    n = sum(counts.values())
    assert counts.get("processed") == n, counts
    return {"movies": n, "seconds": elapsed_s, "per_s": n / elapsed_s, "controller_cpu_s": cpu_s,
            "controller_cpu_ms_per_exposure": 1000 * cpu_s / n,
            "workers_cpu_ms_per_exposure": 1000 * workers_cpu_s / n, "cluster_start_s": t_up - t_start,
            "worker_warmup_s": t_warm - t_up, "load_1min": load}


def whole_command(root: Path, workers: int) -> dict[str, float]:
    """(c): ``emlive process`` as a user runs it, start-up included."""
    out = Path(tempfile.mkdtemp(prefix="out-cli-", dir=root))
    emlive = Path(sys.executable).parent / "emlive"
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    before = os.times()
    done = subprocess.run(
        [str(emlive), "process", str(root / "raw"), "-o", str(out), "--apix", str(APIX),
         "--dose-per-frame", str(DOSE), "--kv", str(KV), "--workers", str(workers)],
        capture_output=True, text=True, check=True,
    )
    elapsed_s = time.perf_counter() - t0
    after = os.times()
    n = len(list((root / "raw").glob("*.mrc")))
    return {"movies": n, "seconds": elapsed_s, "per_s": n / elapsed_s, "load_1min": load,
            "all_cpu_s": (after.children_user + after.children_system) - (before.children_user + before.children_system),
            "log_lines": len(done.stdout.splitlines()) + len(done.stderr.splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movies", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cli", action="store_true", help="also time the whole `emlive process` command")
    parser.add_argument("--part", choices=["all", "compute", "emlive", "cli"], default="all")
    parser.add_argument("--root", type=Path, help="(parts) folder holding raw/ (made by `all`)")
    parser.add_argument("--profile", help="(emlive part) write a cProfile of the controller here")
    args = parser.parse_args()
    if args.part != "all":
        root = args.root
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="emlive-tiny-"))
            make_movies(root, args.movies)
        part = {"compute": lambda: compute_alone(root, args.workers),
                "emlive": lambda: emlive_path(root, args.workers, args.profile),
                "cli": lambda: whole_command(root, args.workers)}[args.part]
        print(json.dumps(part()))
        return
    root = Path(tempfile.mkdtemp(prefix="emlive-tiny-"))
    try:
        make_movies(root, args.movies)
        parts = ["compute", "emlive"] + (["cli"] if args.cli else [])
        rows = []
        for _ in range(args.rounds):  # each part in its own process (Django's settings are global)
            row = {}
            for part in parts:
                done = subprocess.run(
                    [sys.executable, __file__, "--part", part, "--root", str(root), "--workers", str(args.workers)],
                    capture_output=True, text=True, check=True,
                )
                row[part] = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
          f"{args.movies} movies 128x128x4, {args.workers} workers")
    print(f"{'round':<6}{'compute/s':>10}{'emlive/s':>10}{'ratio':>7}{'target':>8}{'ctl ms/exp':>11}"
          f"{'wrk ms/exp':>11}{'pool ms/exp':>12}{'start s':>9}{'warm s':>8}" + (f"{'cli/s':>7}{'cli s':>7}" if args.cli else "") + f"{'load':>11}")
    for i, row in enumerate(rows, 1):
        a, b = row["compute"], row["emlive"]
        cli = row.get("cli")
        print(f"{i:<6}{a['per_s']:>10.1f}{b['per_s']:>10.1f}{b['per_s'] / a['per_s']:>7.2f}{'>= 0.8':>8}"
              f"{b['controller_cpu_ms_per_exposure']:>11.1f}{b['workers_cpu_ms_per_exposure']:>11.1f}"
              f"{a['workers_cpu_ms_per_exposure']:>12.1f}{b['cluster_start_s']:>9.1f}{b['worker_warmup_s']:>8.1f}"
              + (f"{cli['per_s']:>7.1f}{cli['seconds']:>7.1f}" if cli else "")
              + f"{a['load_1min']:>5.1f}/{b['load_1min']:<5.1f}")


if __name__ == "__main__":
    main()
