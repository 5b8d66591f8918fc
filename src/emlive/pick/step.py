"""The particle-picking step, declared once (DESIGN §6), and the exports it adds to a session.

It runs on motion correction's dose-weighted sum, at its pixel size, and phase-flips with the
CTF step's fit. Its exports, rewritten with the others and with the curation applied:

- ``exports/coordinates/<name>_autopick.star``: one RELION coordinate file per accepted
  micrograph (``<name>``: the movie's path under raw/ without its suffix);
- ``exports/autopick.star``: the list RELION's Extract job takes (``data_coordinate_files``:
  rlnMicrographName → rlnMicrographCoordinates), as RELION's AutoPick job writes it;
- ``exports/particles.star``: every pick in one table with its rlnMicrographName (what
  cryoSPARC's "Import Particles" takes beside the micrographs).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import starfile

from emlive.io.atomic import atomic_path
from emlive.io.star import write_star_atomic
from emlive.motion.step import micrograph_of
from emlive.pick import native, topaz
from emlive.pick.types import PickParams, PickResult
from emlive.pipeline.step import Engine, ExportRow, Inputs, Step

AUTOPICK_STAR = "autopick.star"
PARTICLES_STAR = "particles.star"
COORDINATES_DIR = "coordinates"


def on_micrograph(run: Callable[..., PickResult]) -> Callable[[Inputs, Path, PickParams], PickResult]:
    """A picking engine ``run(micrograph, out_dir, params, *, pixel_size_a, stem, optics, ctf)``
    as a step's engine: the dose-weighted sum, phase-flipped with the CTF step's fit."""

    def run_step(inputs: Inputs, out_dir: Path, params: PickParams) -> PickResult:
        micrograph, optics = micrograph_of(inputs, "dose_weighted_path")
        ctf = inputs.results.get("ctf")
        return run(
            micrograph, out_dir, params, pixel_size_a=optics.pixel_size_a, stem=inputs.stem, optics=optics, ctf=ctf
        )

    return run_step


def _copy_if_changed(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically unless ``target`` already has its size and time."""
    src = source.stat()
    try:
        dst = target.stat()
    except FileNotFoundError:
        pass
    else:
        if (dst.st_size, dst.st_mtime_ns) == (src.st_size, src.st_mtime_ns):
            return
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copy2(source, tmp)


def export_picks(rows: Sequence[ExportRow], exports_dir: Path) -> list[Path]:
    """Write the coordinate files of the accepted micrographs that were picked, the list of
    them and all particles in one table (see the module doc); coordinate files of micrographs
    no longer accepted are removed."""
    folder = exports_dir / COORDINATES_DIR
    listed: dict[str, list[str]] = {"rlnMicrographName": [], "rlnMicrographCoordinates": []}
    particles: list[pd.DataFrame] = []
    kept: set[Path] = set()
    for row in rows:
        result = row.results.get("pick")
        if not isinstance(result, PickResult) or not result.coordinates_path.is_file():
            continue
        target = folder / f"{row.name}_autopick.star"
        _copy_if_changed(result.coordinates_path, target)
        kept.add(target)
        listed["rlnMicrographName"].append(row.micrograph_name)
        listed["rlnMicrographCoordinates"].append(str(target.absolute()))
        picks = starfile.read(result.coordinates_path, always_dict=True)
        table = next(iter(picks.values()), None)
        if isinstance(table, pd.DataFrame) and len(table):
            particles.append(table.assign(rlnMicrographName=row.micrograph_name))
    if folder.is_dir():
        for stale in folder.rglob("*_autopick.star"):
            if stale not in kept:
                stale.unlink(missing_ok=True)
    columns = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit"]
    every = pd.concat(particles, ignore_index=True) if particles else pd.DataFrame(columns=columns)
    written = [exports_dir / AUTOPICK_STAR, exports_dir / PARTICLES_STAR]
    write_star_atomic(written[0], {"coordinate_files": pd.DataFrame(listed)})
    write_star_atomic(written[1], {"particles": every[[c for c in columns if c in every]]})
    return written


PICK = Step(
    name="pick",
    params=PickParams,
    result=PickResult,
    needs={"motion": ("dose_weighted_path", "pixel_size_a"), "ctf": ("defocus_u_a", "defocus_v_a", "azimuth_deg")},
    engines={
        "native": Engine(on_micrograph(native.pick_particles), native.ENGINE_VERSION),
        "topaz": Engine(on_micrograph(topaz.pick_particles_topaz), topaz.ENGINE_VERSION),
    },
    exports=(export_picks,),
    description="Pick particles of the given diameter on the dose-weighted sum (RELION coordinate files)",
)
