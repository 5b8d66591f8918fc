"""RELION 5 tomography import files: ``tomograms.star`` and one STAR file per tilt series.

The layout RELION 5's ImportTomo / MotionCorr / CtfFind / AlignTiltSeries / ReconstructTomograms
jobs write and read (checked against RELION's own test project,
``3dem/relion: src/tomography_python_programs/_tests/test_project_directory/tilt_series_metadata``,
see ``tests/tomo/test_relion5.py``):

``tomograms.star``, block ``data_global``, one row per tilt series:
    rlnTomoName, rlnTomoTiltSeriesStarFile, rlnVoltage (kV), rlnSphericalAberration (mm),
    rlnAmplitudeContrast (fraction), rlnMicrographOriginalPixelSize (Å, the movies'),
    rlnTomoHand (±1, the slope of defocus over the tomogram's z), rlnOpticsGroupName,
    rlnTomoTiltSeriesPixelSize (Å, the motion-corrected tilt images'), and once reconstructed:
    rlnTomoTomogramBinning (tomogram pixel / tilt-series pixel), rlnTomoSizeX/Y/Z (the tomogram's
    size in tilt-series pixels, "bin 1"), rlnTomoReconstructedTomogram; rlnEtomoDirectiveFile when
    IMOD aligned it.

``<TomoName>.star``, block ``data_<TomoName>``, one row per tilt image (excluded tilts left out,
as RELION's ExcludeTiltImages job does), sorted by tilt angle:
    rlnMicrographMovieName, rlnTomoTiltMovieFrameCount, rlnTomoNominalStageTiltAngle (°),
    rlnTomoNominalTiltAxisAngle (°), rlnMicrographPreExposure (e/Å² before this tilt, in
    acquisition order), rlnTomoNominalDefocus (µm, SerialEM's target, negative = underfocus),
    rlnMicrographName (the motion-corrected tilt image), rlnMicrographMetadata,
    rlnAccumMotionTotal/Early/Late (Å), rlnCtfPowerSpectrum, rlnCtfImage, rlnDefocusU/V (Å,
    positive = underfocus), rlnCtfAstigmatism (|U − V|, Å), rlnDefocusAngle (°),
    rlnCtfFigureOfMerit, rlnCtfMaxResolution (Å), rlnCtfIceRingDensity, rlnCtfScalefactor; and
    once aligned: rlnTomoXTilt, rlnTomoYTilt, rlnTomoZRot (°), rlnTomoXShiftAngst,
    rlnTomoYShiftAngst (Å). Columns with no value for any tilt are left out.

**Alignment convention** (RELION's ``Tomogram::setProjectionMatrix``): a tomogram point ``X``
(tilt-series pixels, origin at ``int(N/2)`` on each axis) appears in the tilt image at
``Rz(ZRot) · Ry(YTilt) · Rx(XTilt) · X + shift + int(image_size/2)``, right-handed rotations in
degrees, ``shift = (XShiftAngst, YShiftAngst) / rlnTomoTiltSeriesPixelSize``. emlive's geometry
(:mod:`emlive.tomo.geometry`: a specimen point at ``R(α) (x cos θ + z sin θ, y) + s`` from the
image centre ``(n − 1) / 2``) is the same rotation: XTilt = 0, YTilt = θ (the tilt angle),
ZRot = α (the tilt axis angle); the shift ``s`` becomes RELION's with the half-pixel between the
two centres accounted for (:func:`relion_shifts_a`). AreTomo's ``.aln`` maps the same way
(ZRot = ROT, YTilt = TILT, shifts = (TX, TY) × pixel size), as RELION's own AreTomo wrapper does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emlive.io.star import write_star_atomic

__all__ = [
    "RelionTilt",
    "TomogramEntry",
    "relion_shifts_a",
    "tomogram_binning",
    "tilt_series_table",
    "tomograms_table",
    "write_tilt_series_star",
    "write_tomograms_star",
]


@dataclass(frozen=True)
class RelionTilt:
    """What RELION 5 keeps per tilt image; None where not (yet) known (column left out)."""

    movie_name: str
    nominal_tilt_deg: float
    pre_exposure_e_per_a2: float
    frame_count: int | None = None
    nominal_defocus_um: float | None = None
    micrograph_name: str | None = None
    micrograph_metadata: str | None = None
    power_spectrum: str | None = None
    ctf_image: str | None = None
    accum_motion_total_a: float | None = None
    accum_motion_early_a: float | None = None
    accum_motion_late_a: float | None = None
    defocus_u_a: float | None = None
    defocus_v_a: float | None = None
    defocus_angle_deg: float | None = None
    ctf_figure_of_merit: float | None = None
    ctf_max_resolution_a: float | None = None
    ctf_ice_ring_density: float | None = None
    ctf_scale_factor: float | None = None


@dataclass(frozen=True)
class TomogramEntry:
    """One row of ``tomograms.star``. Sizes in tilt-series pixels (RELION's "bin 1")."""

    name: str
    tilt_series_star: str
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    original_pixel_size_a: float
    tilt_series_pixel_size_a: float
    hand: float = -1.0
    optics_group_name: str = "opticsGroup1"
    tomogram_binning: float | None = None
    size_xyz_px: tuple[int, int, int] | None = None
    reconstructed_tomogram: str | None = None
    etomo_directive_file: str | None = None


_TILT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rlnMicrographMovieName", "movie_name"),
    ("rlnTomoTiltMovieFrameCount", "frame_count"),
    ("rlnTomoNominalStageTiltAngle", "nominal_tilt_deg"),
    ("rlnTomoNominalTiltAxisAngle", ""),
    ("rlnMicrographPreExposure", "pre_exposure_e_per_a2"),
    ("rlnTomoNominalDefocus", "nominal_defocus_um"),
    ("rlnCtfPowerSpectrum", "power_spectrum"),
    ("rlnMicrographName", "micrograph_name"),
    ("rlnMicrographMetadata", "micrograph_metadata"),
    ("rlnAccumMotionTotal", "accum_motion_total_a"),
    ("rlnAccumMotionEarly", "accum_motion_early_a"),
    ("rlnAccumMotionLate", "accum_motion_late_a"),
    ("rlnCtfImage", "ctf_image"),
    ("rlnDefocusU", "defocus_u_a"),
    ("rlnDefocusV", "defocus_v_a"),
    ("rlnCtfAstigmatism", ""),
    ("rlnDefocusAngle", "defocus_angle_deg"),
    ("rlnCtfFigureOfMerit", "ctf_figure_of_merit"),
    ("rlnCtfMaxResolution", "ctf_max_resolution_a"),
    ("rlnCtfIceRingDensity", "ctf_ice_ring_density"),
    ("rlnCtfScalefactor", "ctf_scale_factor"),
)


def relion_shifts_a(
    shifts_px: np.ndarray,
    *,
    pixel_size_a: float | tuple[float, float],
    image_size_px: tuple[int, int],
    tilt_series_pixel_size_a: float,
    tilt_series_image_size_px: tuple[int, int],
) -> np.ndarray:
    """emlive shifts → RELION's (rlnTomoXShiftAngst, rlnTomoYShiftAngst) in Å, (n, 2).

    ``shifts_px`` (n, 2) (x, y): where each tilt's content moved, in pixels of the images the
    alignment ran on (``pixel_size_a``, ``image_size_px`` = (nx, ny)), from their centre
    ``(n − 1) / 2`` (:mod:`emlive.tomo.geometry`). The tilt series RELION reads has
    ``tilt_series_image_size_px`` (nx, ny) pixels of ``tilt_series_pixel_size_a``, and the two
    share pixel 0's position, pixel ``j`` of the binned images lying at ``j × pixel_size_a``
    (binning by Fourier cropping does that). RELION measures from ``int(N/2)`` of the tilt-series image and rotates
    about the tomogram's ``int(N/2)``, which is taken to be the same specimen point as
    emlive's rotation centre. NaN shifts (excluded tilts) stay NaN. ``pixel_size_a`` may be
    (x, y) when binning scaled the two sides slightly differently (each side rounded to whole
    pixels: ``tilt-series size × tilt-series pixel / binned size`` per side).
    """
    s = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    pixel_size_a = np.broadcast_to(np.asarray(pixel_size_a, dtype=np.float64), (2,))
    centre_a = (np.asarray(image_size_px, dtype=np.float64) - 1.0) / 2.0 * pixel_size_a
    relion_centre_a = np.floor(np.asarray(tilt_series_image_size_px) / 2.0) * tilt_series_pixel_size_a
    # positions are scaled by the pixel-size ratio about pixel 0: position_a = index × pixel size
    return s * pixel_size_a + centre_a - relion_centre_a


def tilt_series_table(
    tilts: Sequence[RelionTilt],
    *,
    nominal_tilt_axis_deg: float,
    tilt_axis_deg: float | Sequence[float] | None = None,
    y_tilt_deg: Sequence[float] | None = None,
    shifts_a: np.ndarray | None = None,
    x_tilt_deg: float | Sequence[float] = 0.0,
    exclude: Sequence[int] = (),
) -> pd.DataFrame:
    """The per-tilt table of one tilt series (pure). Rows sorted by nominal tilt angle.

    ``tilts`` in any order; the alignment arrays are per tilt in the same order:
    ``tilt_axis_deg`` (refined; one value or one per tilt) → rlnTomoZRot, ``y_tilt_deg``
    (refined tilt angles, default the nominal ones) → rlnTomoYTilt, ``shifts_a`` (n, 2) from
    :func:`relion_shifts_a` → rlnTomoX/YShiftAngst. Without ``tilt_axis_deg`` and
    ``shifts_a`` the alignment columns are left out (an unaligned import). ``exclude``: indices
    into ``tilts`` to leave out (dark, failed CTF, ...). Defocus angle, U and V as given
    (RELION's convention: U ≥ V is not required); rlnCtfAstigmatism = |U − V|.
    """
    n = len(tilts)
    if n == 0:
        raise ValueError("a tilt series needs at least one tilt")
    aligned = tilt_axis_deg is not None or shifts_a is not None
    if aligned and (tilt_axis_deg is None or shifts_a is None):
        raise ValueError("an alignment needs both tilt_axis_deg and shifts_a")
    columns: dict[str, list[object]] = {}
    for column, attr in _TILT_COLUMNS:
        if column == "rlnTomoNominalTiltAxisAngle":
            columns[column] = [float(nominal_tilt_axis_deg)] * n
        elif column == "rlnCtfAstigmatism":
            if all(t.defocus_u_a is not None and t.defocus_v_a is not None for t in tilts):
                columns[column] = [abs(float(t.defocus_u_a) - float(t.defocus_v_a)) for t in tilts]  # type: ignore[arg-type]
        else:
            values = [getattr(t, attr) for t in tilts]
            if all(v is not None for v in values):
                columns[column] = values
    if aligned:
        shifts = np.asarray(shifts_a, dtype=np.float64)
        if shifts.shape != (n, 2):
            raise ValueError(f"shifts_a must be ({n}, 2), got {shifts.shape}")
        columns["rlnTomoXTilt"] = list(np.broadcast_to(np.asarray(x_tilt_deg, dtype=np.float64), (n,)))
        ytilt = [t.nominal_tilt_deg for t in tilts] if y_tilt_deg is None else list(y_tilt_deg)
        if len(ytilt) != n:
            raise ValueError(f"y_tilt_deg must have {n} values, got {len(ytilt)}")
        columns["rlnTomoYTilt"] = [float(v) for v in ytilt]
        columns["rlnTomoZRot"] = list(np.broadcast_to(np.asarray(tilt_axis_deg, dtype=np.float64), (n,)))
        columns["rlnTomoXShiftAngst"] = list(shifts[:, 0])
        columns["rlnTomoYShiftAngst"] = list(shifts[:, 1])
    table = pd.DataFrame(columns)
    if "rlnTomoTiltMovieFrameCount" in table:
        table["rlnTomoTiltMovieFrameCount"] = table["rlnTomoTiltMovieFrameCount"].astype(int)
    keep = [i for i in range(n) if i not in set(exclude)]
    if not keep:
        raise ValueError("every tilt is excluded: nothing to write")
    table = table.iloc[keep]
    if aligned:
        bad = ~np.isfinite(table[["rlnTomoXShiftAngst", "rlnTomoYShiftAngst", "rlnTomoZRot", "rlnTomoYTilt"]].to_numpy())
        if bad.any():
            raise ValueError("alignment values are NaN for tilts that are not excluded; exclude them or align them")
    return table.sort_values("rlnTomoNominalStageTiltAngle", kind="stable").reset_index(drop=True)


def tomograms_table(entries: Sequence[TomogramEntry]) -> pd.DataFrame:
    """``data_global`` of ``tomograms.star`` (pure). Reconstruction columns only when every
    entry has them."""
    if not entries:
        raise ValueError("tomograms.star needs at least one tilt series")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"tilt series names must be unique, got {names}")
    for e in entries:
        if not e.name or any(c.isspace() for c in e.name):
            raise ValueError(f"tilt series name {e.name!r}: RELION needs a name without spaces")
        if e.hand not in (-1.0, 1.0):
            raise ValueError(f"{e.name}: rlnTomoHand must be -1 or 1, got {e.hand}")
    table = pd.DataFrame(
        {
            "rlnTomoName": names,
            "rlnTomoTiltSeriesStarFile": [e.tilt_series_star for e in entries],
            "rlnVoltage": [float(e.voltage_kv) for e in entries],
            "rlnSphericalAberration": [float(e.cs_mm) for e in entries],
            "rlnAmplitudeContrast": [float(e.amplitude_contrast) for e in entries],
            "rlnMicrographOriginalPixelSize": [float(e.original_pixel_size_a) for e in entries],
            "rlnTomoHand": [float(e.hand) for e in entries],
            "rlnOpticsGroupName": [e.optics_group_name for e in entries],
            "rlnTomoTiltSeriesPixelSize": [float(e.tilt_series_pixel_size_a) for e in entries],
        }
    )
    if all(e.etomo_directive_file for e in entries):
        table["rlnEtomoDirectiveFile"] = [e.etomo_directive_file for e in entries]
    if all(e.size_xyz_px and e.tomogram_binning and e.reconstructed_tomogram for e in entries):
        table["rlnTomoTomogramBinning"] = [float(e.tomogram_binning) for e in entries]  # type: ignore[arg-type]
        for axis, label in enumerate("XYZ"):
            table[f"rlnTomoSize{label}"] = [int(e.size_xyz_px[axis]) for e in entries]  # type: ignore[index]
        table["rlnTomoReconstructedTomogram"] = [e.reconstructed_tomogram for e in entries]
    return table


def write_tilt_series_star(path: str | os.PathLike[str], name: str, table: pd.DataFrame) -> Path:
    """Write ``data_<name>`` (from :func:`tilt_series_table`) to ``path`` atomically."""
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"tilt series name {name!r}: RELION needs a name without spaces")
    write_star_atomic(path, {name: table})
    return Path(path)


def write_tomograms_star(path: str | os.PathLike[str], entries: Sequence[TomogramEntry]) -> Path:
    """Write ``tomograms.star`` (``data_global``) atomically."""
    write_star_atomic(path, {"global": tomograms_table(entries)})
    return Path(path)


def tomogram_binning(tomogram_pixel_size_a: float, tilt_series_pixel_size_a: float) -> float:
    """rlnTomoTomogramBinning: the tomogram's pixel size over the tilt series'."""
    ratio = tomogram_pixel_size_a / tilt_series_pixel_size_a
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError("pixel sizes must be positive")
    return ratio
