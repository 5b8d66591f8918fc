"""Motion correction, emlive's native engine against RELION's own (``relion_run_motioncorr --use_own``).

Both run on the same synthetic movies, with the same threads and 5×5 patches:

- ``mrc``:  4096×4096×40, int8 MRC;
- ``tiff``: 5760×4092×40, LZW-compressed uint8 TIFF (a K3's frame size);
- ``eer``:  4096×4096, 400 raw EER frames rendered as 40 fractions of 10;
- ``small``: a batch of 4 movies of 2048×2048×30, int8 MRC, given to each program in one
  command (``emlive motioncorr`` with 4 movies, one RELION movies STAR with 4 rows): start-up
  is paid once, and the wall time reported is the batch's divided by 4 (the scores are the
  means over the 4 movies).

Each movie is a CTF-modulated specimen at 1.0 e/Å² per frame (1 Å pixels), with a global drift
(20 px path) and a smooth local field (3 px at the end; :mod:`emlive.synth.deform`), so the
truth is known at every position and frame. Reported per program and movie:

- wall time and peak memory (``/usr/bin/time``: elapsed and maximum resident set size);
- trajectory error: the RMS distance between the correction the program reports (global plus
  its local model, evaluated as RELION defines it) and the true one, on a 9×9 grid spanning
  the central 90 % of the field, over all frames, px;
- aligned-sum quality: the mean Fourier ring correlation of the (not dose-weighted) aligned sum
  with the true specimen image (frame 0's), in three bands (0.05–0.25, 0.25–0.45 and
  0.30–0.45 cycles/px, 0.05 cycles/px rings), after removing any constant offset between them.

Usage: ``.venv/bin/python benchmarks/motion.py [--work DIR] [--threads 2] [--movies mrc tiff eer small]``.
Movies are written once into DIR and reused; ``--skip-relion`` times emlive only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mrcfile
import numpy as np
import scipy.fft
import starfile
import tifffile

from emlive import synth
from emlive.acquisition import Optics
from emlive.io.atomic import atomic_path
from emlive.io.mrc import write_mrc_atomic
from emlive.motion.deform import evaluate_model

ROOT = Path(__file__).resolve().parents[1]
PIXEL_SIZE_A = 1.0
DOSE_E_A2 = 1.0
VOLTAGE_KV = 300.0
N_FRAMES = 40
EER_GROUPING = 10
MARGIN_PX = 64
DRIFT_PX = 20.0
LOCAL_PX = 3.0

MOVIES = {
    "mrc": {"name": "bench_4k.mrc", "shape": (4096, 4096)},
    "tiff": {"name": "bench_k3.tif", "shape": (4092, 5760)},
    "eer": {"name": "bench_4k.eer", "shape": (4096, 4096)},
    "small": {"name": "bench_2k.mrc", "shape": (2048, 2048), "n_frames": 30, "batch": 4},
}


def movie_names(kind: str) -> list[str]:
    """The file names of a kind's movies (one, or a batch: ``<stem>_<i><suffix>``)."""
    spec = MOVIES[kind]
    batch = spec.get("batch", 1)
    if batch == 1:
        return [spec["name"]]
    stem, suffix = spec["name"].rsplit(".", 1)
    return [f"{stem}_{i}.{suffix}" for i in range(batch)]


def make_movie(kind: str, raw_dir: Path, seed: int, divisor: int = 1, index: int = 0) -> None:
    """Write one benchmark movie and its truth (``<name>.truth.json``, ``<name>.image.npy``)."""
    spec = MOVIES[kind]
    n_frames = spec.get("n_frames", N_FRAMES)
    ny, nx = (n // divisor for n in spec["shape"])
    name = movie_names(kind)[index]
    path = raw_dir / name
    rng = np.random.default_rng(seed)
    field_shape = (ny + 2 * MARGIN_PX, nx + 2 * MARGIN_PX)
    image = synth.specimen_image(
        rng, field_shape, optics=Optics(pixel_size_a=PIXEL_SIZE_A), defocus_u_a=16000, defocus_v_a=15000, azimuth_deg=30
    )
    drift = synth.trajectory(rng, n_frames=n_frames, amplitude_px=DRIFT_PX)
    field = synth.local_motion(rng, shape=field_shape, n_frames=n_frames, amplitude_px=LOCAL_PX)
    crop = (slice(None), slice(MARGIN_PX, MARGIN_PX + ny), slice(MARGIN_PX, MARGIN_PX + nx))
    dose_px = DOSE_E_A2 * PIXEL_SIZE_A**2
    if kind == "eer":
        counts, _ = synth.movie_events(
            rng, image, drift, dose_e_per_px_per_fraction=dose_px, raw_frames_per_fraction=EER_GROUPING,
            local_motion=field, workers=1,
        )
        counts = np.ascontiguousarray(counts[crop])
        split_rng = np.random.default_rng(seed + 1000)

        def raw_frames():
            for fraction in counts:
                yield from synth.split_into_raw_frames(split_rng, fraction, n_raw_frames=EER_GROUPING)

        synth.write_eer(path, raw_frames(), shape=(ny, nx), pixel_size_a=PIXEL_SIZE_A)
    else:
        counts = synth.movie_frames(rng, image, drift, dose_e_per_px_per_frame=dose_px, local_motion=field, workers=1)
        counts = counts[crop]
        if path.suffix == ".mrc":
            write_mrc_atomic(path, counts.astype(np.int8), pixel_size_a=PIXEL_SIZE_A)
        else:
            with atomic_path(path) as tmp:
                # rows bottom-up: RELION, MotionCor2 and emlive read TIFF movies upside down, so
                # the file is written so that what they read is the simulated frames
                tifffile.imwrite(tmp, counts[:, ::-1].astype(np.uint8), compression="lzw", photometric="minisblack")
    np.save(raw_dir / f"{name}.image.npy", image[MARGIN_PX : MARGIN_PX + ny, MARGIN_PX : MARGIN_PX + nx])
    truth = {
        "drift_px": drift.tolist(),
        "field": field.model_dump(mode="json"),
        "margin_px": MARGIN_PX,
        "shape": [ny, nx],
    }
    (raw_dir / f"{name}.truth.json").write_text(json.dumps(truth))


def true_corrections(raw_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid x, y (9×9, px) and the true corrections there (n, 9, 9, 2)."""
    truth = json.loads((raw_dir / f"{name}.truth.json").read_text())
    ny, nx = truth["shape"]
    field = synth.LocalMotion.model_validate(truth["field"])
    drift = np.array(truth["drift_px"])
    gx, gy = np.meshgrid(np.linspace(0.05 * nx, 0.95 * nx, 9), np.linspace(0.05 * ny, 0.95 * ny, 9))
    t = np.arange(len(drift))[:, None, None]
    m = truth["margin_px"]
    return gx, gy, -(drift[:, None, None, :] + field.displacement(gx[None] + m, gy[None] + m, t))


def reported_corrections(star_path: Path, gx: np.ndarray, gy: np.ndarray, *, flip_y: bool = False) -> np.ndarray:
    """Global + local corrections a motion STAR file (RELION 3.1 conventions) gives on the grid.

    ``flip_y``: the program saw the movie upside down (RELION reads TIFF rows bottom-up): its
    answer for row ``y`` is read at ``ny - 1 - y`` with the y component negated.
    """
    star = starfile.read(star_path, always_dict=True)
    general = star["general"]
    shape = (int(general["rlnImageSizeY"]), int(general["rlnImageSizeX"]))
    table = star["global_shift"]
    shifts = table[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(dtype=np.float64)
    n = len(shifts)
    total = np.broadcast_to(shifts[:, None, None, :], (n, *gx.shape, 2)).copy()
    y_seen = shape[0] - 1 - gy if flip_y else gy
    if int(general.get("rlnMotionModelVersion", 0)) == 1 and "local_motion_model" in star:
        coefficients = star["local_motion_model"]["rlnMotionModelCoeff"].to_numpy(dtype=np.float64)
        total += evaluate_model(coefficients, gx[None], y_seen[None], np.arange(n)[:, None, None], shape=shape)
    if flip_y:
        total[..., 1] *= -1.0
    return total


def trajectory_error_px(raw_dir: Path, name: str, star_path: Path, *, flip_y: bool = False) -> float:
    gx, gy, truth = true_corrections(raw_dir, name)
    got = reported_corrections(star_path, gx, gy, flip_y=flip_y)
    if got.shape != truth.shape:
        return float("nan")
    # both are relative to frame 1; compare as they are
    return float(np.sqrt(np.mean(np.sum((got - truth) ** 2, axis=-1))))


BANDS = ((0.05, 0.25), (0.25, 0.45), (0.30, 0.45))


def sum_quality(raw_dir: Path, name: str, micrograph: Path, *, flip_y: bool = False) -> tuple[float, ...]:
    """Mean FRC of the aligned sum with the true image in each of ``BANDS`` (cycles/px; rings
    0.02 cycles/px wide)."""
    truth = np.load(raw_dir / f"{name}.image.npy").astype(np.float32)
    with mrcfile.open(micrograph, permissive=True) as mrc:
        image = np.asarray(mrc.data, dtype=np.float32)
    if flip_y:
        image = np.ascontiguousarray(image[::-1])
    if image.shape != truth.shape:
        return tuple(float("nan") for _ in BANDS)
    a = scipy.fft.rfft2(image - image.mean())
    b = scipy.fft.rfft2(truth - truth.mean())
    cross = a * np.conj(b)
    # remove a constant offset: the peak of the cross-correlation
    cc = scipy.fft.irfft2(cross, s=image.shape)
    iy, ix = np.unravel_index(np.argmax(cc), cc.shape)
    dy = iy if iy < image.shape[0] // 2 else iy - image.shape[0]
    dx = ix if ix < image.shape[1] // 2 else ix - image.shape[1]
    ky = np.fft.fftfreq(image.shape[0])[:, None]
    kx = np.fft.rfftfreq(image.shape[1])[None, :]
    cross *= np.exp(-2j * np.pi * (ky * dy + kx * dx))
    k = np.hypot(ky, kx)
    out = []
    for lo, hi in BANDS:
        shells = np.linspace(lo, hi, round((hi - lo) / 0.02) + 1)
        values = []
        for s0, s1 in zip(shells[:-1], shells[1:], strict=True):
            ring = (k >= s0) & (k < s1)
            num = float(np.real(cross[ring]).sum())
            den = float(np.sqrt((np.abs(a[ring]) ** 2).sum() * (np.abs(b[ring]) ** 2).sum()))
            values.append(num / den if den > 0 else 0.0)
        out.append(float(np.mean(values)))
    return tuple(out)


def scores(raw_dir: Path, kind: str, result_dir: Path, micrograph_suffix: str) -> dict:
    """Trajectory error and sum FRCs, means over the kind's movies (results in ``result_dir``)."""
    errors, frcs = [], []
    for name in movie_names(kind):
        stem = Path(name).stem
        errors.append(trajectory_error_px(raw_dir, name, result_dir / f"{stem}.star"))
        frcs.append(sum_quality(raw_dir, name, result_dir / f"{stem}{micrograph_suffix}.mrc"))
    return {"error_px": float(np.mean(errors)), "frc": [float(v) for v in np.mean(frcs, axis=0)]}


LOADS: list[tuple[str, float, float]] = []  # (what, 1-min load average before, after)


def timed(argv: list[str], *, threads: int, log_path: Path, cwd: Path | None = None) -> tuple[float, float]:
    """Run ``argv`` under /usr/bin/time; (wall s, peak RSS GiB). Raises on failure.
    The 1-minute load average before and after is kept in ``LOADS`` (the machine is shared)."""
    load_before = os.getloadavg()[0]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    full = ["/usr/bin/time", "-f", "TIME %e %M", *argv]
    started = time.perf_counter()
    done = subprocess.run(full, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    wall = time.perf_counter() - started
    LOADS.append((f"{Path(argv[0]).name} {log_path.parent.name}", load_before, os.getloadavg()[0]))
    log_path.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}); see {log_path}")
    match = re.findall(r"TIME ([\d.]+) (\d+)", done.stderr)
    if not match:
        return wall, float("nan")
    elapsed, kib = match[-1]
    return float(elapsed), int(kib) / 1024**2


def run_emlive(raw_dir: Path, out_dir: Path, kind: str, *, threads: int, patches: tuple[int, int]) -> dict:
    movies = [raw_dir / name for name in movie_names(kind)]
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    argv = [
        str(ROOT / ".venv/bin/emlive"), "motioncorr", *map(str, movies), "-o", str(out_dir),
        "--apix", str(PIXEL_SIZE_A), "--dose-per-frame", str(DOSE_E_A2), "--kv", str(VOLTAGE_KV),
        "--patches", str(patches[0]), str(patches[1]),
    ]
    if kind == "eer":
        argv += ["--eer-fractions", str(N_FRAMES)]
    wall, rss = timed(argv, threads=threads, log_path=out_dir / "log.txt")
    return {"wall_s": wall / len(movies), "rss_gib": rss, **scores(raw_dir, kind, out_dir, "")}


def run_relion(raw_dir: Path, out_dir: Path, kind: str, *, threads: int, patches: tuple[int, int]) -> dict:
    movies = [raw_dir / name for name in movie_names(kind)]
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    link_dir = out_dir / "Movies"
    link_dir.mkdir()
    for movie in movies:
        (link_dir / movie.name).symlink_to(movie)
    star = out_dir / "movies.star"
    star.write_text(
        "data_optics\n\nloop_\n_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n_rlnMicrographOriginalPixelSize #3\n"
        f"_rlnVoltage #4\n_rlnSphericalAberration #5\n_rlnAmplitudeContrast #6\nopticsGroup1 1 {PIXEL_SIZE_A} "
        f"{VOLTAGE_KV} 2.7 0.07\n\n\ndata_movies\n\nloop_\n_rlnMicrographMovieName #1\n_rlnOpticsGroup #2\n"
        + "".join(f"Movies/{movie.name} 1\n" for movie in movies)
    )
    argv = [
        "relion_run_motioncorr", "--i", "movies.star", "--o", "MotionCorr/", "--use_own", "--j", str(threads),
        "--patch_x", str(patches[0]), "--patch_y", str(patches[1]), "--bfactor", "150", "--bin_factor", "1",
        "--angpix", str(PIXEL_SIZE_A), "--dose_per_frame", str(DOSE_E_A2), "--voltage", str(VOLTAGE_KV),
        "--dose_weighting", "--save_noDW", "--max_io_threads", str(threads),
    ]
    if kind == "eer":
        argv += ["--eer_grouping", str(EER_GROUPING), "--eer_upsampling", "1"]
    wall, rss = timed(argv, threads=threads, log_path=out_dir / "log.txt", cwd=out_dir)
    return {"wall_s": wall / len(movies), "rss_gib": rss, **score_relion(raw_dir, out_dir, kind)}


def score_relion(raw_dir: Path, out_dir: Path, kind: str) -> dict:
    """RELION's trajectory error and sum quality. RELION reads TIFF movies rows bottom-up, as
    emlive does; the TIFF movie is written that way (:func:`make_movie`), so no flip here."""
    return scores(raw_dir, kind, out_dir / "MotionCorr" / "Movies", "_noDW")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/emlive-bench-motion"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patches", type=int, nargs=2, default=(5, 5))
    parser.add_argument("--movies", nargs="+", choices=list(MOVIES), default=list(MOVIES))
    parser.add_argument("--skip-relion", action="store_true")
    parser.add_argument("--prepare", action="store_true", help="Only write the movies (untimed), then stop")
    parser.add_argument(
        "--reuse-relion", action="store_true", help="Take RELION's times from an earlier run in WORK (results/*.json)"
    )
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--size-divisor", type=int, default=1, help="Divide the frame sizes by this (a quick check of the script)"
    )
    args = parser.parse_args()
    raw_dir = args.work / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    missing = [
        (k, j) for k in args.movies for j, name in enumerate(movie_names(k)) if not (raw_dir / f"{name}.truth.json").exists()
    ]
    if missing:
        print(f"writing synthetic movies: {', '.join(f'{k}[{j}]' for k, j in missing)} (once; reused next time)", flush=True)
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1)) as pool:
            jobs = [
                pool.submit(make_movie, k, raw_dir, args.seed + i + 100 * j, args.size_divisor, j)
                for i, (k, j) in enumerate(missing)
            ]
            for future in jobs:
                future.result()
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    if args.prepare:
        return 0

    rows = []
    for kind in args.movies:
        patches = tuple(args.patches)
        print(f"{kind}: emlive ...", flush=True)
        ours = run_emlive(raw_dir, args.work / "emlive" / kind, kind, threads=args.threads, patches=patches)
        theirs = None
        results = args.work / "results"
        results.mkdir(exist_ok=True)
        (results / f"emlive_{kind}.json").write_text(json.dumps(ours))
        saved = results / f"relion_{kind}.json"
        if args.reuse_relion and saved.exists():
            theirs = json.loads(saved.read_text()) | score_relion(raw_dir, args.work / "relion" / kind, kind)
        elif not args.skip_relion:
            print(f"{kind}: RELION ...", flush=True)
            theirs = run_relion(raw_dir, args.work / "relion" / kind, kind, threads=args.threads, patches=patches)
            saved.write_text(json.dumps(theirs))
        rows.append((kind, ours, theirs))
        print(json.dumps({"movie": kind, "emlive": ours, "relion": theirs}), flush=True)

    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = model
    except (OSError, StopIteration):
        pass
    print()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; threads {args.threads}; patches {args.patches[0]}x{args.patches[1]}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for what, before, after in LOADS:
        print(f"load average (1 min) around {what}: {before:.1f} before, {after:.1f} after")
    print()
    header = (
        "| movie | program | wall s (per movie) | peak GiB | trajectory error px | FRC 0.05–0.25 | FRC 0.25–0.45 "
        "| FRC 0.30–0.45 |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    print(header)
    for kind, ours, theirs in rows:
        for name, r in (("emlive", ours), ("RELION --use_own", theirs)):
            if r is None:
                continue
            print(
                f"| {kind} | {name} | {r['wall_s']:.1f} | {r['rss_gib']:.2f} | {r['error_px']:.3f} | "
                f"{r['frc'][0]:.4f} | {r['frc'][1]:.4f} | {r['frc'][2]:.4f} |"
            )
        if theirs is not None:
            print(
                f"| {kind} | ratio emlive/RELION | {ours['wall_s'] / theirs['wall_s']:.2f} | "
                f"{ours['rss_gib'] / theirs['rss_gib']:.2f} | {ours['error_px'] / theirs['error_px']:.2f} | "
                f"{ours['frc'][0] / theirs['frc'][0]:.2f} | {ours['frc'][1] / theirs['frc'][1]:.2f} | "
                f"{ours['frc'][2] / theirs['frc'][2]:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
