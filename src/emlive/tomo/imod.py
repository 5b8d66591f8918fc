"""IMOD's tilt-series files: the ``.st`` stack, ``.rawtlt`` / ``.tlt`` angles and ``.xf`` transforms.

All in one order, the stack's: sorted by tilt angle, as IMOD expects (view 1 = most negative).

- ``.st``: an MRC image stack (ispg 0), one view per section, float32, the pixel size (Å) in the
  header.
- ``.rawtlt``: the nominal tilt angles (°), one per line, as ``extracttilts`` writes them;
  ``.tlt``: the refined ones (what ``tiltalign`` writes), same layout.
- ``.xf``: one line per view, ``A11 A12 A21 A22 DX DY`` (four ``%12.7f``, two ``%12.3f``, as
  IMOD's ``xfwrite``), the linear transform taking a raw view to the aligned one:
  ``X' = A11 X + A12 Y + DX``, ``Y' = A21 X + A22 Y + DY`` with ``X``, ``Y`` measured from the
  view's centre (0-based pixel ``(n − 1) / 2``) and ``DX``, ``DY`` in pixels of the stack the
  file goes with. The aligned view has the tilt axis along +y.

From emlive's geometry (:mod:`emlive.tomo.geometry`: a specimen point at ``R(α) q + s`` in the
raw view, ``q`` its position in the axis frame, ``s`` the tilt's shift) the aligned position is
``q = R(−α) X − R(−α) s``: ``A = R(−α)``, ``D = −A s``. So ``A11 = cos α``, ``A21 = −sin α``
(a tilt axis of 85° gives ``0.087 0.996 −0.996 0.087``, as etomo writes for such data), and
the shift is ``s = −A⁻¹ D`` — the "specimen shift" RELION 5's IMOD import takes into
rlnTomoX/YShiftAngst.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import mrcfile
import numpy as np

from emlive.io.atomic import atomic_path, atomic_write_text

__all__ = [
    "alignment_from_xf",
    "parse_tlt",
    "parse_xf",
    "tlt_text",
    "write_rawtlt",
    "write_stack",
    "write_tlt",
    "write_xf",
    "xf_from_alignment",
    "xf_text",
]


def write_stack(path: str | os.PathLike[str], stack: np.ndarray, *, pixel_size_a: float) -> Path:
    """Write a tilt series (n, ny, nx) as an MRC image stack, atomically (float32)."""
    data = np.asarray(stack)
    if data.ndim != 3 or 0 in data.shape:
        raise ValueError(f"{path}: a tilt series is (n, ny, nx), got shape {data.shape}")
    if not pixel_size_a > 0:
        raise ValueError(f"{path}: pixel_size_a must be > 0 Å, got {pixel_size_a!r}")
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = float(pixel_size_a)
        mrc.update_header_stats()
    return Path(path)


def tlt_text(tilt_angles_deg: Sequence[float] | np.ndarray) -> str:
    """One angle per line, ``%7.2f`` as IMOD writes ``.tlt`` files."""
    angles = np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1)
    if angles.size == 0 or not np.all(np.isfinite(angles)):
        raise ValueError("tilt angles must be finite numbers, at least one")
    return "".join(f"{a:7.2f}\n" for a in angles)


def write_rawtlt(path: str | os.PathLike[str], tilt_angles_deg: Sequence[float] | np.ndarray) -> Path:
    """The nominal tilt angles, in the stack's order, atomically."""
    atomic_write_text(path, tlt_text(tilt_angles_deg))
    return Path(path)


def write_tlt(path: str | os.PathLike[str], tilt_angles_deg: Sequence[float] | np.ndarray) -> Path:
    """The refined tilt angles, in the stack's order, atomically."""
    atomic_write_text(path, tlt_text(tilt_angles_deg))
    return Path(path)


def parse_tlt(text: str) -> np.ndarray:
    """A ``.tlt``/``.rawtlt`` file's angles (°). Blank lines are skipped; ValueError otherwise."""
    values: list[float] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 1:
                raise ValueError
            value = float(fields[0])
        except ValueError:
            raise ValueError(f"line {number}: {line[:60]!r} is not one tilt angle") from None
        if not np.isfinite(value) or abs(value) > 180:
            raise ValueError(f"line {number}: {line[:60]!r} is not a tilt angle in degrees")
        values.append(value)
    if not values:
        raise ValueError("no tilt angles")
    return np.array(values)


def xf_from_alignment(tilt_axis_deg: float | Sequence[float] | np.ndarray, shifts_px: np.ndarray) -> np.ndarray:
    """IMOD transforms (n, 2, 3) ``[[A11, A12, DX], [A21, A22, DY]]`` from emlive's alignment:
    the tilt axis angle (one, or one per view) and the shifts (n, 2) in the stack's pixels."""
    s = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    n = s.shape[0]
    alpha = np.deg2rad(np.broadcast_to(np.asarray(tilt_axis_deg, dtype=np.float64), (n,)))
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(alpha))):
        raise ValueError("xf transforms need finite shifts and angles; give excluded views a shift (0, 0)")
    c, sn = np.cos(alpha), np.sin(alpha)
    a = np.empty((n, 2, 2))
    a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = c, sn, -sn, c  # R(−α)
    d = -np.einsum("nij,nj->ni", a, s)
    return np.concatenate([a, d[:, :, None]], axis=2)


def alignment_from_xf(xf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`xf_from_alignment`: per view, the tilt axis angle (°, from the
    rotation part: ``atan2(−A21, A11)``) and the shift ``s = −A⁻¹ D`` (n, 2) in the stack's
    pixels. A transform with magnification or stretch gives its rotation's angle."""
    m = np.asarray(xf, dtype=np.float64).reshape(-1, 2, 3)
    a, d = m[:, :, :2], m[:, :, 2]
    angles = np.rad2deg(np.arctan2(-a[:, 1, 0], a[:, 0, 0]))
    shifts = -np.einsum("nij,nj->ni", np.linalg.pinv(a), d)
    return angles, shifts


def xf_text(xf: np.ndarray) -> str:
    """``A11 A12 A21 A22 DX DY`` lines in IMOD's widths (``%12.7f`` ×4, ``%12.3f`` ×2)."""
    m = np.asarray(xf, dtype=np.float64).reshape(-1, 2, 3)
    if m.shape[0] == 0 or not np.all(np.isfinite(m)):
        raise ValueError("xf transforms must be finite, at least one")
    return "".join(
        f"{t[0, 0]:12.7f}{t[0, 1]:12.7f}{t[1, 0]:12.7f}{t[1, 1]:12.7f}{t[0, 2]:12.3f}{t[1, 2]:12.3f}\n" for t in m
    )


def write_xf(path: str | os.PathLike[str], xf: np.ndarray) -> Path:
    """Write transforms (n, 2, 3) from :func:`xf_from_alignment` atomically."""
    atomic_write_text(path, xf_text(xf))
    return Path(path)


def parse_xf(text: str) -> np.ndarray:
    """An ``.xf`` file's transforms (n, 2, 3). Numbers may touch (fixed-width Fortran output
    such as ``-1234.567-2345.678``); ValueError names the line otherwise."""
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 6 and len(line.rstrip()) == 72:  # six fixed-width fields run together
            widths = (12, 12, 12, 12, 12, 12)
            starts = np.cumsum((0, *widths[:-1]))
            fields = [line[s : s + w] for s, w in zip(starts, widths, strict=True)]
        try:
            if len(fields) != 6:
                raise ValueError
            values = [float(f) for f in fields]
        except ValueError:
            raise ValueError(f"line {number}: {line[:80]!r} is not 'A11 A12 A21 A22 DX DY'") from None
        if not all(np.isfinite(values)):
            raise ValueError(f"line {number}: {line[:80]!r} has a value that is not finite")
        rows.append(values)
    if not rows:
        raise ValueError("no transforms")
    arr = np.array(rows)
    return np.stack([arr[:, [0, 1, 4]], arr[:, [2, 3, 5]]], axis=1)
