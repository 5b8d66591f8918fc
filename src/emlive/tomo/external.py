"""What an external tilt-series engine (AreTomo2/3, IMOD) returns, in emlive's conventions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

__all__ = ["ExternalAlignment", "check_views"]


@dataclass(frozen=True)
class ExternalAlignment:
    """An external program's alignment of a tilt series; per-view arrays in the stack's order.

    Conventions of :mod:`emlive.tomo.geometry`: ``shifts_px`` (n, 2) the content displacement
    (x, y) of each view in pixels of the stack given to the program (NaN for views the program
    dropped), ``tilt_axis_deg`` (n,) the axis angle from +y, counter-clockwise, ``tilt_angles_deg``
    (n,) the refined tilt angles (NaN where dropped). ``dropped`` the views (stack indices) the
    program left out, each with its reason; ``residual_px`` the alignment's mean residual (IMOD;
    None where the program reports none); ``tomogram_path`` the reconstruction when one was
    asked for; ``files`` every output kept (the program's own alignment files).
    """

    shifts_px: np.ndarray
    tilt_axis_deg: np.ndarray
    tilt_angles_deg: np.ndarray
    dropped: tuple[tuple[int, str], ...] = ()
    residual_px: float | None = None
    tomogram_path: Path | None = None
    files: tuple[Path, ...] = ()


def check_views(stack: Path, n_angles: int) -> None:
    """Refuse a stack whose number of views differs from the tilt angles given, before a run."""
    try:
        with mrcfile.open(stack, header_only=True, permissive=True) as mrc:
            n_views = int(mrc.header.nz)
    except (OSError, ValueError) as err:
        raise ValueError(f"{stack}: cannot read the tilt series' MRC header ({err})") from err
    if n_views != n_angles:
        raise ValueError(f"{stack}: the stack has {n_views} views but {n_angles} tilt angles were given")
