"""Particle picking: emlive's native engine against topaz (pretrained general model, CPU).

    .venv/bin/python benchmarks/pick.py [--topaz /opt/topaz-venv/bin/topaz] [--work DIR] [--threads 2]

The peer is topaz 0.3 (``pip install topaz-em`` in a virtual environment of its own, never
emlive's), run through emlive's ``topaz`` engine (:mod:`emlive.pick.topaz`): ``topaz
preprocess`` (Fourier-crop so the particle is about 16 px wide, normalize) and ``topaz extract``
with the pretrained ResNet16 model, its default threshold (score -1) and the particle radius as
the suppression distance. emlive's native engine (:mod:`emlive.pick.native`) runs with its
defaults and the micrograph's true CTF (what a perfect CTF step passes it; it phase-flips).

Eight synthetic 4096² micrographs at 1 Å/px and 40 e/Å² (:func:`emlive.synth.particles.
particle_micrograph`: random globular particles, weak-phase CTF at 0.8–3 µm underfocus,
Poisson noise) of four kinds — normal (20 % of the area in particles), crowded (packed
1.05 diameters apart), empty ice, a carbon edge (35 % carbon film: its particles must not be
picked) — and particle diameters of 100, 150 and 250 Å. They are written once into
``--work`` (with their true positions) and reused.

Timing: both engines write the same outputs (``_autopick.star`` and ``_picks.png``) and are
timed per micrograph as whole engine calls, back to back (alternating which goes first, so
that the load of a shared machine falls on both alike), with ``--threads`` CPU threads each
(topaz ``-j``; emlive's FFT workers are 2):

- topaz: two fresh processes per micrograph, as a pipeline runs it, so each micrograph pays
  topaz's start-up (Python, PyTorch and the model, printed separately) and its preprocess;
- emlive: a batch in one process, as the pipeline's workers run it, after one untimed warm-up
  call; the start-up a batch pays once (imports, measured in a fresh interpreter) is printed.

Accuracy: :func:`emlive.pick.score.match_picks`, one-to-one matching within 0.3 diameters;
precision, recall and F1 per micrograph (for empty ice, the number of picks is what counts).
``--repeat N`` keeps each engine's fastest time per micrograph. Printed: the machine, the
command, the load average before and after, a table per micrograph and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import starfile

from emlive.acquisition import Optics
from emlive.ctf.types import CtfResult
from emlive.pick.native import pick_particles
from emlive.pick.score import PickScore, match_picks
from emlive.pick.topaz import TOPAZ, pick_particles_topaz
from emlive.pick.types import PickParams
from emlive.synth.particles import particle_micrograph, write_particle_micrograph
from emlive.tools import ToolSpec, ToolsSettings, configure_tools, tool_spec

PIXEL_SIZE_A = 1.0
DOSE_E_A2 = 40.0
MATCH_D = 0.3  # a pick finds a particle within 0.3 diameters
# kind, diameter Å
CASES = [
    ("normal", 100.0),
    ("normal", 150.0),
    ("normal", 250.0),
    ("crowded", 100.0),
    ("crowded", 250.0),
    ("empty", 150.0),
    ("carbon", 150.0),
    ("carbon", 250.0),
]
DEFAULT_TOPAZ = Path("/opt/topaz-venv/bin/topaz")
ENGINES = ("native", "topaz")


@dataclass(frozen=True)
class Micrograph:
    path: Path
    kind: str
    diameter_a: float
    truth_xy: np.ndarray
    defocus_u_a: float
    defocus_v_a: float
    azimuth_deg: float

    @property
    def ctf(self) -> CtfResult:
        """The true CTF as the CTF step would hand it to picking (its file paths are unused)."""
        return CtfResult(
            defocus_u_a=self.defocus_u_a, defocus_v_a=self.defocus_v_a, azimuth_deg=self.azimuth_deg,
            cross_correlation=1.0, fit_resolution_a=4.0, fit_ok=True, ice_ring_ratio=None,
            output_txt_path=self.path, avrot_path=self.path, diagnostic_png_path=self.path,
        )


def micrographs(folder: Path, size: int) -> list[Micrograph]:
    """The synthetic set, written into ``folder`` unless already there (same seeds, same files)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (kind, diameter_a) in enumerate(CASES):
        path = folder / f"{i:02d}_{kind}_{diameter_a:.0f}A_{size}.mrc"
        truth = path.with_suffix(".npz")
        if not (path.exists() and truth.exists()):
            mic = particle_micrograph(
                np.random.default_rng(3000 + i), shape=(size, size), pixel_size_a=PIXEL_SIZE_A,
                diameter_a=diameter_a, kind=kind, dose_e_per_a2=DOSE_E_A2,  # type: ignore[arg-type]
            )
            write_particle_micrograph(path, mic)
            np.savez(truth, xy=mic.positions_px, ctf=[mic.defocus_u_a, mic.defocus_v_a, mic.azimuth_deg])
        saved = np.load(truth)
        u, v, azimuth = (float(x) for x in saved["ctf"])
        out.append(Micrograph(path, kind, diameter_a, saved["xy"].reshape(-1, 2), u, v, azimuth))
    return out


def run(engine: str, mic: Micrograph, out: Path) -> Path:
    """One engine's whole call on one micrograph; the coordinate file it wrote."""
    params = PickParams(engine=engine, diameter_a=mic.diameter_a)
    if engine == "native":
        optics = Optics(pixel_size_a=PIXEL_SIZE_A)
        result = pick_particles(mic.path, out, params, pixel_size_a=PIXEL_SIZE_A, optics=optics, ctf=mic.ctf)
    else:
        result = pick_particles_topaz(mic.path, out, params, pixel_size_a=PIXEL_SIZE_A)
    return result.coordinates_path


def score(mic: Micrograph, star: Path) -> PickScore:
    table = starfile.read(star, always_dict=True)[""]
    picked = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=np.float64).reshape(-1, 2)
    return match_picks(picked, mic.truth_xy, max_distance_px=MATCH_D * mic.diameter_a / PIXEL_SIZE_A)


def seconds_of(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - started


def native_start_up_s() -> float:
    """Seconds a fresh interpreter takes to import what the batch imports (paid once per batch)."""
    return seconds_of([sys.executable, "-c", "import emlive.pick.native"])


def topaz_start_up_s(topaz: str) -> float:
    """Seconds topaz's two commands take to start (Python, PyTorch, topaz), paid per micrograph."""
    return seconds_of([topaz, "preprocess", "--help"]) + seconds_of([topaz, "extract", "--help"])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topaz", type=Path, default=DEFAULT_TOPAZ, help="topaz executable (in its own venv)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/emlive-pick-benchmark"), help="micrographs and outputs")
    parser.add_argument("--size", type=int, default=4096, help="micrograph edge, px")
    parser.add_argument("--threads", type=int, default=2, help="topaz's PyTorch threads (-j)")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the set; the fastest time per micrograph counts")
    args = parser.parse_args()
    if not args.topaz.exists():
        print(f"{args.topaz} not found: python3 -m venv /opt/topaz-venv && /opt/topaz-venv/bin/pip install topaz-em")
        return 2
    configure_tools(ToolsSettings(topaz=ToolSpec(executable=str(args.topaz), threads=args.threads)))
    version = TOPAZ.version(tool_spec("topaz"))
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.node()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · numpy {np.__version__} · topaz {version} "
        f"(-j {args.threads})"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"load average before: {load()}")
    data = micrographs(args.work / "micrographs", args.size)
    outs = {engine: args.work / engine for engine in ENGINES}
    native_start = native_start_up_s()
    topaz_start = topaz_start_up_s(str(args.topaz))
    run("native", data[0], outs["native"] / "warm-up")
    seconds: dict[str, list[list[float]]] = {engine: [[] for _ in data] for engine in ENGINES}
    scores: dict[str, list[PickScore]] = {engine: [] for engine in ENGINES}
    for rep in range(args.repeat):
        for i, mic in enumerate(data):
            order = ENGINES if (i + rep) % 2 == 0 else ENGINES[::-1]
            for engine in order:
                started = time.perf_counter()
                star = run(engine, mic, outs[engine])
                seconds[engine][i].append(time.perf_counter() - started)
                if rep == 0:
                    scores[engine].append(score(mic, star))
            print(f"  {mic.path.stem}: native {seconds['native'][i][-1]:.1f} s, topaz {seconds['topaz'][i][-1]:.1f} s, "
                  f"load {load()}", flush=True)
    print(f"load average after:  {load()}")
    best = {engine: [min(t) for t in times] for engine, times in seconds.items()}
    print()
    print("| micrograph | kind | Ø Å | true | native s | topaz s | topaz / native | native picks · P / R / F1 "
          "| topaz picks · P / R / F1 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, mic in enumerate(data):
        cells = []
        for engine in ENGINES:
            s = scores[engine][i]
            cells.append(f"{s.n_picked} · {s.precision:.2f} / {s.recall:.2f} / {s.f1:.2f}" if s.n_true else
                         f"{s.n_picked} · (no particles)")
        print(
            f"| {mic.path.stem} | {mic.kind} | {mic.diameter_a:.0f} | {len(mic.truth_xy)} | {best['native'][i]:.2f} "
            f"| {best['topaz'][i]:.2f} | {best['topaz'][i] / best['native'][i]:.1f} | {cells[0]} | {cells[1]} |"
        )
    print()
    print("| engine | s / micrograph (mean) | mean precision | mean recall | mean F1 | picks in empty ice |")
    print("|---|---:|---:|---:|---:|---:|")
    for engine in ENGINES:
        with_particles = [s for s in scores[engine] if s.n_true]
        empty = sum(s.n_picked for s in scores[engine] if not s.n_true)
        print(
            f"| {engine} | {statistics.mean(best[engine]):.2f} "
            f"| {statistics.mean(s.precision for s in with_particles):.3f} "
            f"| {statistics.mean(s.recall for s in with_particles):.3f} "
            f"| {statistics.mean(s.f1 for s in with_particles):.3f} | {empty} |"
        )
    ratios = np.array(best["topaz"]) / np.array(best["native"])
    print()
    print(
        f"topaz / native time per micrograph: {statistics.mean(best['topaz']) / statistics.mean(best['native']):.1f} "
        f"(mean times); per micrograph median {np.median(ratios):.1f}, smallest {ratios.min():.1f}"
    )
    print(
        f"start-up: emlive's batch {native_start:.2f} s once (fresh interpreter, imports); topaz {topaz_start:.2f} s "
        f"per micrograph (its two commands' --help), included in its times above"
    )
    print(json.dumps({"native_s": best["native"], "topaz_s": best["topaz"],
                      "native_f1": [s.f1 for s in scores["native"]], "topaz_f1": [s.f1 for s in scores["topaz"]]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
