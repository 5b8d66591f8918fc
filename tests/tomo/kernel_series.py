"""One synthetic tilt series and its alignment, made once per test session for the kernel tests."""

from __future__ import annotations

from functools import cache

import numpy as np

from emlive.synth.tomo import TiltSeriesTruth, tilt_series
from emlive.tomo.align import TiltAlignment, align_tilt_series

SHAPE_ZYX = (64, 256, 256)
NOMINAL_AXIS_ERROR_DEG = 3.0
BEAD_DIAMETER_PX = 10.0  # the phantom's 10 nm gold at 10 Å/px


@cache
def series(seed: int = 7) -> tuple[np.ndarray, TiltSeriesTruth]:
    """41 tilts (−60…60° in 3° steps) of a 64×256×256 slab at 10 Å, axis 85°, two dark tilts."""
    return tilt_series(seed, shape_zyx=SHAPE_ZYX, pixel_size_a=10.0, tilt_axis_deg=85.0)


@cache
def alignment(seed: int = 7) -> TiltAlignment:
    """The series aligned on its gold beads from a nominal axis angle 3° off, dark tilts excluded."""
    stack, truth = series(seed)
    return align_tilt_series(
        stack,
        truth.tilt_angles_deg,
        tilt_axis_deg=truth.tilt_axis_deg + NOMINAL_AXIS_ERROR_DEG,
        exclude=truth.dark,
        bead_diameter_px=BEAD_DIAMETER_PX,
    )


def imaged_phantom(truth: TiltSeriesTruth, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """The phantom's central ``shape_zyx`` box: what a reconstruction of that size shows."""
    starts = [(big - small) // 2 for big, small in zip(truth.volume.shape, shape_zyx, strict=True)]
    return truth.volume[tuple(slice(s, s + n) for s, n in zip(starts, shape_zyx, strict=True))]


def translation_gauge_removed(shifts_px: np.ndarray, truth: TiltSeriesTruth, keep: np.ndarray) -> np.ndarray:
    """Shift errors after removing the best-fitting translation of the whole specimen.

    Moving the specimen by (X, Y, Z) moves tilt i's content by R(α) (X cos θ + Z sin θ, Y):
    no projection can tell it from the specimen itself, so alignments are equal up to it.
    """
    error = shifts_px[keep] - truth.shifts_px[keep]
    theta = np.deg2rad(truth.tilt_angles_deg[keep])
    a = np.deg2rad(truth.tilt_axis_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    design = np.zeros((keep.size, 2, 3))
    design[:, :, 0] = rot[:, 0][None] * np.cos(theta)[:, None]
    design[:, :, 1] = rot[:, 1][None]
    design[:, :, 2] = rot[:, 0][None] * np.sin(theta)[:, None]
    gauge, *_ = np.linalg.lstsq(design.reshape(-1, 3), error.ravel(), rcond=None)
    return error - (design.reshape(-1, 3) @ gauge).reshape(-1, 2)
