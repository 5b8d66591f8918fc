"""Accuracy across the range issue 4 asks for: pixel sizes 0.6–1.5 Å, defocus 5,000–40,000 Å,
astigmatism 0–2,000 Å, 200 and 300 kV, Cs 0.01–2.7 mm, with and without a phase plate.

Each case is a synthetic micrograph with a known CTF (:func:`emlive.synth.specimen_image`,
Poisson counts), fitted the way the engine fits it (the spectrum geometry of
:func:`emlive.ctf.native.spectrum_geometry`, then :func:`emlive.ctf.search.fit_spectrum`).
"""

from __future__ import annotations

import numpy as np
import pytest

from emlive.ctf.native import spectrum_geometry
from emlive.ctf.search import Microscope, SpectrumFit, fit_spectrum
from emlive.ctf.spectrum import average_amplitude_spectrum
from tests.ctf.conftest import azimuth_error_deg, noisy_micrograph

# pixel Å, mean defocus Å, |U - V| Å, azimuth °, kV, Cs mm, phase shift rad (None: no plate), seed
SWEEP = [
    (0.60, 12000.0, 800.0, 40.0, 300.0, 2.7, None, 101),
    (0.66, 40000.0, 1500.0, -70.0, 300.0, 2.7, None, 102),
    (0.75, 5000.0, 0.0, 0.0, 200.0, 2.7, None, 103),
    (0.80, 25000.0, 2000.0, 15.0, 200.0, 0.01, None, 104),
    (0.90, 8000.0, 300.0, -30.0, 300.0, 0.01, 0.5, 105),
    (1.00, 35000.0, 500.0, 85.0, 300.0, 1.4, None, 106),
    (1.05, 15000.0, 1200.0, -45.0, 200.0, 2.0, None, 107),
    (1.10, 5000.0, 250.0, 60.0, 300.0, 2.7, 1.2, 108),
    (1.20, 20000.0, 0.0, 0.0, 300.0, 0.01, None, 109),
    (1.25, 30000.0, 1000.0, 5.0, 200.0, 2.7, None, 110),
    (1.35, 10000.0, 600.0, -80.0, 300.0, 2.7, 2.0, 111),
    (1.50, 40000.0, 2000.0, 50.0, 300.0, 2.7, None, 112),
    (1.50, 6000.0, 400.0, -15.0, 200.0, 0.01, None, 113),
    (0.70, 18000.0, 100.0, 20.0, 200.0, 1.4, 0.8, 114),
]


def _fit(case: tuple) -> tuple[SpectrumFit, tuple]:
    pixel_a, mean_a, astig_a, azimuth, kv, cs, phase, seed = case
    image = noisy_micrograph(
        seed,
        shape=(1536, 1536) if pixel_a < 0.9 else (1024, 1024),
        pixel_size_a=pixel_a,
        defocus_u_a=mean_a + astig_a / 2,
        defocus_v_a=mean_a - astig_a / 2,
        azimuth_deg=azimuth,
        phase_shift_rad=phase or 0.0,
        voltage_kv=kv,
        cs_mm=cs,
    )
    tile, box, fit_pixel_a = spectrum_geometry(image.shape, pixel_size_a=pixel_a, box_px=512, max_res_a=5.0)
    spectrum = average_amplitude_spectrum(image, tile_size_px=tile, out_size_px=box)
    result = fit_spectrum(
        spectrum,
        Microscope(voltage_kv=kv, cs_mm=cs, amplitude_contrast=0.07),
        pixel_size_a=fit_pixel_a,
        min_res_a=30.0,
        max_res_a=5.0,
        min_defocus_a=4000.0,
        max_defocus_a=45000.0,
        fit_phase_shift=phase is not None,
    )
    return result, case


@pytest.fixture(scope="module")
def sweep() -> list[tuple[SpectrumFit, tuple]]:
    return [_fit(case) for case in SWEEP]


def _relative_errors(sweep) -> np.ndarray:
    return np.array([abs(r.fit.mean_defocus_a - case[1]) / case[1] for r, case in sweep])


def test_mean_defocus_median_error_below_half_a_percent_and_none_above_two(sweep):
    errors = _relative_errors(sweep)
    assert np.median(errors) < 0.005, errors
    assert errors.max() < 0.02, errors


@pytest.mark.parametrize("index", range(len(SWEEP)), ids=[f"{c[0]}A-{c[1]:.0f}-{c[4]:.0f}kV-cs{c[5]}" for c in SWEEP])
def test_each_case_is_found_and_its_astigmatism_recovered(sweep, index):
    result, (pixel_a, mean_a, astig_a, azimuth, kv, cs, phase, seed) = sweep[index]
    fit = result.fit
    assert result.fit_ok
    assert abs(fit.mean_defocus_a - mean_a) / mean_a < 0.02
    assert abs((fit.defocus_u_a - fit.defocus_v_a) - astig_a) < max(200.0, 0.15 * astig_a)
    if astig_a > 200.0:
        assert azimuth_error_deg(fit.azimuth_deg, azimuth) < 5.0
    if phase is not None:
        assert abs((fit.phase_shift_rad - phase + np.pi / 2) % np.pi - np.pi / 2) < 0.15
    assert result.profile.fit_resolution_a < 10.0
