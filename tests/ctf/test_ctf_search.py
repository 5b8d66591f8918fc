"""The fitting kernels recover the CTF that synthetic micrographs were made with."""

from __future__ import annotations

import numpy as np
import pytest

from emlive.ctf.native import spectrum_geometry
from emlive.ctf.search import (
    FIT_SIGNIFICANCE_MIN,
    CtfFit,
    Microscope,
    SpectrumFit,
    astigmatism_penalty,
    band_pixels,
    correlation,
    fit_ctf,
    fit_spectrum,
    neighbour_correlation_factor,
    search_defocus_grid,
)
from emlive.ctf.spectrum import average_amplitude_spectrum, remove_background
from emlive.optics import ctf_2d

MICROSCOPE = Microscope(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07)
SEARCH = dict(min_res_a=30.0, max_res_a=5.0, min_defocus_a=5000.0, max_defocus_a=50000.0)


def fit_micrograph(image: np.ndarray, pixel_size_a: float, *, fit_phase_shift: bool = False) -> SpectrumFit:
    spectrum = average_amplitude_spectrum(image, tile_size_px=512)
    return fit_spectrum(spectrum, MICROSCOPE, pixel_size_a=pixel_size_a, fit_phase_shift=fit_phase_shift, **SEARCH)


def perfect_spectrum(tile: int, pixel_size_a: float, u: float, v: float, azimuth: float) -> np.ndarray:
    """CTF² on the centred grid, from optics.ctf_2d: a spectrum without noise or background."""
    ctf = ctf_2d(
        (tile, tile),
        pixel_size_a=pixel_size_a,
        voltage_kv=300.0,
        cs_mm=2.7,
        defocus_u_a=u,
        defocus_v_a=v,
        azimuth_deg=azimuth,
        amplitude_contrast=0.07,
        half=False,
    )
    return np.fft.fftshift(ctf.astype(np.float64) ** 2)


def test_the_score_uses_the_conventions_of_optics():
    # U along 30°: the score is 1 for the truth, and lower with U and V swapped (azimuth + 90°)
    spectrum = perfect_spectrum(512, 1.2, 16000.0, 15000.0, 30.0)
    band = band_pixels(spectrum, pixel_size_a=1.2, min_res_a=30.0, max_res_a=5.0)
    truth = correlation(band, MICROSCOPE, defocus_u_a=16000.0, defocus_v_a=15000.0, azimuth_deg=30.0)
    swapped = correlation(band, MICROSCOPE, defocus_u_a=16000.0, defocus_v_a=15000.0, azimuth_deg=120.0)
    assert float(truth) == pytest.approx(1.0, abs=1e-9)
    assert float(swapped) < 0.5


def test_a_perfect_spectrum_is_fitted_exactly(azimuth_error):
    spectrum = perfect_spectrum(512, 1.2, 16000.0, 15000.0, -55.0)
    fit = fit_ctf(spectrum - spectrum.mean(), MICROSCOPE, pixel_size_a=1.2, **SEARCH)
    assert fit.defocus_u_a == pytest.approx(16000.0, rel=1e-4)
    assert fit.defocus_v_a == pytest.approx(15000.0, rel=1e-4)
    assert azimuth_error(fit.azimuth_deg, -55.0) < 0.1
    assert fit.cross_correlation > 0.999


def test_the_grid_search_ranks_the_truth_first_even_with_large_astigmatism(azimuth_error):
    # 2,000 Å of astigmatism at 30,000 Å defocus washes the rings out of a rotational average
    spectrum = perfect_spectrum(512, 1.0, 31000.0, 29000.0, 70.0)
    candidates = search_defocus_grid(spectrum - spectrum.mean(), MICROSCOPE, pixel_size_a=1.0, **SEARCH)
    score, (mean, a, b, phase) = candidates[0]
    assert mean == pytest.approx(30000.0, abs=200.0)  # within a grid step
    assert 2 * np.hypot(a, b) == pytest.approx(2000.0, abs=400.0)
    assert azimuth_error(0.5 * np.degrees(np.arctan2(b, a)), 70.0) < 12.0
    assert phase == 0.0
    assert all(other[0] < score for other in candidates[1:])


# pixel size Å, mean defocus Å, astigmatism |U - V| Å, azimuth °, dose e/px, seed
CASES = [
    (1.00, 8000.0, 0.0, 0.0, 30.0, 1),
    (1.06, 12000.0, 400.0, 35.0, 25.0, 2),
    (1.20, 18000.0, 800.0, -60.0, 40.0, 3),
    (1.35, 24000.0, 1000.0, 80.0, 20.0, 4),
    (1.50, 30000.0, 600.0, -15.0, 30.0, 5),
    (1.00, 30000.0, 250.0, 10.0, 30.0, 6),
]


@pytest.mark.parametrize(("pixel_a", "mean_a", "astig_a", "azimuth", "dose", "seed"), CASES)
def test_defocus_and_azimuth_are_recovered_from_a_noisy_1k_micrograph(
    micrograph, azimuth_error, pixel_a, mean_a, astig_a, azimuth, dose, seed
):
    u, v = mean_a + astig_a / 2, mean_a - astig_a / 2
    image = micrograph(
        seed, pixel_size_a=pixel_a, defocus_u_a=u, defocus_v_a=v, azimuth_deg=azimuth, dose_e_per_px=dose
    )
    result = fit_micrograph(image, pixel_a)
    fit = result.fit
    assert abs(fit.mean_defocus_a - mean_a) / mean_a < 0.005
    assert abs((fit.defocus_u_a - fit.defocus_v_a) - astig_a) < 200.0
    if astig_a > 200.0:
        assert azimuth_error(fit.azimuth_deg, azimuth) < 5.0
    assert fit.cross_correlation > 0.15
    assert result.profile.fit_resolution_a < 8.0


def test_a_2k_micrograph_is_fitted_tighter(micrograph, azimuth_error):
    image = micrograph(
        7, shape=(2048, 2048), pixel_size_a=1.1, defocus_u_a=20300.0, defocus_v_a=19700.0, azimuth_deg=-40.0
    )
    fit = fit_micrograph(image, 1.1).fit
    assert abs(fit.mean_defocus_a - 20000.0) / 20000.0 < 0.002
    assert abs((fit.defocus_u_a - fit.defocus_v_a) - 600.0) < 100.0
    assert azimuth_error(fit.azimuth_deg, -40.0) < 3.0


@pytest.mark.parametrize("phase_shift", [0.6, np.pi / 2])
def test_a_phase_plate_shift_is_recovered(micrograph, phase_shift):
    image = micrograph(
        8, pixel_size_a=1.1, defocus_u_a=9200.0, defocus_v_a=8800.0, azimuth_deg=20.0, phase_shift_rad=phase_shift
    )
    fit = fit_micrograph(image, 1.1, fit_phase_shift=True).fit
    # phase shift and defocus trade off against each other at low resolution: looser than
    # without a phase plate
    assert fit.phase_shift_rad == pytest.approx(phase_shift, abs=0.1)
    assert abs(fit.mean_defocus_a - 9000.0) / 9000.0 < 0.01


def test_real_thon_rings_score_higher_than_pure_noise(micrograph):
    params = dict(pixel_size_a=1.2, defocus_u_a=15000.0, defocus_v_a=15000.0, azimuth_deg=0.0)
    signal = fit_micrograph(micrograph(9, **params), 1.2)
    noise = fit_micrograph(micrograph(9, contrast=0.0, **params), 1.2)
    assert noise.fit.cross_correlation < 0.08
    assert signal.fit.cross_correlation > 3 * noise.fit.cross_correlation
    assert noise.profile.fit_resolution_a > 2 * signal.profile.fit_resolution_a


def test_the_fit_resolution_worsens_as_the_noise_grows(micrograph):
    params = dict(pixel_size_a=1.2, defocus_u_a=14200.0, defocus_v_a=13800.0, azimuth_deg=50.0)
    resolutions = [
        fit_micrograph(micrograph(10, contrast=contrast, **params), 1.2).profile.fit_resolution_a
        for contrast in (0.12, 0.05, 0.025)
    ]
    assert resolutions[0] < resolutions[1] < resolutions[2]


def test_small_pixels_high_defocus_and_large_astigmatism_at_200_kv(micrograph, azimuth_error):
    # rings 2 Fourier px apart in a 512 px box of 0.66 Å pixels: fitted from larger tiles
    microscope = Microscope(voltage_kv=200.0, cs_mm=2.7, amplitude_contrast=0.07)
    image = micrograph(
        5,
        shape=(2048, 2048),
        pixel_size_a=0.66,
        defocus_u_a=28300.0,
        defocus_v_a=26600.0,
        azimuth_deg=30.0,
        voltage_kv=200.0,
    )
    tile, box, fit_pixel_a = spectrum_geometry(image.shape, pixel_size_a=0.66, box_px=512, max_res_a=5.0)
    spectrum = average_amplitude_spectrum(image, tile_size_px=tile, out_size_px=box)
    fit = fit_spectrum(spectrum, microscope, pixel_size_a=fit_pixel_a, **SEARCH).fit
    assert abs(fit.mean_defocus_a - 27450.0) / 27450.0 < 0.005
    assert abs((fit.defocus_u_a - fit.defocus_v_a) - 1700.0) < 200.0
    assert azimuth_error(fit.azimuth_deg, 30.0) < 5.0


@pytest.mark.parametrize(("pixel_a", "box_px", "seed"), [(0.8, 512, 30), (1.3, 512, 31), (1.0, 256, 32), (1.5, 256, 33)])
def test_pure_noise_is_flagged_as_no_fit_and_claims_no_resolution(micrograph, pixel_a, box_px, seed):
    image = micrograph(
        seed, contrast=0.0, pixel_size_a=pixel_a, defocus_u_a=15000.0, defocus_v_a=15000.0, azimuth_deg=0.0
    )
    tile, box, fit_pixel_a = spectrum_geometry(image.shape, pixel_size_a=pixel_a, box_px=box_px, max_res_a=5.0)
    spectrum = average_amplitude_spectrum(image, tile_size_px=tile, out_size_px=box)
    result = fit_spectrum(spectrum, MICROSCOPE, pixel_size_a=fit_pixel_a, **SEARCH)
    assert not result.fit_ok
    assert result.significance < FIT_SIGNIFICANCE_MIN
    assert result.fit.cross_correlation < 0.1
    assert result.profile.fit_resolution_a == SEARCH["min_res_a"]


def test_weak_but_real_rings_are_a_fit(micrograph):
    image = micrograph(34, contrast=0.03, pixel_size_a=1.1, defocus_u_a=15000.0, defocus_v_a=15000.0, azimuth_deg=0.0)
    result = fit_micrograph(image, 1.1)
    assert result.fit_ok
    assert result.significance > FIT_SIGNIFICANCE_MIN
    assert abs(result.fit.mean_defocus_a - 15000.0) / 15000.0 < 0.01


def test_the_astigmatism_restraint_pulls_towards_stigmatic_only_as_much_as_asked(micrograph):
    image = micrograph(35, pixel_size_a=1.2, defocus_u_a=18750.0, defocus_v_a=17250.0, azimuth_deg=30.0)
    spectrum = average_amplitude_spectrum(image, tile_size_px=512)
    found = {
        expected: fit_spectrum(spectrum, MICROSCOPE, pixel_size_a=1.2, expected_astigmatism_a=expected, **SEARCH).fit
        for expected in (None, 5000.0, 50.0)
    }
    astig = {k: fit.defocus_u_a - fit.defocus_v_a for k, fit in found.items()}
    assert astig[None] == pytest.approx(1500.0, abs=150.0)
    assert astig[5000.0] == pytest.approx(astig[None], abs=20.0)  # a loose restraint changes nothing
    assert astig[50.0] < 0.5 * astig[None]  # a tight one overrides rings this weak
    for fit in found.values():
        assert abs(fit.mean_defocus_a - 18000.0) / 18000.0 < 0.01


def test_the_astigmatism_penalty_is_half_a_noise_sigma_at_the_expected_value():
    assert float(astigmatism_penalty(300.0, 10_000, 300.0)) == pytest.approx(0.5 / 100.0)
    assert float(astigmatism_penalty(600.0, 10_000, 300.0)) == pytest.approx(2.0 / 100.0)
    assert float(astigmatism_penalty(600.0, 10_000, None)) == 0.0


def test_correlated_neighbours_count_as_fewer_independent_pixels(micrograph):
    # white noise: independent pixels; the bilinear binning of a 4× larger image's spectrum
    # shares a quarter of each bin's data with each neighbour along each axis: (1 + 2/4)² = 2.25
    fit = CtfFit(15000.0, 15000.0, 0.0, 0.0, 0.0)
    white = np.random.default_rng(36).normal(size=(512, 512)).astype(np.float32)
    limits = dict(pixel_size_a=1.2, min_res_a=30.0, max_res_a=5.0)
    assert neighbour_correlation_factor(white, fit, MICROSCOPE, **limits) == pytest.approx(1.0, abs=0.05)
    noise = micrograph(37, shape=(2048, 2048), contrast=0.0, pixel_size_a=1.2, defocus_u_a=15000.0,
                       defocus_v_a=15000.0, azimuth_deg=0.0)
    spectrum = average_amplitude_spectrum(noise, tile_size_px=512)
    normalised, _ = remove_background(spectrum, window_px=np.full(400, 8.0), low_cut_px=20.0)
    assert neighbour_correlation_factor(normalised, fit, MICROSCOPE, **limits) == pytest.approx(2.25, rel=0.1)
