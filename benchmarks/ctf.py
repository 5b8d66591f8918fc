"""CTF estimation on one thread: emlive's native engine against ctffind 4.1.14, on 4K micrographs.

    .venv/bin/python benchmarks/ctf.py [--ctffind /tmp/ctffind/run_ctffind.sh] [--work DIR] [--repeat 1]

The peer is the real ctffind 4.1.14, built from cisTEM's public source with
``../shared/peers/ctffind/build.sh`` (never part of the project); its ``run_ctffind.sh MIC
OUTPREFIX APIX KV CS AC`` answers ctffind's prompts (box 512, 30–5 Å, defocus 5,000–50,000 Å
in steps of 100 Å, no restraint, no exhaustive search). emlive fits the same band and range.

Ten synthetic 4096² micrographs (:func:`emlive.synth.specimen_image`, Poisson counts at
30 e/px, B-factor 100 Å², Cs 2.7 mm) span 0.6–1.4 Å/px, 200 and 300 kV, mean defocus
0.55–4 µm and astigmatism 200–1,500 Å at random azimuths; each has a known CTF. They are
written once into ``--work`` and reused.

Timing, one thread each (``OMP_NUM_THREADS=1`` for ctffind and this process, ``workers=1``
for emlive's FFTs):

- ctffind: the whole command per micrograph (what a pipeline calling ctffind pays), after one
  untimed run that brings the program into the page cache;
- emlive: a batch in one process, as the pipeline's workers run it — the engine is called in
  a loop after one untimed warm-up call, so per micrograph it pays reading the MRC, the fit
  and writing the ``.txt``, ``_avrot.txt`` and PNG; the start-up a batch pays once (Python
  and emlive's imports, measured in a fresh interpreter) is printed beside it, and the
  per-micrograph time of a batch of this size with it included.

For each micrograph the two run back to back (alternating which goes first), so that the load
of a shared machine falls on both alike; ``--repeat N`` runs the whole set N times and keeps
each engine's fastest time per micrograph. Printed: per micrograph and in summary, seconds,
the error of the mean defocus (%), of the astigmatism ``|U − V|`` (Å) and of its azimuth (°),
for both, with emlive/ctffind ratios of the times; the load average before and after.
"""

from __future__ import annotations

import os

# one thread for every library emlive uses, set before numpy is imported
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from emlive.acquisition import Optics  # noqa: E402
from emlive.ctf.native import estimate_ctf  # noqa: E402
from emlive.ctf.types import CtfParams  # noqa: E402
from emlive.io.mrc import write_mrc_atomic  # noqa: E402
from emlive.synth import specimen_image  # noqa: E402

CS_MM = 2.7
AMPLITUDE_CONTRAST = 0.07
# the band and range run_ctffind.sh gives ctffind
PARAMS = CtfParams(min_res_a=30.0, max_res_a=5.0, min_defocus_a=5000.0, max_defocus_a=50000.0)
# pixel Å, kV, mean defocus Å, |U - V| Å (azimuths drawn from each micrograph's seed)
CASES = [
    (0.60, 300.0, 5500.0, 400.0),
    (0.70, 200.0, 9000.0, 1200.0),
    (0.80, 300.0, 14000.0, 800.0),
    (0.90, 200.0, 20000.0, 300.0),
    (1.00, 300.0, 25000.0, 1500.0),
    (1.10, 200.0, 30000.0, 600.0),
    (1.20, 300.0, 35000.0, 1000.0),
    (1.30, 200.0, 40000.0, 200.0),
    (1.40, 300.0, 12000.0, 1300.0),
    (1.40, 200.0, 7000.0, 700.0),
]
DEFAULT_CTFFIND = Path("/tmp/ctffind/run_ctffind.sh")


@dataclass(frozen=True)
class Micrograph:
    path: Path
    pixel_size_a: float
    voltage_kv: float
    defocus_u_a: float
    defocus_v_a: float
    azimuth_deg: float

    @property
    def optics(self) -> Optics:
        return Optics(
            pixel_size_a=self.pixel_size_a,
            voltage_kv=self.voltage_kv,
            cs_mm=CS_MM,
            amplitude_contrast=AMPLITUDE_CONTRAST,
        )


def micrographs(folder: Path, size: int) -> list[Micrograph]:
    """The synthetic set, written into ``folder`` unless already there (same seeds, same files)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (pixel_a, kv, mean_a, astig_a) in enumerate(CASES):
        rng = np.random.default_rng(2000 + i)
        azimuth = float(rng.uniform(-90.0, 90.0))
        mic = Micrograph(
            folder / f"mic_{i:02d}_{size}.mrc", pixel_a, kv, mean_a + astig_a / 2, mean_a - astig_a / 2, azimuth
        )
        if not mic.path.exists():
            image = specimen_image(
                rng, (size, size), optics=mic.optics, defocus_u_a=mic.defocus_u_a, defocus_v_a=mic.defocus_v_a,
                azimuth_deg=azimuth, contrast=0.05, bfactor_a2=100.0,
            )
            counts = rng.poisson(30.0 * np.maximum(image, 0.0)).astype(np.float32)
            write_mrc_atomic(mic.path, counts, pixel_size_a=pixel_a)
        out.append(mic)
    return out


def run_emlive(mic: Micrograph, out: Path) -> tuple[float, float, float]:
    result = estimate_ctf(mic.path, out, mic.optics, PARAMS, workers=1)
    return result.defocus_u_a, result.defocus_v_a, result.azimuth_deg


def run_ctffind(script: Path, mic: Micrograph, out: Path) -> tuple[float, float, float]:
    prefix = out / mic.path.stem
    argv = [str(script), str(mic.path), str(prefix), f"{mic.pixel_size_a}", f"{mic.voltage_kv}", f"{CS_MM}",
            f"{AMPLITUDE_CONTRAST}"]
    subprocess.run(argv, capture_output=True, text=True, check=True, env=os.environ.copy())
    row = np.loadtxt(prefix.with_suffix(".txt"), comments="#")
    return float(row[1]), float(row[2]), float(row[3])


def errors(mic: Micrograph, found: tuple[float, float, float]) -> tuple[float, float, float]:
    """Mean-defocus error (fraction), astigmatism error (Å) and azimuth error (°, period 180)."""
    u, v, azimuth = found
    truth = 0.5 * (mic.defocus_u_a + mic.defocus_v_a)
    defocus = abs(0.5 * (u + v) - truth) / truth
    astig = abs((u - v) - (mic.defocus_u_a - mic.defocus_v_a))
    angle = abs((azimuth - mic.azimuth_deg + 90.0) % 180.0 - 90.0)
    return defocus, astig, angle


def start_up_s() -> float:
    """Seconds a fresh interpreter takes to import what the batch imports (paid once per batch)."""
    code = "import time; t = time.perf_counter(); import emlive.ctf.native; print(time.perf_counter() - t)"
    started = time.perf_counter()
    imports = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    total = time.perf_counter() - started
    return max(total, imports)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ctffind", type=Path, default=DEFAULT_CTFFIND, help="run_ctffind.sh of the built peer")
    parser.add_argument("--work", type=Path, default=Path("/tmp/emlive-ctf-benchmark"), help="micrographs and outputs")
    parser.add_argument("--size", type=int, default=4096, help="micrograph edge, px")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the set; the fastest time per micrograph counts")
    args = parser.parse_args()
    if not args.ctffind.exists():
        print(f"{args.ctffind} not found: build ctffind with ../shared/peers/ctffind/build.sh (see its README)")
        return 2
    load_before = os.getloadavg()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.node()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · one thread per engine · Python {platform.python_version()} · numpy {np.__version__}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    data = micrographs(args.work / "micrographs", args.size)
    out_emlive, out_ctffind = args.work / "emlive", args.work / "ctffind"
    start_up = start_up_s()
    run_emlive(data[0], out_emlive / "warm-up")  # imports, caches, FFT plans: paid once per batch
    run_ctffind(args.ctffind, data[0], out_ctffind / "warm-up")  # the binary and its libraries in the page cache
    seconds: dict[str, list[list[float]]] = {"emlive": [[] for _ in data], "ctffind": [[] for _ in data]}
    found: dict[str, list[tuple[float, float, float]]] = {"emlive": [], "ctffind": []}
    for rep in range(args.repeat):
        for i, mic in enumerate(data):
            order = ("emlive", "ctffind") if (i + rep) % 2 == 0 else ("ctffind", "emlive")
            for name in order:
                started = time.perf_counter()
                if name == "emlive":
                    result = run_emlive(mic, out_emlive)
                else:
                    result = run_ctffind(args.ctffind, mic, out_ctffind)
                seconds[name][i].append(time.perf_counter() - started)
                if rep == 0:
                    found[name].append(result)
    load_after = os.getloadavg()
    print(f"load average after:  {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print()
    print("| micrograph | Å/px | kV | defocus U/V (Å) | azimuth | emlive s | ctffind s | ratio "
          "| defocus err emlive / ctffind | astig err (Å) | azimuth err (°) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    best = {name: [min(t) for t in times] for name, times in seconds.items()}
    errs = {name: [errors(mic, f) for mic, f in zip(data, found[name], strict=True)] for name in found}
    for i, mic in enumerate(data):
        e, c = errs["emlive"][i], errs["ctffind"][i]
        print(
            f"| {mic.path.stem} | {mic.pixel_size_a:.2f} | {mic.voltage_kv:.0f} | {mic.defocus_u_a:.0f}/{mic.defocus_v_a:.0f} "
            f"| {mic.azimuth_deg:.1f}° | {best['emlive'][i]:.3f} | {best['ctffind'][i]:.3f} "
            f"| {best['emlive'][i] / best['ctffind'][i]:.2f} | {100 * e[0]:.3f} % / {100 * c[0]:.3f} % "
            f"| {e[1]:.0f} / {c[1]:.0f} | {e[2]:.2f} / {c[2]:.2f} |"
        )
    print()
    print("| engine | s / micrograph (mean) | median defocus err | largest | median astig err (Å) | largest "
          "| median azimuth err (°) | largest |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("emlive", "ctffind"):
        d, a, z = (np.array([e[k] for e in errs[name]]) for k in range(3))
        print(
            f"| {name} | {statistics.mean(best[name]):.3f} | {100 * np.median(d):.4f} % | {100 * d.max():.3f} % "
            f"| {np.median(a):.0f} | {a.max():.0f} | {np.median(z):.2f} | {z.max():.2f} |"
        )
    ratios = np.array(best["emlive"]) / np.array(best["ctffind"])
    mean_ratio = statistics.mean(best["emlive"]) / statistics.mean(best["ctffind"])
    with_start_up = (start_up + sum(best["emlive"])) / len(data)
    print()
    print(
        f"emlive / ctffind time per micrograph: {mean_ratio:.2f} (mean times); per micrograph "
        f"median {np.median(ratios):.2f}, largest {ratios.max():.2f}"
    )
    print(
        f"emlive's batch start-up (fresh interpreter, imports): {start_up:.2f} s once; with it, a batch of "
        f"{len(data)} costs {with_start_up:.3f} s per micrograph ({with_start_up / statistics.mean(best['ctffind']):.2f}× ctffind)"
    )
    print(json.dumps({"emlive_s": best["emlive"], "ctffind_s": best["ctffind"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
