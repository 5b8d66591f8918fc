"""Alignment of a synthetic tilt series against the shifts and axis angle it was made with."""

from __future__ import annotations

import numpy as np
import pytest

from emlive.tomo.align import align_tilt_series, fit_projection_model
from emlive.synth.tomo import tilt_series
from tests.tomo.kernel_series import BEAD_DIAMETER_PX, NOMINAL_AXIS_ERROR_DEG, alignment, series, translation_gauge_removed


def _rms(vectors: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(vectors**2, axis=-1))))


def test_axis_angle_is_recovered_within_half_a_degree_from_a_nominal_3_degrees_off():
    _, truth = series()
    result = alignment()
    assert result.method == "beads" and result.n_points >= 8
    assert abs(result.tilt_axis_deg - truth.tilt_axis_deg) < 0.5


def test_shifts_are_within_1_px_rms_of_the_truth():
    """Within 1 px RMS as returned, and well within it up to the unobservable specimen translation."""
    _, truth = series()
    result = alignment()
    keep = np.array([i for i in range(truth.tilt_angles_deg.size) if i not in truth.dark])
    raw = _rms(result.shifts_px[keep] - truth.shifts_px[keep])
    assert raw < 1.0
    assert _rms(translation_gauge_removed(result.shifts_px, truth, keep)) < 0.5
    # the tilt nearest 0° is the reference
    assert np.all(result.shifts_px[np.argmin(np.abs(truth.tilt_angles_deg))] == 0.0)


def test_excluded_tilts_get_nan_and_the_residual_is_reported_per_tilt():
    _, truth = series()
    result = alignment()
    for i in truth.dark:
        assert np.all(np.isnan(result.shifts_px[i]))
        assert np.isnan(result.residual_per_tilt_px[i])
    kept = np.delete(result.residual_per_tilt_px, truth.dark)
    assert np.all(np.isfinite(kept)) and np.all(kept < 3.0)
    assert 0.0 < result.residual_px < 1.0  # beads are points: sub-pixel


def test_a_fixed_axis_is_kept_and_a_wrong_one_shows_in_the_residual():
    stack, truth = series()
    kw = dict(exclude=truth.dark, refine_axis=False, passes=1, bead_diameter_px=BEAD_DIAMETER_PX)
    right = align_tilt_series(stack, truth.tilt_angles_deg, tilt_axis_deg=truth.tilt_axis_deg, **kw)
    wrong = align_tilt_series(stack, truth.tilt_angles_deg, tilt_axis_deg=truth.tilt_axis_deg + 4.0, **kw)
    assert right.tilt_axis_deg == truth.tilt_axis_deg and wrong.tilt_axis_deg == truth.tilt_axis_deg + 4.0
    assert wrong.residual_px > 1.3 * right.residual_px


def test_the_projection_model_recovers_points_axis_and_shifts_exactly():
    """Noise-free positions of known 3D points: the model fit is exact at the true angle."""
    rng = np.random.default_rng(3)
    angles = np.arange(-60.0, 61.0, 3.0)
    points = rng.uniform(-80, 80, (20, 3))
    points[:, 2] -= points[:, 2].mean()
    shifts = rng.normal(0, 5, (angles.size, 2))
    zero = int(np.argmin(np.abs(angles)))
    shifts[zero] = 0.0
    alpha = np.deg2rad(-95.0)
    rot = np.array([[np.cos(alpha), -np.sin(alpha)], [np.sin(alpha), np.cos(alpha)]])
    theta = np.deg2rad(angles)[:, None]
    axis_frame = np.stack(
        [points[None, :, 0] * np.cos(theta) + points[None, :, 2] * np.sin(theta), np.broadcast_to(points[None, :, 1], (angles.size, 20))],
        axis=2,
    )
    positions = axis_frame @ rot.T + shifts[:, None, :]
    positions[5, :3] = np.nan  # some not seen
    fitted_shifts, fitted_points, residuals = fit_projection_model(positions, angles, tilt_axis_deg=-95.0, reference=zero)
    np.testing.assert_allclose(fitted_shifts, shifts, atol=1e-6)
    np.testing.assert_allclose(fitted_points, points, atol=1e-6)
    assert np.nanmax(np.abs(residuals)) < 1e-6
    # fitted to the tracked steps from the 0° tilt outwards instead: the same answer
    pairs = [(i, i - 1) for i in range(zero + 1, angles.size)] + [(i, i + 1) for i in range(zero - 1, -1, -1)]
    step_shifts, step_points, step_residuals = fit_projection_model(
        positions, angles, tilt_axis_deg=-95.0, reference=zero, pairs=pairs
    )
    assert np.nanmax(np.abs(step_residuals)) < 1e-6
    seen = np.isfinite(step_shifts[:, 0])
    np.testing.assert_allclose(step_shifts[seen], shifts[seen], atol=1e-6)
    np.testing.assert_allclose(step_points[3:], points[3:], atol=1e-6)
    _, _, off = fit_projection_model(positions, angles, tilt_axis_deg=-94.0, reference=zero)
    assert np.sqrt(np.nanmean(off**2)) > 0.1


def test_too_few_tilts_is_a_clear_error():
    stack = np.zeros((3, 32, 32), dtype=np.float32)
    with pytest.raises(ValueError, match="at least 3"):
        align_tilt_series(stack, np.array([-3.0, 0.0, 3.0]), tilt_axis_deg=0.0, exclude=(0,))


@pytest.mark.slow
@pytest.mark.parametrize("axis_deg, seed", [(0.0, 21), (-95.0, 22)])
def test_other_axis_angles_and_another_specimen(axis_deg, seed):
    """Other specimens at other axis angles, from a nominal angle 2° off, the ±60° tilts dark."""
    stack, truth = tilt_series(seed, shape_zyx=(64, 256, 256), tilt_axis_deg=axis_deg, dark=(0, 40))
    result = align_tilt_series(
        stack, truth.tilt_angles_deg, tilt_axis_deg=axis_deg + 2.0, exclude=truth.dark, bead_diameter_px=BEAD_DIAMETER_PX
    )
    keep = np.arange(1, 40)
    assert abs(result.tilt_axis_deg - axis_deg) < 0.5
    # up to the specimen's translation (its height is set from a quick tomogram, to ~2-3 px)
    assert _rms(translation_gauge_removed(result.shifts_px, truth, keep)) < 0.6


def test_without_beads_patch_tracking_gets_close():
    """Patches follow content at many heights, so less exactly than beads: within 1° and 1.5 px."""
    stack, truth = series()
    result = align_tilt_series(
        stack, truth.tilt_angles_deg, tilt_axis_deg=truth.tilt_axis_deg + NOMINAL_AXIS_ERROR_DEG, exclude=truth.dark
    )
    keep = np.array([i for i in range(truth.tilt_angles_deg.size) if i not in truth.dark])
    assert result.method == "patches" and result.n_points >= 10
    assert abs(result.tilt_axis_deg - truth.tilt_axis_deg) < 1.0
    assert _rms(translation_gauge_removed(result.shifts_px, truth, keep)) < 1.5


def test_without_gold_bead_tracking_falls_back_to_patches():
    """A specimen with no beads (a lamella, say): asked for beads, the alignment tracks patches."""
    from emlive.synth.tomo import phantom, project

    angles = np.arange(-45.0, 46.0, 5.0)
    volume = phantom((32, 240, 360), pixel_size_a=10.0, seed=4, gold_per_um2=0.0)
    rng = np.random.default_rng(5)
    shifts = rng.normal(0, 4, (angles.size, 2))
    shifts[np.argmin(np.abs(angles))] = 0.0
    stack = project(volume, angles, tilt_axis_deg=10.0, shifts_px=shifts, image_shape=(160, 160))
    result = align_tilt_series(stack, angles, tilt_axis_deg=10.0, refine_axis=False, bead_diameter_px=10.0)
    assert result.method == "patches"
    keep = np.arange(angles.size)
    error = result.shifts_px - shifts
    assert np.all(np.isfinite(error)) and keep.size == angles.size
    assert _rms(error - error.mean(axis=0)) < 1.5
