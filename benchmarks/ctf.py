"""CTF estimation: emlive's native engine against the peers installable here, on 4K micrographs.

    .venv/bin/python benchmarks/ctf.py [--n 4] [--size 4096] [--threads 2]

Each synthetic micrograph (:func:`emlive.synth.specimen_image`, Poisson counts at 30 e/px) has a
known defocus; every engine fits the same ones with the same optics and the same fitting band
(30–5 Å, defocus 0.5–5 µm). Printed: seconds per micrograph, the median and largest error of
the mean defocus, and emlive's ratios. Peers (not project dependencies; install them by hand):

- teamtomo's torch-ctf-estimation (PyPI): ``.venv/bin/pip install torch==2.13.0`` (a CPU
  wheel) then ``.venv/bin/pip install torch-ctf-estimation==0.6.0``; skipped if not importable.
- ctffind (4.1 or 5) when ``ctffind`` is on PATH; skipped, saying so, when it is not.

emlive runs its whole engine (MRC in; .txt, _avrot.txt and PNG out); the torch peer gets the
micrograph as an in-memory tensor (no I/O), ctffind the same MRC file.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from emlive.acquisition import Optics
from emlive.ctf.native import estimate_ctf
from emlive.ctf.types import CtfParams
from emlive.io.mrc import write_mrc_atomic
from emlive.synth import specimen_image

PIXEL_A = 1.0
OPTICS = Optics(pixel_size_a=PIXEL_A, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07)
PARAMS = CtfParams(min_res_a=30.0, max_res_a=5.0, min_defocus_a=5000.0, max_defocus_a=50000.0)


def micrographs(n: int, size: int, folder: Path) -> list[tuple[Path, np.ndarray, float, float, float]]:
    """``n`` micrographs (path, image, U, V, azimuth) with defocus spread over 0.8–3.5 µm."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(1000 + i)
        mean = 8000.0 + i * 27000.0 / max(n - 1, 1)
        astig = rng.uniform(0.0, 1500.0)
        u, v, azimuth = mean + astig / 2, mean - astig / 2, rng.uniform(-90.0, 90.0)
        image = specimen_image(
            rng, (size, size), optics=OPTICS, defocus_u_a=u, defocus_v_a=v, azimuth_deg=azimuth,
            contrast=0.05, bfactor_a2=100.0,
        )
        counts = rng.poisson(30.0 * np.maximum(image, 0.0)).astype(np.float32)
        path = folder / f"mic_{i:03d}.mrc"
        write_mrc_atomic(path, counts, pixel_size_a=PIXEL_A)
        out.append((path, counts, u, v, azimuth))
    return out


def run_emlive(path: Path, image: np.ndarray, out: Path, threads: int) -> tuple[float, float]:
    result = estimate_ctf(path, out, OPTICS, PARAMS, workers=threads)
    return result.defocus_u_a, result.defocus_v_a


def torch_runner(threads: int) -> Callable[[Path, np.ndarray, Path, int], tuple[float, float]] | None:
    try:
        import torch

        # The torchvision wheel that pip pairs with torch 2.13 here is a CUDA build whose
        # compiled ops cannot load beside the CPU torch; torch-ctf-estimation only uses its
        # pure-Python image functions, so skip the registration of the compiled ops' shapes.
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
        import torch_ctf_estimation as tce
    except ImportError:
        return None
    torch.set_num_threads(threads)
    optical = tce.OpticalParams(
        pixel_spacing_angstroms=PIXEL_A,
        voltage_kev=OPTICS.voltage_kv,
        spherical_aberration_mm=OPTICS.cs_mm,
        amplitude_contrast_fraction=OPTICS.amplitude_contrast,
        target_pixel_spacing_angstroms=2.0,  # Nyquist 4 Å: the 5 Å band fits
    )
    fitting = tce.CTFFittingParams(
        defocus_grid_resolution=(1, 1, 1),
        frequency_fit_range_angstroms=(PARAMS.min_res_a, PARAMS.max_res_a),
        defocus_range_microns=(PARAMS.min_defocus_a / 1e4, PARAMS.max_defocus_a / 1e4),
        patch_sidelength=512,
    )

    def run(path: Path, image: np.ndarray, out: Path, threads: int) -> tuple[float, float]:
        _, _, result2d = tce.estimate_ctf(
            torch.from_numpy(image), optical, fitting, device=torch.device("cpu")
        )
        return float(result2d.defocus_u) * 1e4, float(result2d.defocus_v) * 1e4

    return run


def ctffind_runner() -> Callable[[Path, np.ndarray, Path, int], tuple[float, float]] | None:
    binary = shutil.which("ctffind")
    if binary is None:
        return None

    def run(path: Path, image: np.ndarray, out: Path, threads: int) -> tuple[float, float]:
        out.mkdir(parents=True, exist_ok=True)
        diagnostic = out / f"{path.stem}_ctffind.mrc"
        answers = [
            str(path), str(diagnostic), f"{PIXEL_A}", f"{OPTICS.voltage_kv}", f"{OPTICS.cs_mm}",
            f"{OPTICS.amplitude_contrast}", "512", f"{PARAMS.min_res_a}", f"{PARAMS.max_res_a}",
            f"{PARAMS.min_defocus_a}", f"{PARAMS.max_defocus_a}", "100", "no", "no", "no", "no", "no",
        ]
        subprocess.run([binary], input="\n".join(answers) + "\n", text=True, capture_output=True, check=True)
        row = np.loadtxt(diagnostic.with_suffix(".txt"), comments="#")
        return float(row[1]), float(row[2])

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4, help="micrographs")
    parser.add_argument("--size", type=int, default=4096, help="micrograph edge, px")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every engine")
    args = parser.parse_args()
    engines: dict[str, Callable[[Path, np.ndarray, Path, int], tuple[float, float]]] = {"emlive native": run_emlive}
    peer = torch_runner(args.threads)
    if peer is None:
        print("torch-ctf-estimation: not importable, skipped (see this script's docstring to install it)")
    else:
        engines["torch-ctf-estimation"] = peer
    ctffind = ctffind_runner()
    if ctffind is None:
        print("ctffind: not found on PATH, skipped")
    else:
        engines["ctffind"] = ctffind
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.node()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · {args.threads} threads · Python {platform.python_version()}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = micrographs(args.n, args.size, folder)
        print(f"{args.n} micrographs of {args.size}² px at {PIXEL_A} Å, 300 kV, defocus 0.8–3.5 µm, astigmatism 0–1500 Å")
        small = np.ascontiguousarray(data[0][1][:1024, :1024])
        small_path = folder / "warm_up.mrc"
        write_mrc_atomic(small_path, small, pixel_size_a=PIXEL_A)
        rows = {}
        for name, run in engines.items():
            run(small_path, small, folder / "warm-up", args.threads)  # imports, caches, FFT plans
            times, errors = [], []
            for path, image, u, v, _ in data:
                started = time.perf_counter()
                fu, fv = run(path, image, folder / name.replace(" ", "_"), args.threads)
                times.append(time.perf_counter() - started)
                truth = 0.5 * (u + v)
                errors.append(abs(0.5 * (fu + fv) - truth) / truth)
            rows[name] = (statistics.mean(times), statistics.median(errors), max(errors))
    print()
    print(f"| engine | s / micrograph | median defocus error | largest defocus error |")
    print("|---|---:|---:|---:|")
    for name, (seconds, median, worst) in rows.items():
        print(f"| {name} | {seconds:.2f} | {100 * median:.3f} % | {100 * worst:.3f} % |")
    ours = rows["emlive native"]
    peers = {k: v for k, v in rows.items() if k != "emlive native"}
    if peers:
        fastest = min(peers, key=lambda k: peers[k][0])
        print()
        print(
            f"emlive is {peers[fastest][0] / ours[0]:.1f}× faster than the fastest peer ({fastest}); "
            f"median error {100 * ours[1]:.3f} % vs {100 * peers[fastest][1]:.3f} %"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
