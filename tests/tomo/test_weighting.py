"""Dose weighting by pre-exposure and Fourier binning against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from emlive.tomo.weighting import bin_to, dose_weight


def _cosine(shape: tuple[int, int], cycles_x: int, cycles_y: int) -> np.ndarray:
    y, x = np.indices(shape)
    return np.cos(2 * np.pi * (cycles_x * x / shape[1] + cycles_y * y / shape[0]))


@pytest.mark.parametrize("voltage_kv, critical_scale", [(300.0, 1.0), (200.0, 0.8)])
def test_each_tilt_is_attenuated_by_its_pre_exposure(voltage_kv, critical_scale):
    """A cosine at k keeps exp(-N / 2 Ne(k)) of its amplitude, Ne(k) = 0.245 k^-1.665 + 2.81 (G&G 2015)."""
    shape, pixel_size_a = (64, 128), 2.0
    image = 100.0 + _cosine(shape, 16, 0)  # k = 16 / (128 × 2 Å) = 1/16 Å⁻¹
    stack = np.stack([image, image, image]).astype(np.float32)
    pre = np.array([0.0, 20.0, 60.0])
    weighted = dose_weight(stack, pre, pixel_size_a=pixel_size_a, voltage_kv=voltage_kv)
    k = 16 / (128 * pixel_size_a)
    critical = critical_scale * (0.245 * k**-1.665 + 2.81)
    amplitude = np.abs(scipy.fft.rfft2(weighted)[:, 0, 16]) / (0.5 * image.size)
    np.testing.assert_allclose(amplitude, np.exp(-pre / (2 * critical)), rtol=1e-4)
    np.testing.assert_allclose(weighted.mean(axis=(1, 2)), 100.0, rtol=1e-5)  # the mean is kept


def test_dose_weight_rejects_an_incomplete_order():
    with pytest.raises(ValueError, match="acquisition order"):
        dose_weight(np.zeros((2, 8, 8)), np.array([0.0, np.nan]), pixel_size_a=1.0, voltage_kv=300)


def test_binning_keeps_the_mean_and_the_low_frequencies():
    shape = (400, 512)
    image = 50.0 + 3.0 * _cosine(shape, 5, 3)
    binned, pixel_size_a = bin_to(np.stack([image, 2 * image]), pixel_size_a=2.5, target_pixel_size_a=10.0)
    assert binned.shape == (2, 100, 128) and binned.dtype == np.float32
    assert pixel_size_a == pytest.approx(10.0)
    np.testing.assert_allclose(binned[0], 50.0 + 3.0 * _cosine((100, 128), 5, 3), atol=1e-3)
    np.testing.assert_allclose(binned[1], 2 * binned[0], rtol=1e-5)


def test_binning_to_an_uneven_factor_reports_the_exact_pixel_size_and_removes_high_frequencies():
    image = _cosine((4096, 4096), 1800, 0) + 7.0  # near Nyquist at 1.0 Å: gone at ~10 Å
    binned, pixel_size_a = bin_to(image.astype(np.float32), pixel_size_a=1.0, target_pixel_size_a=10.2)
    assert binned.shape == (402, 402)
    assert pixel_size_a == pytest.approx(4096 / 402)
    np.testing.assert_allclose(binned, 7.0, atol=1e-3)


def test_no_binning_below_the_pixel_size():
    image = np.arange(16, dtype=np.float64).reshape(4, 4)
    same, pixel_size_a = bin_to(image, pixel_size_a=12.0, target_pixel_size_a=10.0)
    assert pixel_size_a == 12.0 and same.dtype == np.float32
    np.testing.assert_array_equal(same, image)
