"""cryoSPARC's own dataset files (``.cs``) for a session's accepted micrographs and their picks.

A ``.cs`` file is a NumPy structured array saved with ``numpy.save``: one row per item, one
field per column, named ``<slot>/<name>`` as cryoSPARC names them. cryoSPARC-tools reads it
with ``cryosparc.dataset.Dataset.load`` and imports it into a project with
``project.save_external_result(workspace, dataset, type=..., slots=[...])`` (docs/datasets.md
shows the few lines). Written next to the STAR files, in ``exports/cryosparc/``:

- ``exposures.cs`` (type ``exposure``; slots ``micrograph_blob``, ``micrograph_blob_non_dw``,
  ``mscope_params``, ``ctf``, ``ctf_stats``): the dose-weighted micrograph as
  ``micrograph_blob`` (what cryoSPARC's own Patch Motion hands on to picking and extraction),
  the plain aligned sum as ``micrograph_blob_non_dw`` (what the CTF was fitted on), the
  microscope (kV, Cs, total exposure) and the CTF fit.
- ``particles.cs`` (type ``particle``; slots ``location``, ``pick_stats``), when the session was
  picked: each pick's micrograph (its ``uid`` in ``exposures.cs``, path and shape) and its centre
  as a fraction of the micrograph's width and height.

Units and conventions, as cryoSPARC's fields define them:

- ``*/psize_A``: Å per pixel of the written micrograph; ``*/shape``: ``[ny, nx]`` (rows, columns);
- ``ctf/df1_A``, ``ctf/df2_A``: defocus U and V, Å, positive = underfocus (RELION's
  rlnDefocusU/V, ctffind's defocus 1/2); ``ctf/df_angle_rad``: the azimuth of defocus U, radians
  (RELION's rlnDefocusAngle in radians); ``ctf/phase_shift_rad``: radians; ``ctf/accel_kv``,
  ``ctf/cs_mm``, ``ctf/amp_contrast`` (a fraction);
- ``ctf_stats/cross_corr``: the fit's score; ``ctf_stats/ctf_fit_to_A``: the fit resolution, Å;
- ``location/center_x_frac`` = x / nx and ``location/center_y_frac`` = y / ny with (x, y) the
  pick's pixel in the micrograph as stored (x = column, y = row, row 0 first: RELION's
  rlnCoordinateX/Y in ``<name>_autopick.star``);
- ``pick_stats/ncc_score``: the picker's score for the pick (emlive's figure of merit, not a
  normalised cross-correlation);
- ``uid``: a 64-bit id derived from the micrograph's path (stable across rewrites, so an
  unchanged session writes identical files), and for a particle from its micrograph and index.

Paths are absolute (as in the STAR exports), so a cryoSPARC job reads the files where emlive
wrote them. Strings are fixed-width bytes (``S``), so the files load without pickles.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from emlive.io.atomic import atomic_path
from emlive.io.mrc import read_mrc_header
from emlive.pipeline.step import ExportRow

__all__ = [
    "CRYOSPARC_DIR",
    "EXPOSURES_CS",
    "PARTICLES_CS",
    "CryosparcOptics",
    "CryosparcMicrograph",
    "exposure_table",
    "particle_table",
    "uid_of",
    "write_cryosparc_exports",
    "write_cs_atomic",
]

log = logging.getLogger(__name__)

CRYOSPARC_DIR = "cryosparc"
EXPOSURES_CS = "exposures.cs"
PARTICLES_CS = "particles.cs"


@dataclass(frozen=True)
class CryosparcOptics:
    """The session's instrument values, as the ``mscope_params`` and ``ctf`` slots take them."""

    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    dose_per_frame_e_a2: float


@dataclass(frozen=True)
class CryosparcMicrograph:
    """One accepted micrograph: its files, size, and CTF fit (units in the names)."""

    dose_weighted_path: str
    micrograph_path: str
    shape_px: tuple[int, int]  # (ny, nx)
    pixel_size_a: float
    defocus_u_a: float
    defocus_v_a: float
    azimuth_deg: float
    phase_shift_rad: float
    cross_correlation: float
    fit_resolution_a: float
    total_dose_e_a2: float


def uid_of(text: str) -> int:
    """A stable 64-bit id for ``text`` (the first 8 bytes of its SHA-256), never 0."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") or 1


def _text(values: Sequence[str]) -> np.ndarray:
    encoded = [value.encode() for value in values]
    return np.array(encoded, dtype=f"S{max((len(v) for v in encoded), default=1) or 1}")


def exposure_table(micrographs: Sequence[CryosparcMicrograph], optics: CryosparcOptics) -> np.ndarray:
    """The ``exposures.cs`` array: one row per micrograph (see the module doc for the fields)."""
    n = len(micrographs)
    dw = _text([m.dose_weighted_path for m in micrographs])
    plain = _text([m.micrograph_path for m in micrographs])
    mrc = _text(["MRC"] * n)
    fields: list[tuple] = [
        ("uid", "<u8"),
        ("micrograph_blob/path", dw.dtype.str),
        ("micrograph_blob/idx", "<u4"),
        ("micrograph_blob/shape", "<u4", (2,)),
        ("micrograph_blob/psize_A", "<f4"),
        ("micrograph_blob/format", mrc.dtype.str),
        ("micrograph_blob/is_background_subtracted", "<u4"),
        ("micrograph_blob_non_dw/path", plain.dtype.str),
        ("micrograph_blob_non_dw/idx", "<u4"),
        ("micrograph_blob_non_dw/shape", "<u4", (2,)),
        ("micrograph_blob_non_dw/psize_A", "<f4"),
        ("micrograph_blob_non_dw/format", mrc.dtype.str),
        ("micrograph_blob_non_dw/is_background_subtracted", "<u4"),
        ("mscope_params/accel_kv", "<f4"),
        ("mscope_params/cs_mm", "<f4"),
        ("mscope_params/total_dose_e_per_A2", "<f4"),
        ("mscope_params/phase_plate", "<u4"),
        ("mscope_params/neg_stain", "<u4"),
        ("mscope_params/exp_group_id", "<u4"),
        ("ctf/type", "S9"),
        ("ctf/exp_group_id", "<u4"),
        ("ctf/accel_kv", "<f4"),
        ("ctf/amp_contrast", "<f4"),
        ("ctf/cs_mm", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("ctf/df2_A", "<f4"),
        ("ctf/df_angle_rad", "<f4"),
        ("ctf/phase_shift_rad", "<f4"),
        ("ctf/scale", "<f4"),
        ("ctf/scale_const", "<f4"),
        ("ctf/shift_A", "<f4", (2,)),
        ("ctf/tilt_A", "<f4", (2,)),
        ("ctf/trefoil_A", "<f4", (2,)),
        ("ctf/tetra_A", "<f4", (4,)),
        ("ctf/anisomag", "<f4", (4,)),
        ("ctf/bfactor", "<f4"),
        ("ctf_stats/type", "S9"),
        ("ctf_stats/cross_corr", "<f4"),
        ("ctf_stats/ctf_fit_to_A", "<f4"),
        ("ctf_stats/df_range", "<f4", (2,)),
        ("ctf_stats/phase_shift_range", "<f4", (2,)),
    ]
    table = np.zeros(n, dtype=fields)
    if n == 0:
        return table
    shape = np.array([m.shape_px for m in micrographs], dtype=np.uint32)
    psize = np.array([m.pixel_size_a for m in micrographs], dtype=np.float32)
    table["uid"] = [uid_of(m.dose_weighted_path) for m in micrographs]
    for blob, paths in (("micrograph_blob", dw), ("micrograph_blob_non_dw", plain)):
        table[f"{blob}/path"] = paths
        table[f"{blob}/shape"] = shape
        table[f"{blob}/psize_A"] = psize
        table[f"{blob}/format"] = mrc
    table["mscope_params/accel_kv"] = optics.voltage_kv
    table["mscope_params/cs_mm"] = optics.cs_mm
    table["mscope_params/total_dose_e_per_A2"] = [m.total_dose_e_a2 for m in micrographs]
    phase_shift = np.array([m.phase_shift_rad for m in micrographs], dtype=np.float32)
    table["mscope_params/phase_plate"] = (phase_shift != 0).astype(np.uint32)
    table["ctf/type"] = b"imported"
    table["ctf/accel_kv"] = optics.voltage_kv
    table["ctf/amp_contrast"] = optics.amplitude_contrast
    table["ctf/cs_mm"] = optics.cs_mm
    table["ctf/df1_A"] = [m.defocus_u_a for m in micrographs]
    table["ctf/df2_A"] = [m.defocus_v_a for m in micrographs]
    table["ctf/df_angle_rad"] = [math.radians(m.azimuth_deg) for m in micrographs]
    table["ctf/phase_shift_rad"] = phase_shift
    table["ctf/scale"] = 1.0
    table["ctf/anisomag"] = (1.0, 0.0, 0.0, 1.0)  # no anisotropic magnification
    table["ctf_stats/type"] = b"imported"
    table["ctf_stats/cross_corr"] = [m.cross_correlation for m in micrographs]
    table["ctf_stats/ctf_fit_to_A"] = [m.fit_resolution_a for m in micrographs]
    return table


def particle_table(micrographs: Sequence[CryosparcMicrograph], picks: Sequence[pd.DataFrame]) -> np.ndarray:
    """The ``particles.cs`` array: every pick of every micrograph (``picks[i]``: micrograph i's
    autopick table, rlnCoordinateX/Y in px, rlnAutopickFigureOfMerit), see the module doc."""
    if len(picks) != len(micrographs):
        raise ValueError(f"{len(micrographs)} micrographs but {len(picks)} pick tables")
    paths = _text([m.dose_weighted_path for m in micrographs])
    counts = [len(table) for table in picks]
    n = sum(counts)
    fields: list[tuple] = [
        ("uid", "<u8"),
        ("location/micrograph_uid", "<u8"),
        ("location/exp_group_id", "<u4"),
        ("location/micrograph_path", paths.dtype.str),
        ("location/micrograph_shape", "<u4", (2,)),
        ("location/micrograph_psize_A", "<f4"),
        ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"),
        ("pick_stats/ncc_score", "<f4"),
    ]
    table = np.zeros(n, dtype=fields)
    start = 0
    for i, (micrograph, picked) in enumerate(zip(micrographs, picks, strict=True)):
        end = start + counts[i]
        if end == start:
            continue
        ny, nx = micrograph.shape_px
        rows = table[start:end]
        rows["uid"] = [uid_of(f"{micrograph.dose_weighted_path}#{k}") for k in range(counts[i])]
        rows["location/micrograph_uid"] = uid_of(micrograph.dose_weighted_path)
        rows["location/micrograph_path"] = paths[i]
        rows["location/micrograph_shape"] = (ny, nx)
        rows["location/micrograph_psize_A"] = micrograph.pixel_size_a
        rows["location/center_x_frac"] = picked["rlnCoordinateX"].to_numpy(np.float64) / nx
        rows["location/center_y_frac"] = picked["rlnCoordinateY"].to_numpy(np.float64) / ny
        if "rlnAutopickFigureOfMerit" in picked:
            rows["pick_stats/ncc_score"] = picked["rlnAutopickFigureOfMerit"].to_numpy(np.float64)
        start = end
    return table


def _no_picks() -> pd.DataFrame:
    return pd.DataFrame({"rlnCoordinateX": [], "rlnCoordinateY": [], "rlnAutopickFigureOfMerit": []})


def read_picks(path: Path) -> pd.DataFrame:
    """A RELION coordinate file's table (empty when it has no picks)."""
    blocks = starfile.read(path, always_dict=True)
    table = next(iter(blocks.values()), None)
    return table if isinstance(table, pd.DataFrame) else _no_picks()


def write_cs_atomic(path: Path, table: np.ndarray) -> None:
    """Save ``table`` as cryoSPARC saves a ``.cs`` file (``numpy.save`` format), atomically."""
    if table.dtype.hasobject:
        raise ValueError(f"{path}: a .cs table must not hold Python objects (use fixed-width bytes)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, table, allow_pickle=False)


def _shape_px(path: Path) -> tuple[int, int]:
    """(ny, nx) of an MRC micrograph, from its header (read again only when the file changed:
    a live session's exports are rewritten every few seconds, each time with every micrograph)."""
    stat = path.stat()
    return _header_shape_px(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2**16)
def _header_shape_px(path: Path, size_bytes: int, _mtime_ns: int) -> tuple[int, int]:
    header, _ = read_mrc_header(path, size_bytes)
    return int(header.ny), int(header.nx)


def write_cryosparc_exports(
    rows: Sequence[ExportRow], exports_dir: Path, optics: CryosparcOptics, *, relative_to: Path | None = None
) -> list[Path]:
    """Write ``cryosparc/exposures.cs`` for the accepted micrographs ``rows`` (their motion and
    CTF results), and ``cryosparc/particles.cs`` when any was picked; a stale ``particles.cs``
    is removed. Paths are absolute, or relative to ``relative_to``. Returns the paths written."""

    def named(path: str | Path) -> str:
        return os.path.relpath(path, relative_to) if relative_to is not None else str(path)

    micrographs: list[CryosparcMicrograph] = []
    picks: list[pd.DataFrame] = []
    picked, none_picked = False, _no_picks()
    for row in rows:
        motion, ctf = row.results.get("motion"), row.results.get("ctf")
        if motion is None or ctf is None:
            continue
        dose_weighted = Path(getattr(motion, "dose_weighted_path"))
        try:
            shape_px = _shape_px(dose_weighted)
        except (OSError, ValueError) as err:  # moved or deleted since: cryoSPARC could not read it either
            log.warning("%s: left out of the cryoSPARC exports: %s", dose_weighted, err)
            continue
        micrographs.append(
            CryosparcMicrograph(
                dose_weighted_path=named(row.micrograph_name),
                micrograph_path=named(getattr(motion, "micrograph_path")),
                shape_px=shape_px,
                pixel_size_a=float(getattr(motion, "pixel_size_a")),
                defocus_u_a=float(getattr(ctf, "defocus_u_a")),
                defocus_v_a=float(getattr(ctf, "defocus_v_a")),
                azimuth_deg=float(getattr(ctf, "azimuth_deg")),
                phase_shift_rad=float(getattr(ctf, "phase_shift_rad")),
                cross_correlation=float(getattr(ctf, "cross_correlation")),
                fit_resolution_a=float(getattr(ctf, "fit_resolution_a")),
                total_dose_e_a2=optics.dose_per_frame_e_a2 * int(getattr(motion, "n_frames")),
            )
        )
        pick = row.results.get("pick")
        coordinates = getattr(pick, "coordinates_path", None)
        if isinstance(coordinates, Path) and coordinates.is_file():
            picked = True
            picks.append(read_picks(coordinates))
        else:
            picks.append(none_picked)
    folder = exports_dir / CRYOSPARC_DIR
    written = [folder / EXPOSURES_CS]
    write_cs_atomic(written[0], exposure_table(micrographs, optics))
    if picked:
        written.append(folder / PARTICLES_CS)
        write_cs_atomic(written[1], particle_table(micrographs, picks))
    else:
        (folder / PARTICLES_CS).unlink(missing_ok=True)
    return written
