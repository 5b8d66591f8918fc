"""Tilt series live: a fast dose-symmetric collection through ``emlive process --watch``.

A synthetic series (``emlive.synth.tomo_session``): ``--tilts`` tilts (−60…60°, dose-symmetric)
of ``--size``² movies with ``--frames`` frames (LZW TIFF, 1.5 Å/px, 3 e/Å² a tilt), made once
into ``DATA/staging`` (``--data``; reused when present). Then ``emlive process RAW --watch
--workers N`` runs on an empty ``raw/`` while this script "collects": one tilt every
``--interval-s`` seconds its movie is moved into ``raw/frames/`` (a rename: complete at once)
and the mdoc rewritten to name it, as SerialEM does. ``[tomo] tilts_per_series`` is the
series' tilt count, so the series is processed as soon as its last tilt is.

Printed:
- per tilt: arrival (movie complete) → motion done, → CTF done, → stored (s); whether each
  tilt was stored before the next one arrived (keep-up), and the backlog at the end;
- each stage's time: motion and CTF per tilt (their sidecars' durations), the binning per tilt,
  and the group step's stages (its sidecar's timings);
- the lag: the last tilt's movie complete → the tomogram exists (and → RELION 5's
  tomograms.star names it). Target: ≤ 60 s.

    .venv/bin/python benchmarks/tomo.py [--tilts 41] [--size 4096] [--frames 8] [--interval-s 8]
                                        [--workers 2] [--data /tmp/emlive-tomo-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

APIX = 1.5
DOSE_PER_TILT = 3.0


def make_data(data: Path, *, n_tilts: int, size: int, n_frames: int, interval_s: float) -> Path:
    """Movies of the whole series in ``data/staging/`` (with the plan's mdoc sections), made once."""
    from emlive.synth.tomo_session import movie_counts, plan_collection, save_truth, write_movie

    staging = data / "staging"
    marker = data / "made.json"
    wanted = {"tilts": n_tilts, "size": size, "frames": n_frames}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return staging
    if (data / "making.json").exists() and json.loads((data / "making.json").read_text()) != wanted:
        shutil.rmtree(data, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    (data / "making.json").write_text(json.dumps(wanted))
    started = time.perf_counter()
    plan = _plan(n_tilts, size, n_frames, interval_s)
    save_truth(data, plan)
    for i, name in enumerate(plan.movie_names):
        if (staging / name).exists():  # made by an earlier, interrupted run (written atomically)
            continue
        write_movie(staging / name, movie_counts(plan, i, workers=2))
        print(f"  made {name} ({i + 1}/{len(plan.movie_names)}, {time.perf_counter() - started:.0f} s)", flush=True)
    marker.write_text(json.dumps(wanted))
    return staging


def _plan(n_tilts: int, size: int, n_frames: int, interval_s: float):
    from emlive.synth.tomo_session import plan_collection

    angles = np.linspace(-60.0, 60.0, n_tilts)
    upsampling = 8 if size >= 2048 else 4
    return plan_collection(
        3, tilt_angles_deg=angles, movie_shape=(size, size), upsampling=upsampling, n_frames=n_frames,
        projection_pixel_size_a=APIX * upsampling, thickness_px=32, dose_per_tilt_e_a2=DOSE_PER_TILT,
        drift_px=6.0, seconds_per_tilt=interval_s, dark=(int(0.2 * n_tilts), int(0.8 * n_tilts)),
    )


def _rows(db: Path, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


def _ts(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value).timestamp()


def run(args: argparse.Namespace) -> dict:
    from emlive.synth.mdoc import serialem_header, write_mdoc

    data = Path(args.data)
    print(f"making {args.tilts} movies of {args.size}² × {args.frames} frames in {data} (once)", flush=True)
    staging = make_data(data, n_tilts=args.tilts, size=args.size, n_frames=args.frames, interval_s=args.interval_s)
    plan = _plan(args.tilts, args.size, args.frames, args.interval_s)
    session = data / "session"
    shutil.rmtree(session, ignore_errors=True)
    raw, out = session / "raw", session / "out"
    (raw / "frames").mkdir(parents=True)
    for name in plan.movie_names:  # the staged copies are moved in and back, so hard-link them
        os.link(staging / name, session / name)
    config = session / "emlive.toml"
    n_collected = args.first or args.tilts
    config.write_text(f"[tomo]\ntilts_per_series = {n_collected}\n")
    command = [sys.executable, "-m", "emlive", "process", str(raw), "-o", str(out), "--apix", str(APIX),
               "--dose-per-frame", str(DOSE_PER_TILT / args.frames), "--kv", "300", "--watch", "--settle-s", "1",
               "--workers", str(args.workers), "--config", str(config)]
    log = open(session / "emlive.log", "w")
    env = os.environ | {"COLUMNS": "200", "EMLIVE_CONFIG": ""}
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    db = out / "emlive.sqlite3"
    try:
        deadline = time.monotonic() + 180
        while not _rows(db, "SELECT count(*) FROM emlive_session") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)  # the watcher is up
        header = serialem_header(pixel_size_a=plan.pixel_size_a, tilt_axis_deg=float(plan.truth.tilt_axis_deg),
                                 image_size=(args.size, args.size), image_file="TS_01.mrc")
        sections = plan.mdoc_tilts()
        arrivals: dict[str, float] = {}
        start = time.monotonic()
        for step, tilt in enumerate(plan.acquisition[:n_collected]):
            time.sleep(max(0.0, start + step * args.interval_s - time.monotonic()))
            name = plan.movie_names[tilt]
            os.replace(session / name, raw / "frames" / name)
            arrivals[name] = time.time()
            write_mdoc(raw / "TS_01.mrc.mdoc", header, sections[: step + 1])
            print(f"  t={time.monotonic() - start:6.1f} s  tilt {step + 1:2d}/{args.tilts}: {name}", flush=True)
        last_s = max(arrivals.values())
        tomogram = out / "tomo" / "TS_01" / "TS_01_rec.mrc"
        tomogram_s = star_s = None
        deadline = time.monotonic() + args.timeout_s
        while time.monotonic() < deadline and (tomogram_s is None or star_s is None):
            state = _rows(db, "SELECT state FROM emlive_tiltseries WHERE name = 'TS_01'")
            if tomogram_s is None and tomogram.exists() and state and state[0][0] in ("done", "partial"):
                tomogram_s = time.time()
            stars = out / "exports" / "tomograms.star"
            if star_s is None and stars.exists() and "TS_01" in stars.read_text():
                star_s = time.time()
            if state and state[0][0] == "failed":
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return _report(args, plan, out, db, arrivals, last_s, tomogram_s, star_s)


def _report(args, plan, out: Path, db: Path, arrivals: dict[str, float], last_s: float,
            tomogram_s: float | None, star_s: float | None) -> dict:
    rows = _rows(db, "SELECT path, state, motion_done_at, ctf_done_at, processed_at FROM emlive_exposure")
    per_tilt = []
    order = {name: i for i, name in enumerate(plan.movie_names[t] for t in plan.acquisition)}
    for path, state, motion_at, ctf_at, processed_at in rows:
        name = Path(path).name
        arrived = arrivals.get(name)
        if arrived is None:
            continue
        per_tilt.append({
            "step": order[name], "state": state,
            "motion_s": None if motion_at is None else _ts(motion_at) - arrived,
            "ctf_s": None if ctf_at is None else _ts(ctf_at) - arrived,
            "stored_s": None if processed_at is None else _ts(processed_at) - arrived,
        })
    per_tilt.sort(key=lambda r: r["step"])
    kept_up = sum(1 for r in per_tilt if r["stored_s"] is not None and r["stored_s"] <= args.interval_s)
    durations = {"motion": [], "ctf": []}
    for step in durations:
        for sidecar in (out / step / "frames").glob(f"*.{step}.json"):
            durations[step].append(json.loads(sidecar.read_text())["duration_s"])
    series = out / "tomo" / "TS_01" / "TS_01.series.json"
    group = json.loads(series.read_text()) if series.exists() else {}
    stored = [r["stored_s"] for r in per_tilt if r["stored_s"] is not None]
    result = {
        "tilts": args.tilts, "size": args.size, "frames": args.frames, "interval_s": args.interval_s,
        "workers": args.workers, "load_avg_1min": os.getloadavg()[0],
        "arrival_to_stored_s": {"median": statistics.median(stored) if stored else None,
                                "max": max(stored) if stored else None},
        "stored_before_next_tilt": f"{kept_up}/{len(per_tilt)}",
        "stored_within_two_intervals": f"{sum(1 for x in stored if x <= 2 * args.interval_s)}/{len(per_tilt)}",
        # keeping up: the arrival → stored time does not grow over the series (no backlog builds)
        "arrival_to_stored_first5_last5_s": None if len(stored) < 10 else [
            round(statistics.median(stored[:5]), 1), round(statistics.median(stored[-5:]), 1)],
        "motion_s_per_tilt": _stats(durations["motion"]), "ctf_s_per_tilt": _stats(durations["ctf"]),
        "series_stages_s": group.get("timings_s"), "series_used_tilts": len(group.get("used_z_values", [])),
        "series_exclusions": group.get("exclusions"), "residual_px": group.get("residual_px"),
        "tilt_axis_deg": group.get("tilt_axis_deg"), "tilt_axis_truth_deg": float(plan.truth.tilt_axis_deg),
        "last_tilt_stored_after_s": per_tilt[-1]["stored_s"] if per_tilt else None,
        "lag_last_tilt_to_tomogram_s": None if tomogram_s is None else tomogram_s - last_s,
        "lag_last_tilt_to_relion5_star_s": None if star_s is None else star_s - last_s,
    }
    print("\nper tilt (acquisition order): arrival → motion / CTF / stored, s")
    for r in per_tilt:
        print(f"  {r['step']:2d}  {r['state']:9s}  " + "  ".join(
            "   -  " if r[k] is None else f"{r[k]:6.1f}" for k in ("motion_s", "ctf_s", "stored_s")))
    print(json.dumps(result, indent=1))
    return result


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 2), "max": round(max(values), 2), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tilts", type=int, default=41)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--interval-s", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="Longest wait for the tomogram after the last tilt")
    parser.add_argument("--data", default="/tmp/emlive-tomo-bench")
    parser.add_argument("--keep", action="store_true", help="Keep the session's output folder")
    parser.add_argument("--first", type=int, default=None, help="Collect only the first N tilts (a dry run)")
    args = parser.parse_args()
    run(args)
    if not args.keep:
        shutil.rmtree(Path(args.data) / "session", ignore_errors=True)


if __name__ == "__main__":
    main()
