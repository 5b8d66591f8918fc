"""The spectrum kernels: the averaged amplitude spectrum, radial profiles, background, ice."""

from __future__ import annotations

import numpy as np
import pytest

from emlive.ctf.spectrum import (
    average_amplitude_spectrum,
    edge_taper,
    ice_ring_ratio,
    radial_profile,
    radius_grid_px,
    remove_background,
    smooth_profile,
)


def test_edge_taper_is_one_inside_and_rolls_off_symmetrically():
    window = edge_taper(1000)
    assert window.shape == (1000,)
    np.testing.assert_allclose(window[30:970], 1.0)  # 3 % of the length at each end
    assert window[0] < 0.01
    assert np.all(np.diff(window[:30]) > 0)
    np.testing.assert_allclose(window, window[::-1])


def test_a_taper_wider_than_the_axis_is_an_error():
    with pytest.raises(ValueError, match="does not fit"):
        edge_taper(10, taper_fraction=0.6)


def test_white_noise_gives_a_flat_spectrum_of_known_level():
    sigma = 2.0
    image = np.random.default_rng(0).normal(5.0, sigma, (1024, 1024)).astype(np.float32)
    spectrum = average_amplitude_spectrum(image, tile_size_px=256)
    assert spectrum.shape == (256, 256)
    assert spectrum[128, 128] == 0.0  # the mean is removed
    profile, _ = radial_profile(spectrum, radius_grid_px(256), n_bins=128)
    expected = sigma * np.sqrt(np.pi) / 2.0  # mean of a Rayleigh amplitude
    # (the lowest rings hold few pixels and some leakage of the removed mean)
    np.testing.assert_allclose(profile[10:127], expected, rtol=0.04)


def test_a_cosine_peaks_where_the_centred_layout_says():
    # 20 cycles per tile along x and 8 along y: frequency (kx, ky) = (20, 8) / tile
    tile = 256
    y, x = np.mgrid[0:512, 0:512]
    image = np.cos(2 * np.pi * (20 * x + 8 * y) / tile).astype(np.float32)
    spectrum = average_amplitude_spectrum(image, tile_size_px=tile)
    c = tile // 2
    top_two = np.argsort(spectrum.ravel())[-2:]
    peaks = {tuple(int(i) for i in np.unravel_index(j, spectrum.shape)) for j in top_two}
    assert peaks == {(c + 8, c + 20), (c - 8, c - 20)}  # [y, x], point-symmetric


def test_the_spectrum_is_point_symmetric():
    image = np.random.default_rng(1).normal(size=(600, 800)).astype(np.float32)
    spectrum = average_amplitude_spectrum(image, tile_size_px=128)
    inner = spectrum[1:, 1:]  # row/column 0 hold the unpaired Nyquist frequency
    np.testing.assert_allclose(inner, inner[::-1, ::-1], rtol=1e-5)


@pytest.mark.parametrize(
    ("shape", "tile", "message"),
    [((4, 64, 64), 32, "2D"), ((100, 100), 128, "smaller"), ((256, 256), 101, "even")],
)
def test_bad_spectrum_inputs_are_errors(shape, tile, message):
    with pytest.raises(ValueError, match=message):
        average_amplitude_spectrum(np.ones(shape, np.float32), tile_size_px=tile)


def test_radial_profile_averages_rings():
    radius = radius_grid_px(128)
    profile, counts = radial_profile(3.0 + 0.0 * radius, radius, n_bins=64)
    np.testing.assert_allclose(profile[:63], 3.0)
    # ring i collects about 2π i pixels
    np.testing.assert_allclose(counts[10:60], 2 * np.pi * np.arange(10, 60), rtol=0.05)
    profile, _ = radial_profile(radius, radius, n_bins=64)
    np.testing.assert_allclose(profile[5:62], np.arange(5, 62), atol=0.1)


def test_smoothing_over_a_ring_period_keeps_the_background_and_drops_the_rings():
    r = np.arange(300, dtype=np.float64)
    background = 10.0 - 0.02 * r
    period = 12.0
    profile = background + np.cos(2 * np.pi * r / period)
    smooth = smooth_profile(profile, np.full(r.size, period))
    np.testing.assert_allclose(smooth[20:280], background[20:280], atol=0.05)


def test_background_removal_leaves_unit_noise_and_blanks_the_centre():
    rng = np.random.default_rng(2)
    tile = 256
    radius = radius_grid_px(tile)
    # a steep smooth background with noise proportional to it
    background = 50.0 / (1.0 + (radius / 20.0) ** 2) + 1.0
    spectrum = background * (1.0 + 0.1 * rng.standard_normal((tile, tile)))
    normalised, estimate = remove_background(spectrum, window_px=np.full(200, 8.0), low_cut_px=10.0)
    inside = radius < 10.0
    assert np.all(normalised[inside] == 0.0)
    ring = (radius > 30) & (radius < 120)
    assert abs(float(normalised[ring].mean())) < 0.05
    assert float(normalised[ring].std()) == pytest.approx(1.0, abs=0.05)
    np.testing.assert_allclose(estimate[ring], background[ring], rtol=0.02)


def test_cropping_the_spectrum_keeps_the_low_frequencies_finely_sampled():
    # 40 cycles per 512 px tile; the 256² crop keeps frequency bins of 1/512 px⁻¹
    y, x = np.mgrid[0:1024, 0:1024]
    image = np.cos(2 * np.pi * 40 * x / 512).astype(np.float32)
    full = average_amplitude_spectrum(image, tile_size_px=512)
    cropped = average_amplitude_spectrum(image, tile_size_px=512, out_size_px=256)
    assert cropped.shape == (256, 256)
    np.testing.assert_array_equal(cropped, full[128:384, 128:384])
    assert np.unravel_index(int(cropped.argmax()), cropped.shape) in {(128, 128 + 40), (128, 128 - 40)}
    with pytest.raises(ValueError, match="out_size_px"):
        average_amplitude_spectrum(image, tile_size_px=512, out_size_px=600)


def _with_ice_ring(image: np.ndarray, *, pixel_size_a: float, strength: float, seed: int) -> np.ndarray:
    """``image`` plus noise whose power lies in a ring at 3.7 Å (σ 0.004 1/Å), of RMS ``strength``
    times the image's: what crystalline ice adds to a micrograph."""
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(image.shape[0], d=pixel_size_a)[:, None]
    kx = np.fft.rfftfreq(image.shape[1], d=pixel_size_a)[None, :]
    ring = np.exp(-0.5 * ((np.hypot(kx, ky) - 1 / 3.7) / 0.004) ** 2)
    ice = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(image.shape)) * ring, s=image.shape)
    return (image + ice * (strength * image.std() / ice.std())).astype(np.float32)


def test_the_ice_ring_ratio_is_one_without_ice_and_grows_with_it(micrograph):
    image = micrograph(40, pixel_size_a=1.2, defocus_u_a=15000.0, defocus_v_a=14000.0, azimuth_deg=10.0)
    ratios = []
    for strength in (0.0, 0.1, 0.2):
        iced = _with_ice_ring(image, pixel_size_a=1.2, strength=strength, seed=41)
        spectrum = average_amplitude_spectrum(iced, tile_size_px=600, out_size_px=512)
        ratios.append(ice_ring_ratio(spectrum, pixel_size_a=600 * 1.2 / 512))
    assert ratios[0] == pytest.approx(1.0, abs=0.05)
    assert ratios[1] > 1.2
    assert ratios[2] > ratios[1]


def test_the_ice_ring_ratio_needs_the_band_inside_nyquist():
    spectrum = np.ones((256, 256), np.float32)
    assert ice_ring_ratio(spectrum, pixel_size_a=1.5) == pytest.approx(1.0)
    assert ice_ring_ratio(spectrum, pixel_size_a=1.8) is None


def test_each_bin_averages_all_the_frequencies_within_a_bin_of_it():
    # white noise, an image 8× the tile: each bin takes the 8 × 8 frequencies within a bin of
    # it along each axis with triangle weights, i.e. (8 · 3/2)² = 144 independent amplitudes
    # (Rayleigh: relative SD √(4/π − 1) = 0.523 each), so the spectrum's relative SD is 0.523/12
    image = np.random.default_rng(3).normal(0.0, 1.0, (2048, 2048)).astype(np.float32)
    spectrum = average_amplitude_spectrum(image, tile_size_px=256).astype(np.float64)
    ring = (radius_grid_px(256) > 20) & (radius_grid_px(256) < 120)
    relative_sd = spectrum[ring].std() / spectrum[ring].mean()
    assert relative_sd == pytest.approx(np.sqrt(4 / np.pi - 1) / 12, rel=0.1)
