"""Synthetic local motion: the field is what it claims, and the frames follow it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from emlive.synth import LocalMotion, local_motion, shifted_images, warped_images


@pytest.mark.parametrize("seed", range(3))
def test_field_is_zero_at_frame_zero_and_reaches_the_amplitude(seed):
    field = local_motion(np.random.default_rng(seed), shape=(300, 400), n_frames=30, amplitude_px=2.5)
    gy, gx = np.meshgrid(np.linspace(0, 299, 33), np.linspace(0, 399, 33), indexing="ij")
    assert np.all(field.displacement(gx, gy, 0) == 0.0)
    last = np.hypot(*np.moveaxis(field.displacement(gx, gy, 29), -1, 0))
    assert last.max() == pytest.approx(2.5, rel=1e-9)
    # fast at first: more than half of the final displacement is reached in the first third
    assert field.time_course(10) > 0.5 and field.time_course(29) == pytest.approx(1.0)
    # smooth: at most half a period across the image
    assert all(np.hypot(m.fx_cycles, m.fy_cycles) <= 0.5 for m in field.modes)
    # round trip through JSON (the truth of a session)
    assert LocalMotion.model_validate_json(field.model_dump_json()) == field


def test_warped_frames_follow_drift_plus_field():
    """A smooth image warped along a pure translation equals the Fourier-shifted one, and the
    local field moves content by D(r, t) where it is (checked on a plane wave)."""
    rng = np.random.default_rng(4)
    image = scipy.ndimage.gaussian_filter(rng.standard_normal((128, 160)), 3.0, mode="wrap").astype(np.float32)
    drift = np.array([[0.0, 0.0], [1.3, -2.6], [4.2, 0.7]])
    still = LocalMotion(shape=(128, 160), n_frames=3, time_constant_frames=1.0, modes=[])
    warped = warped_images(image, drift, still)
    np.testing.assert_allclose(warped, shifted_images(image, drift), atol=2e-3 * float(np.abs(image).max()))

    field = local_motion(np.random.default_rng(1), shape=(128, 160), n_frames=3, amplitude_px=1.5)
    y, x = np.mgrid[:128, :160].astype(np.float64)
    wave = np.cos(2 * np.pi * (x / 40.0)).astype(np.float32)  # varies along x only
    out = warped_images(wave, np.zeros((3, 2)), field)
    d = field.displacement(x, y, 2)
    np.testing.assert_allclose(out[2], np.cos(2 * np.pi * (x - d[..., 0]) / 40.0), atol=2e-3)


def test_field_shape_must_match_the_image():
    field = LocalMotion(shape=(10, 10), n_frames=2, time_constant_frames=1.0, modes=[])
    with pytest.raises(ValueError, match="defined on"):
        warped_images(np.zeros((12, 10), np.float32), np.zeros((2, 2)), field)
