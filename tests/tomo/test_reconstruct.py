"""Weighted back-projection: geometry of a point, and the tomogram against the phantom."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from emlive.synth.tomo import project
from emlive.tomo.reconstruct import back_project, interval_weights
from tests.tomo.kernel_series import alignment, imaged_phantom, series


def _band_limited(volume: np.ndarray, *, low: float = 0.02, high: float = 0.15) -> np.ndarray:
    """The volume with only spatial frequencies between ``low`` and ``high`` cycles/voxel."""
    spectrum = scipy.fft.rfftn(volume)
    kz, ky = (np.fft.fftfreq(n) for n in volume.shape[:2])
    kx = np.fft.rfftfreq(volume.shape[2])
    k = np.sqrt(kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2)
    spectrum *= (k >= low) & (k <= high)
    return scipy.fft.irfftn(spectrum, s=volume.shape)


def _correlation(a: np.ndarray, b: np.ndarray, margin: int = 32) -> float:
    """Pearson correlation inside the volume, away from the lateral edges."""
    a = a[:, margin:-margin, margin:-margin].ravel()
    b = b[:, margin:-margin, margin:-margin].ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_tomogram_correlates_with_the_phantom_at_least_90_percent_as_well_as_with_the_true_alignment():
    stack, truth = series()
    result = alignment()
    nz = truth.volume.shape[0]
    # dense matter lowers the counts in these (defocused) images: the phantom's negative is the target
    target = _band_limited(-imaged_phantom(truth, (nz, *stack.shape[1:])))
    common = dict(thickness_px=nz, exclude=truth.dark)
    with_truth = back_project(
        stack, truth.tilt_angles_deg, tilt_axis_deg=truth.tilt_axis_deg, shifts_px=truth.shifts_px, **common
    )
    aligned = back_project(
        stack, truth.tilt_angles_deg, tilt_axis_deg=result.tilt_axis_deg, shifts_px=result.shifts_px, **common
    )
    reference = _correlation(_band_limited(with_truth), target)
    ours = _correlation(_band_limited(aligned), target)
    assert reference > 0.5  # the reconstruction itself is faithful
    assert ours >= 0.9 * reference
    # and a misalignment would show: 3 px of random shift error
    rng = np.random.default_rng(0)
    jittered = back_project(
        stack,
        truth.tilt_angles_deg,
        tilt_axis_deg=truth.tilt_axis_deg,
        shifts_px=truth.shifts_px + rng.normal(0, 3, truth.shifts_px.shape),
        **common,
    )
    assert _correlation(_band_limited(jittered), target) < 0.9 * reference


@pytest.mark.parametrize("axis_deg", [0.0, 85.0, -95.0])
def test_a_point_is_reconstructed_where_it_was(axis_deg):
    volume = np.zeros((32, 96, 96), dtype=np.float32)
    z, y, x = 20, 40, 60  # off centre in every direction
    volume[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2] = 1.0
    angles = np.arange(-60.0, 61.0, 3.0)
    shifts = np.random.default_rng(1).normal(0, 4, (angles.size, 2))
    stack = project(volume, angles, tilt_axis_deg=axis_deg, shifts_px=shifts)
    tomogram = back_project(stack, angles, tilt_axis_deg=axis_deg, shifts_px=shifts, thickness_px=32)
    assert tomogram.shape == (32, 96, 96) and tomogram.dtype == np.float32
    assert np.unravel_index(np.argmax(tomogram), tomogram.shape) == (z, y, x)


def test_excluded_tilts_are_left_out_and_may_have_nan_shifts():
    volume = np.zeros((16, 48, 48), dtype=np.float32)
    volume[8, 24, 30] = 1.0
    angles = np.arange(-30.0, 31.0, 10.0)
    stack = project(volume, angles, tilt_axis_deg=0.0)
    shifts = np.zeros((angles.size, 2))
    stack[2] = 1e6  # a ruined tilt
    shifts[2] = np.nan
    tomogram = back_project(stack, angles, tilt_axis_deg=0.0, shifts_px=shifts, thickness_px=16, exclude=(2,))
    assert np.unravel_index(np.argmax(tomogram), tomogram.shape) == (8, 24, 30)
    with pytest.raises(ValueError, match="NaN"):
        back_project(stack, angles, tilt_axis_deg=0.0, shifts_px=shifts, thickness_px=16)


def test_interval_weights_cover_the_range_also_with_gaps():
    angles = np.array([3.0, -3.0, 0.0, 9.0])  # 6° missing, any order
    w = np.rad2deg(interval_weights(angles))
    np.testing.assert_allclose(w, [4.5, 3.0, 3.0, 6.0])
