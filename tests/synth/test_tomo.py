"""The synthetic tilt series: acquisition order, projection geometry, counts and truth."""

from __future__ import annotations

import numpy as np
import pytest

from emlive.synth.tomo import dose_symmetric_order, phantom, project, tilt_series


def test_dose_symmetric_order_is_hagens_scheme_from_zero():
    angles = np.arange(-60.0, 61.0, 3.0)
    order = dose_symmetric_order(angles, group_size=2)
    acquired = angles[np.argsort(order)]
    np.testing.assert_array_equal(acquired[:9], [0, 3, 6, -3, -6, 9, 12, -9, -12])
    np.testing.assert_array_equal(acquired[-4:], [57, 60, -57, -60])
    assert sorted(order) == list(range(41))


def test_dose_symmetric_order_with_uneven_sides_and_any_input_order():
    angles = np.array([9.0, -3.0, 0.0, 3.0, 6.0, 12.0])
    acquired = angles[np.argsort(dose_symmetric_order(angles, group_size=1))]
    np.testing.assert_array_equal(acquired, [0, 3, -3, 6, 9, 12])


@pytest.mark.parametrize("axis_deg", [0.0, 85.0, -95.0])
def test_a_point_projects_where_the_geometry_says(axis_deg):
    """Point (x, y, z) appears at R(α) (x cos θ + z sin θ, y) + s from the image centre."""
    z, y, x = 16, 20, 40
    gz, gy, gx = np.indices((24, 64, 64))
    volume = np.exp(-((gz - z) ** 2 + (gy - y) ** 2 + (gx - x) ** 2) / (2 * 1.5**2)).astype(np.float32)
    volume /= volume.sum()
    centre = np.array([(64 - 1) / 2.0, (64 - 1) / 2.0, (24 - 1) / 2.0])  # x, y, z
    px, py, pz = np.array([x, y, z]) - centre
    angles = np.array([-45.0, 0.0, 30.0])
    shifts = np.array([[1.5, -2.0], [0.0, 0.0], [-3.0, 2.5]])
    images = project(volume, angles, tilt_axis_deg=axis_deg, shifts_px=shifts, image_shape=(80, 72))
    a = np.deg2rad(axis_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    for image, theta, shift in zip(images, np.deg2rad(angles), shifts, strict=True):
        expected = rot @ [px * np.cos(theta) + pz * np.sin(theta), py] + shift + [(72 - 1) / 2.0, (80 - 1) / 2.0]
        yy, xx = np.indices(image.shape)
        found = [(image * xx).sum() / image.sum(), (image * yy).sum() / image.sum()]
        np.testing.assert_allclose(found, expected, atol=0.05)
        assert image.sum() == pytest.approx(1.0, rel=0.01)  # the mass, at any tilt


def test_the_phantom_has_membranes_particles_and_gold_centred_in_z():
    volume = phantom((48, 200, 200), pixel_size_a=10.0, seed=2)
    assert volume.dtype == np.float32 and volume.shape == (48, 200, 200)
    assert volume.max() >= 8.0  # gold
    assert np.any((volume > 0.5) & (volume < 1.5))  # protein and membrane
    profile = volume.sum(axis=(1, 2))
    centre = (profile * np.arange(48)).sum() / profile.sum()
    assert abs(centre - 23.5) < 2.0


def test_tilt_series_truth_and_counts():
    stack, truth = tilt_series(3, shape_zyx=(32, 128, 128), pixel_size_a=10.0, dark=(4, 30))
    n = truth.tilt_angles_deg.size
    assert stack.shape == (41, 128, 128) and stack.dtype == np.float32 and n == 41
    assert truth.dark == (4, 30)
    zero = int(np.argmin(np.abs(truth.tilt_angles_deg)))
    assert truth.order[zero] == 0 and np.all(truth.shifts_px[zero] == 0.0)
    np.testing.assert_allclose(truth.pre_exposure_e_per_a2, truth.order * 3.0)
    assert np.all((truth.defocus_a >= 35000) & (truth.defocus_a <= 45000))
    means = stack.mean(axis=(1, 2))
    bright = np.delete(means, truth.dark)
    # counts: dose 3 e/Å² at 10 Å/px, less the ice's inelastic loss (thicker path at high tilt)
    assert 250 < bright.max() < 300 and bright.min() > 0.8 * bright.max()
    assert np.all(means[list(truth.dark)] < 0.1 * np.median(bright))
    np.testing.assert_array_equal(stack, np.round(stack))  # Poisson counts
    again, _ = tilt_series(3, shape_zyx=(32, 128, 128), pixel_size_a=10.0, dark=(4, 30))
    np.testing.assert_array_equal(stack, again)
