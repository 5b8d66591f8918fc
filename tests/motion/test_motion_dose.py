"""Aligned and dose-weighted sums, binning, and drift statistics against known answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from emlive import synth
from emlive.acquisition import Optics
from emlive.motion.align import fourier_crop, rfft2_frames
from emlive.motion.dose import aligned_sums, binned_shape, drift_statistics, sum_shifted_spectra
from emlive.optics import dose_weights

PIXEL_SIZE_A = 1.1


def _specimen(seed: int, shape: tuple[int, int]) -> np.ndarray:
    return synth.specimen_image(
        np.random.default_rng(seed),
        shape,
        optics=Optics(pixel_size_a=PIXEL_SIZE_A),
        defocus_u_a=14000,
        defocus_v_a=13000,
        azimuth_deg=20,
    )


def _grant_grigorieff_weight(k_a: np.ndarray, exposure_e_a2: np.ndarray) -> np.ndarray:
    """exp(-N / 2 Ne(k)) with Ne(k) = 0.245 k^-1.665 + 2.81 (Grant & Grigorieff 2015, 300 kV)."""
    critical = 0.245 * k_a**-1.665 + 2.81
    return np.exp(-exposure_e_a2[:, None] / (2.0 * critical[None, :]))


def _radial_amplitude(spectrum: np.ndarray, shape: tuple[int, int], k_px: np.ndarray) -> np.ndarray:
    """Mean |F| in thin rings at the radii ``k_px`` (cycles/px) of a half-spectrum."""
    k = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :])
    return np.array([np.abs(spectrum[np.abs(k - r) < 0.004]).mean() for r in k_px])


def test_sums_of_a_static_aligned_movie_reproduce_the_image():
    """Frames image(r - d_i) summed with the corrections -d_i give n * image, plain and DW."""
    shape = (192, 256)
    image = _specimen(1, shape)
    truth = synth.trajectory(np.random.default_rng(2), n_frames=12, amplitude_px=9.0)
    frames = synth.shifted_images(image, truth)
    sums = aligned_sums(
        rfft2_frames(frames),
        -truth,
        pixel_size_a=PIXEL_SIZE_A,
        dose_per_frame_e_a2=1.0,
        voltage_kv=300,
    )
    assert sums.micrograph.dtype == np.float32 and sums.micrograph.shape == shape
    assert sums.pixel_size_a == PIXEL_SIZE_A
    # away from Nyquist (where a sub-pixel shift of a sampled image is not exact)
    np.testing.assert_allclose(sums.micrograph, 12 * image, atol=12 * 0.02)
    # the same content in every frame: the weights sum to n at every frequency
    np.testing.assert_allclose(sums.dose_weighted, 12 * image, atol=12 * 0.02)
    np.testing.assert_allclose(sums.dose_weighted.mean(), sums.micrograph.mean(), rtol=1e-5)
    unaligned = frames.sum(axis=0)
    assert np.abs(unaligned - 12 * image).mean() > 5 * np.abs(sums.micrograph - 12 * image).mean()


def test_dose_weighting_follows_grant_grigorieff():
    """Each frame's share of the DW sum is n * w_i(k) / sum_j w_j(k) with the published Ne(k)."""
    n, shape, dose = 20, (256, 256), 1.2
    image = _specimen(3, shape)
    image -= image.mean()
    exposure = dose * np.arange(1, n + 1)
    k_px = np.array([0.02, 0.1, 0.2, 0.3, 0.4])
    expected = _grant_grigorieff_weight(k_px / PIXEL_SIZE_A, exposure)
    expected = n * expected / expected.sum(axis=0)
    for frame in (0, n // 2, n - 1):
        frames_ft = np.zeros((n, shape[0], shape[1] // 2 + 1), dtype=np.complex64)
        frames_ft[frame] = scipy.fft.rfft2(image)  # only this frame carries signal
        sums = aligned_sums(
            frames_ft,
            np.zeros((n, 2)),
            pixel_size_a=PIXEL_SIZE_A,
            dose_per_frame_e_a2=dose,
            voltage_kv=300,
            # exp(-pre / 2Ne) is common to all frames and cancels in the normalised weights
            pre_exposure_e_a2=2.0,
        )
        plain = _radial_amplitude(scipy.fft.rfft2(sums.micrograph), shape, k_px)
        weighted = _radial_amplitude(scipy.fft.rfft2(sums.dose_weighted), shape, k_px)
        np.testing.assert_allclose(weighted / plain, expected[frame], rtol=0.02)
    # low frequencies keep (nearly) every frame; the last frame loses its high frequencies
    assert expected[-1, 0] > 0.95 and expected[-1, -1] < 0.2 and expected[0, -1] > 2.0


def test_binning_fourier_crops_and_keeps_the_pixel_scale():
    shape = (256, 192)
    smooth = _specimen(4, shape)
    spectrum = scipy.fft.rfft2(smooth)
    spectrum[np.hypot(np.fft.fftfreq(256)[:, None], np.fft.rfftfreq(192)[None, :]) > 0.2] = 0
    smooth = scipy.fft.irfft2(spectrum, s=shape).astype(np.float32)
    frames = np.stack([smooth] * 4)
    sums = aligned_sums(
        rfft2_frames(frames),
        np.zeros((4, 2)),
        pixel_size_a=PIXEL_SIZE_A,
        dose_per_frame_e_a2=1.0,
        voltage_kv=200,
        bin_factor=2.0,
    )
    assert sums.micrograph.shape == sums.dose_weighted.shape == (128, 96)
    assert sums.pixel_size_a == pytest.approx(2 * PIXEL_SIZE_A)
    # a band-limited image binned by Fourier cropping is the image sampled every other pixel
    np.testing.assert_allclose(sums.micrograph, 4 * smooth[::2, ::2], atol=1e-3)
    assert sums.dose_weighted.mean() == pytest.approx(sums.micrograph.mean(), rel=1e-5)


def test_binned_shape_is_even():
    assert binned_shape((4096, 4096), 1.0) == (4096, 4096)
    assert binned_shape((4096, 4096), 2.0) == (2048, 2048)
    assert binned_shape((3838, 3710), 1.5) == (2558, 2474)
    with pytest.raises(ValueError, match="bin_factor"):
        binned_shape((64, 64), 0.5)


def test_sum_shifted_spectra_checks_its_inputs():
    frames_ft = np.zeros((3, 64, 33), dtype=np.complex64)
    with pytest.raises(ValueError, match="decay must be"):
        sum_shifted_spectra(
            frames_ft, np.zeros((3, 2)), full_shape=(64, 64), decay=np.ones((32, 17))
        )
    with pytest.raises(ValueError, match="shifts_px must be"):
        sum_shifted_spectra(frames_ft, np.zeros((2, 2)), full_shape=(64, 64))


@pytest.mark.parametrize(("voltage_kv", "bin_factor"), [(300.0, 1.0), (200.0, 1.0), (300.0, 1.6)])
def test_dose_weighted_sum_equals_the_sum_weighted_by_optics_dose_weights(voltage_kv, bin_factor):
    """The Horner accumulation is Σ_i w_i F_i with w = optics.dose_weights, shifts included."""
    rng = np.random.default_rng(11)
    n, shape = 9, (96, 128)
    frames = rng.poisson(2.0, size=(n, *shape)).astype(np.float32)
    shifts = rng.uniform(-6, 6, size=(n, 2))
    sums = aligned_sums(
        rfft2_frames(frames),
        shifts,
        pixel_size_a=PIXEL_SIZE_A,
        dose_per_frame_e_a2=1.7,
        voltage_kv=voltage_kv,
        pre_exposure_e_a2=2.5,
        bin_factor=bin_factor,
    )
    out_shape = binned_shape(shape, bin_factor)
    weights = dose_weights(
        n,
        out_shape,
        pixel_size_a=sums.pixel_size_a,
        dose_per_frame_e_a2=1.7,
        voltage_kv=voltage_kv,
        pre_exposure_e_a2=2.5,
    )
    # independent route: shift each frame, crop, weight, sum, transform back
    ky = np.fft.fftfreq(out_shape[0], d=1.0 / out_shape[0])[:, None] / shape[0]
    kx = np.arange(out_shape[1] // 2 + 1)[None, :] / shape[1]
    expected_ft = np.zeros((out_shape[0], out_shape[1] // 2 + 1), dtype=np.complex128)
    for i in range(n):
        spectrum = fourier_crop(scipy.fft.rfft2(frames[i].astype(np.float64)), out_shape)
        ramp = np.exp(-2j * np.pi * (kx * shifts[i, 0] + ky * shifts[i, 1]))
        expected_ft += weights[i] * spectrum * ramp
    area_ratio = out_shape[0] * out_shape[1] / (shape[0] * shape[1])
    expected = scipy.fft.irfft2(expected_ft, s=out_shape) * area_ratio
    np.testing.assert_allclose(sums.dose_weighted, expected, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize(
    ("pre_exposure_e_a2", "dose", "n_early_steps"),
    [(0.0, 1.0, 3), (1.0, 1.0, 2), (0.0, 0.8, 4), (0.0, 5.0, 0)],
)
def test_drift_statistics_of_a_straight_line(pre_exposure_e_a2, dose, n_early_steps):
    """0.5 px per frame along a line: path lengths split where the exposure passes 4 e/Å²."""
    n, pixel_size_a = 20, 1.3
    shifts = np.outer(np.arange(n), [0.3, -0.4])  # 0.5 px per frame
    stats = drift_statistics(
        shifts,
        pixel_size_a=pixel_size_a,
        dose_per_frame_e_a2=dose,
        pre_exposure_e_a2=pre_exposure_e_a2,
    )
    step_a = 0.5 * pixel_size_a
    assert stats.total_a == pytest.approx((n - 1) * step_a)
    assert stats.early_a == pytest.approx(n_early_steps * step_a)
    assert stats.late_a == pytest.approx((n - 1 - n_early_steps) * step_a)


def test_drift_statistics_count_path_length_not_displacement():
    shifts = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [3.0, 4.0]])
    stats = drift_statistics(shifts, pixel_size_a=2.0, dose_per_frame_e_a2=1.0)
    assert stats.total_a == pytest.approx(30.0)
    assert stats.early_a == pytest.approx(30.0) and stats.late_a == 0.0
