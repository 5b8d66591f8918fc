"""Pure picking kernels on small arrays: resampling, phase flip, masks, noise calibration, peaks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emlive.optics import ctf_2d
from emlive.pick.detect import (
    CtfModel,
    PickError,
    ScoreMap,
    automatic_threshold,
    exclusion_mask,
    expected_noise_peaks,
    find_peaks,
    noise_threshold,
    phase_flip,
    pick_micrograph,
    score_map,
    working_image,
)


def gaussian_spot(shape, x, y, sigma, amplitude=1.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return amplitude * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize(("pixel_size_a", "working_a"), [(1.0, 6.0), (1.0, 2.5), (2.0, 20.0), (1.0, 1.0)])
def test_working_image_keeps_positions_and_mean(pixel_size_a, working_a):
    """A dark spot at a known (x, y) in the input is at the mapped position in the working image."""
    shape = (480, 640)
    x, y = 401.3, 157.8  # x = column, y = row
    image = (100.0 - gaussian_spot(shape, x, y, sigma=12.0, amplitude=30.0)).astype(np.float32)
    w = working_image(image, pixel_size_a=pixel_size_a, working_pixel_size_a=working_a)
    assert w.pixel_size_a == pytest.approx(working_a, rel=0.02) if working_a > pixel_size_a else w.image.shape == shape
    assert w.image.mean() == pytest.approx(image.mean(), rel=1e-3)
    iy, ix = np.unravel_index(np.argmin(w.image), w.image.shape)
    found = w.to_input_px([[ix, iy]])[0]
    assert np.hypot(*(found - [x, y])) <= 0.75 * max(w.scale_xy)
    # the stored transform is the transform of the image less its plane
    np.testing.assert_allclose(
        np.fft.irfft2(w.image_ft, s=w.image.shape), w.image - w.background, atol=1e-3 * image.mean()
    )


def test_working_image_sets_a_tilt_aside():
    yy, xx = np.mgrid[:256, :256]
    tilted = (100.0 + 0.1 * xx - 0.05 * yy).astype(np.float32)
    w = working_image(tilted, pixel_size_a=1.0, working_pixel_size_a=4.0)
    flat = w.image - w.background
    assert flat.std() < 1e-3 * flat.mean()  # the plane is all in the background
    # the plane is where the working pixels map to in the input
    x, y = w.to_input_px(np.column_stack([np.mgrid[:64, :64][1].ravel(), np.mgrid[:64, :64][0].ravel()])).T
    np.testing.assert_allclose(w.image.ravel(), 100.0 + 0.1 * x - 0.05 * y, atol=0.01)
    # box-averaged first (6 px → box 2): pixel i covers input pixels 2i, 2i + 1
    boxed = working_image(tilted, pixel_size_a=1.0, working_pixel_size_a=8.0)
    assert boxed.offset_px == 0.5
    x, y = boxed.to_input_px([[0, 0], [31, 17]]).T
    np.testing.assert_allclose(boxed.image[[0, 17], [0, 31]], 100.0 + 0.1 * x - 0.05 * y, atol=0.01)


def test_phase_flip_makes_a_ctf_filtered_particle_dark_again():
    """A dark 3 Å spot imaged at 2.5 µm defocus (its detail beyond the first CTF zero, 22 Å,
    inverted) is restored by the flip: its correlation with the spot goes from 0.3 to 0.9."""
    shape, px = (256, 256), 2.0
    ctf = CtfModel(defocus_u_a=25000.0, defocus_v_a=24000.0, azimuth_deg=30.0)
    disc = -gaussian_spot(shape, 128, 128, sigma=1.5)
    transfer = ctf_2d(
        shape, pixel_size_a=px, voltage_kv=300, cs_mm=2.7, defocus_u_a=25000, defocus_v_a=24000, azimuth_deg=30
    )
    # image = 1 + 2 · CTF ⊛ phase; a dark particle has positive phase, -disc
    imaged = 1.0 + 2.0 * np.fft.irfft2(np.fft.rfft2(-disc * 0.1) * transfer, s=shape)
    w = working_image(imaged.astype(np.float32), pixel_size_a=px, working_pixel_size_a=px)
    flipped = phase_flip(w, ctf)
    assert flipped.phase_flipped
    before = np.corrcoef((w.image - 1).ravel(), disc.ravel())[0, 1]
    after = np.corrcoef((flipped.image - 1).ravel(), disc.ravel())[0, 1]
    assert before < 0.4 and after > 0.85
    # flipping twice is the identity
    np.testing.assert_allclose(phase_flip(flipped, ctf).image, w.image, atol=1e-5)


def test_score_is_a_z_score_in_white_noise():
    """In pure noise the score map has unit variance and as many peaks as the theory expects."""
    rng = np.random.default_rng(0)
    noise = rng.poisson(50.0, (1024, 1024)).astype(np.float32)
    w = working_image(noise, pixel_size_a=1.0, working_pixel_size_a=1.0)
    scores = score_map(w, diameter_px=12.0)
    inner = scores.z[24:-24, 24:-24]
    assert inner.std() == pytest.approx(1.0, abs=0.08)
    assert abs(inner.mean()) < 0.1
    # Euler-characteristic count of maxima above 2.5σ vs the count found
    xy, _ = find_peaks(scores.z, min_distance_px=1.0, threshold=2.5)
    expected = expected_noise_peaks(2.5, area_px=noise.size, roughness_per_px2=scores.roughness_per_px2)
    assert len(xy) == pytest.approx(expected, rel=0.3)
    # the strict threshold lets through about the noise peaks it allows
    strict = noise_threshold(scores, area_px=noise.size, expected_false_picks=1.0)
    assert expected_noise_peaks(strict, area_px=noise.size, roughness_per_px2=scores.roughness_per_px2) == (
        pytest.approx(1.0, rel=1e-3)
    )
    assert len(find_peaks(scores.z, min_distance_px=1.0, threshold=strict)[0]) <= 5
    # pure noise: the automatic threshold stays strict
    _, values = find_peaks(scores.z, min_distance_px=12.0, threshold=3.0)
    assert automatic_threshold(scores, values, area_px=noise.size) == noise_threshold(scores, area_px=noise.size)


def test_automatic_threshold_goes_lower_only_for_a_crowd_of_faint_peaks():
    scores = ScoreMap(z=np.zeros((1, 1), np.float32), noise_sigma=1.0, roughness_per_px2=0.01)
    area = 500_000.0
    strict = noise_threshold(scores, area_px=area)
    assert expected_noise_peaks(strict, area_px=area, roughness_per_px2=0.01) == pytest.approx(0.05, rel=1e-3)
    noise_at_3 = expected_noise_peaks(3.0, area_px=area, roughness_per_px2=0.01)
    assert 5 < noise_at_3 < 20  # a handful of noise peaks above 3σ
    rng = np.random.default_rng(0)
    # noise peaks as the model has them: the k-th highest where k - 1/2 are expected above it
    levels = np.linspace(3.0, 8.0, 2001)
    expected = np.array([expected_noise_peaks(t, area_px=area, roughness_per_px2=0.01) for t in levels])
    noise_peaks = np.interp(np.arange(round(noise_at_3)) + 0.5, expected[::-1], levels[::-1])
    # 300 faint particles around 4σ, below the strict threshold: picked down to about 3.5σ
    faint = rng.normal(4.2, 0.4, 300)
    chosen = automatic_threshold(scores, np.concatenate([faint, noise_peaks]), area_px=area)
    assert 3.0 <= chosen < 3.8 < strict
    # 300 strong particles: no reason to go down among the noise peaks
    strong = rng.normal(12.0, 2.0, 300)
    chosen = automatic_threshold(scores, np.concatenate([strong, noise_peaks]), area_px=area)
    assert (noise_peaks >= chosen).sum() <= 1
    assert automatic_threshold(scores, np.array([]), area_px=area) == strict


def test_score_peaks_on_dark_discs_of_the_diameter():
    rng = np.random.default_rng(1)
    shape = (256, 256)
    truth = np.array([[60.0, 70.0], [180.5, 60.0], [120.0, 190.0]])
    image = np.full(shape, 100.0)
    for x, y in truth:
        image -= gaussian_spot(shape, x, y, sigma=5.0, amplitude=20.0)
    image = rng.poisson(image).astype(np.float32)
    w = working_image(image, pixel_size_a=1.0, working_pixel_size_a=1.0)
    z = score_map(w, diameter_px=16.0).z
    xy, values = find_peaks(z, min_distance_px=12.0, threshold=8.0)
    assert len(xy) == 3
    for x, y in truth:
        assert np.min(np.hypot(*(xy - [x, y]).T)) < 1.5
    assert (np.diff(values) <= 0).all()


def test_find_peaks_suppresses_greedily_and_refines():
    z = np.zeros((40, 60), dtype=np.float32)
    z += 10 * np.exp(-((np.arange(60)[None, :] - 20.3) ** 2 + (np.arange(40)[:, None] - 15.0) ** 2) / 8.0)
    z[15, 26] = 9.0  # a second maximum 6 px away: suppressed at 8 px, kept at 5 px
    z[30, 50] = 7.0
    z[5, 5] = 3.0  # below the threshold
    xy, values = find_peaks(z, min_distance_px=8.0, threshold=5.0)
    assert values.tolist() == pytest.approx([10 * math.exp(-0.09 / 8.0), 7.0], rel=1e-3)
    assert xy[0] == pytest.approx([20.3, 15.0], abs=0.05)  # parabolic sub-pixel refinement
    assert xy[1].tolist() == [50.0, 30.0]  # x = column, y = row
    assert len(find_peaks(z, min_distance_px=5.0, threshold=5.0)[0]) == 3
    excluded = np.zeros(z.shape, dtype=bool)
    excluded[25:, 45:] = True
    assert len(find_peaks(z, min_distance_px=8.0, threshold=5.0, excluded=excluded)[0]) == 1
    assert find_peaks(z, min_distance_px=8.0, threshold=20.0)[0].shape == (0, 2)


def noisy(level: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(level).astype(np.float32)


def test_carbon_is_a_dark_step_and_a_gradient_is_not():
    yy, xx = np.mgrid[:400, :400]
    step = np.where(xx + 0.3 * yy < 180, 0.85, 1.0) * 200.0
    mask = exclusion_mask(noisy(step), diameter_px=16.0)
    carbon_truth = step < 200
    assert (mask.carbon & carbon_truth).sum() / carbon_truth.sum() > 0.98  # all the film
    # widened by 0.75 diameter (12 px) into the ice, not much more
    assert (mask.carbon & ~carbon_truth).sum() / (~carbon_truth).sum() < 0.12
    assert not mask.contamination.any()
    ramp = (0.7 + 0.3 * xx / 400) * 200.0
    assert not exclusion_mask(noisy(ramp), diameter_px=16.0).carbon.any()
    flat = exclusion_mask(noisy(np.full((400, 400), 200.0)), diameter_px=16.0)
    assert not flat.carbon.any() and not flat.contamination.any()
    # the edge margin: half a diameter
    assert flat.edge[:8].all() and not flat.edge[8:-8, 8:-8].any()
    assert flat.masked_fraction == pytest.approx(1 - (384 / 400) ** 2)


def test_contamination_is_a_big_very_dark_blob():
    yy, xx = np.mgrid[:400, :400]
    blob = np.hypot(xx - 250, yy - 150) < 50
    level = np.where(blob, 0.25, 1.0) * 200.0
    mask = exclusion_mask(noisy(level), diameter_px=16.0)
    assert mask.contamination[blob].all()
    assert not mask.contamination[np.hypot(xx - 250, yy - 150) > 50 + 1.25 * 16].any()
    assert not mask.carbon.any()
    # a dark spot of a particle's size is a particle, not contamination
    small = np.where(np.hypot(xx - 250, yy - 150) < 6, 0.25, 1.0) * 200.0
    assert not exclusion_mask(noisy(small), diameter_px=16.0).contamination.any()


def test_mostly_carbon_cannot_be_picked():
    yy, xx = np.mgrid[:512, :512]
    image = noisy(np.where(xx < 470, 0.8, 1.0) * 100.0)
    with pytest.raises(PickError, match=r"excluded \(carbon 9\d%"):
        pick_micrograph(image, pixel_size_a=2.0, diameter_a=100.0)


def test_pick_micrograph_checks_its_arguments():
    with pytest.raises(ValueError, match="diameter_a"):
        pick_micrograph(np.ones((64, 64), np.float32), pixel_size_a=1.0, diameter_a=0.0)
    with pytest.raises(ValueError, match="2D"):
        pick_micrograph(np.ones((4, 64, 64), np.float32), pixel_size_a=1.0, diameter_a=50.0)


def test_non_finite_pixels_are_ignored():
    rng = np.random.default_rng(3)
    image = np.full((512, 512), 100.0)
    for x, y in [(100.0, 120.0), (300.0, 340.0), (400.0, 100.0)]:
        image -= gaussian_spot(image.shape, x, y, sigma=10.0, amplitude=15.0)
    image = rng.poisson(image).astype(np.float32)
    image[200:203, :] = np.nan
    image[5, 5] = np.inf
    picks = pick_micrograph(image, pixel_size_a=1.0, diameter_a=32.0)
    assert len(picks.xy_px) == 3 and np.isfinite(picks.scores).all()
    with pytest.raises(PickError, match="no finite"):
        pick_micrograph(np.full((64, 64), np.nan, np.float32), pixel_size_a=1.0, diameter_a=20.0)
