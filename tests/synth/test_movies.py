"""Synthetic movies: the trajectory, the Fourier shift and the CTF are exactly what they claim."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.stats

from emlive.acquisition import Optics
from emlive.optics import ctf_2d
from emlive.synth import movie_frames, poisson_counts, shifted_images, specimen_image, trajectory

OPTICS = Optics(pixel_size_a=1.0, voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n_frames", "amplitude_px"), [(24, 15.0), (40, 3.0), (2, 1.0)])
def test_trajectory_starts_at_zero_and_has_requested_path_length(seed, n_frames, amplitude_px):
    path = trajectory(np.random.default_rng(seed), n_frames=n_frames, amplitude_px=amplitude_px)
    assert path.shape == (n_frames, 2)
    assert np.array_equal(path[0], [0.0, 0.0])
    steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
    assert steps.sum() == pytest.approx(amplitude_px, rel=1e-12)
    if n_frames > 4:
        assert steps[0] > 2 * steps[-1]  # fast early, slowing down
        # smooth: the direction turns by at most 60° over the movie, so the end is far away
        assert np.linalg.norm(path[-1]) > 0.8 * amplitude_px


def test_trajectory_single_frame_and_reproducible():
    assert np.array_equal(trajectory(np.random.default_rng(0), n_frames=1, amplitude_px=5), [[0.0, 0.0]])
    a = trajectory(np.random.default_rng(7), n_frames=10, amplitude_px=5)
    b = trajectory(np.random.default_rng(7), n_frames=10, amplitude_px=5)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="n_frames"):
        trajectory(np.random.default_rng(0), n_frames=0, amplitude_px=1)


@pytest.mark.parametrize("shape", [(64, 96), (63, 95)])
@pytest.mark.parametrize("shift_xy", [(1.3, -2.7), (0.5, 0.25), (-7.0, 3.0)])
def test_shift_moves_content_by_plus_d(shift_xy, shape):
    """frame(r) = image(r - d): checked on a plane wave, where the shifted image is analytic."""
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx]
    fx, fy = 5 / nx, 3 / ny

    def wave(dx: float, dy: float) -> np.ndarray:
        return np.cos(2 * np.pi * (fx * (x - dx) + fy * (y - dy)))

    out = shifted_images(wave(0, 0).astype(np.float32), np.array([shift_xy, (0.0, 0.0)]))
    assert out.shape == (2, ny, nx)
    np.testing.assert_allclose(out[0], wave(*shift_xy), atol=1e-5)
    np.testing.assert_allclose(out[1], wave(0, 0), atol=1e-5)


def test_integer_shift_is_a_roll():
    image = np.random.default_rng(1).random((48, 64), dtype=np.float32)
    out = shifted_images(image, [(3, -2)])[0]
    np.testing.assert_allclose(out, np.roll(image, (-2, 3), axis=(0, 1)), atol=1e-5)


def _band(shape: tuple[int, int], low_a: float, high_a: float) -> np.ndarray:
    ky = np.fft.fftfreq(shape[0], d=OPTICS.pixel_size_a)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=OPTICS.pixel_size_a)[None, :]
    k = np.hypot(kx, ky)
    return (k > 1 / low_a) & (k < 1 / high_a)


def _binned_by(values: np.ndarray, key: np.ndarray, n_bins: int = 100) -> np.ndarray:
    """Mean of ``values`` in equal-count bins of ``key``."""
    order = np.argsort(key)
    return np.array([chunk.mean() for chunk in np.array_split(values[order], n_bins)])


@pytest.mark.parametrize(("defocus_u_a", "defocus_v_a", "azimuth_deg"), [(15000, 14200, 33.0), (9000, 9000, 0.0)])
def test_specimen_power_spectrum_has_the_ctf_zeros(defocus_u_a, defocus_v_a, azimuth_deg):
    shape = (512, 512)
    image = specimen_image(
        np.random.default_rng(3),
        shape,
        optics=OPTICS,
        defocus_u_a=defocus_u_a,
        defocus_v_a=defocus_v_a,
        azimuth_deg=azimuth_deg,
    )
    assert image.dtype == np.float32
    assert image.mean() == pytest.approx(1.0, abs=1e-5)
    assert image.min() > 0

    def ctf(scale: float = 1.0) -> np.ndarray:
        return ctf_2d(
            shape,
            pixel_size_a=OPTICS.pixel_size_a,
            voltage_kv=OPTICS.voltage_kv,
            cs_mm=OPTICS.cs_mm,
            defocus_u_a=defocus_u_a * scale,
            defocus_v_a=defocus_v_a * scale,
            azimuth_deg=azimuth_deg,
            amplitude_contrast=OPTICS.amplitude_contrast,
        )

    band = _band(shape, 12.0, 3.0)  # from beyond the amplitude texture to 3 Å
    power = (np.abs(scipy.fft.rfft2(image - image.mean())) ** 2)[band]
    ctf2 = ctf()[band] ** 2
    # The zeros are sharp: almost no power where the CTF vanishes.
    assert power[ctf2 < 0.01].mean() < 0.02 * power[ctf2 > 0.9].mean()
    # Averaged over pixels of equal CTF² (the Thon rings, astigmatism included), the power
    # follows the CTF² exactly; with the defocus 3 % off it does not.
    corr_true = np.corrcoef(_binned_by(power, ctf2), _binned_by(ctf2, ctf2))[0, 1]
    assert corr_true > 0.99
    for scale in (0.97, 1.03):
        wrong = ctf(scale)[band] ** 2
        assert np.corrcoef(_binned_by(power, wrong), _binned_by(wrong, wrong))[0, 1] < 0.8


def test_texture_dominates_low_frequencies():
    """The amplitude texture is the low-resolution signal alignment locks on to."""
    kwargs = dict(optics=OPTICS, defocus_u_a=12000, defocus_v_a=12000, azimuth_deg=0.0)
    plain = specimen_image(np.random.default_rng(0), (256, 256), texture=0.0, **kwargs)
    textured = specimen_image(np.random.default_rng(0), (256, 256), texture=0.15, **kwargs)
    assert plain.std() == pytest.approx(0.1, rel=1e-3)
    assert textured.std() == pytest.approx(np.hypot(0.1, 0.15), rel=0.1)
    low = np.abs(scipy.fft.rfft2(textured - plain))[:4, :4].sum()
    assert low > 10 * np.abs(scipy.fft.rfft2(plain - 1))[:4, :4].sum()


def test_movie_frames_are_poisson_around_the_shifted_image():
    rng = np.random.default_rng(5)
    image = specimen_image(rng, (256, 256), optics=OPTICS, defocus_u_a=12000, defocus_v_a=11000, azimuth_deg=10.0)
    path = trajectory(rng, n_frames=6, amplitude_px=4.0)
    dose = 20.0
    frames = movie_frames(rng, image, path, dose_e_per_px_per_frame=dose)
    assert frames.shape == (6, 256, 256)
    assert frames.dtype == np.uint16
    expected = dose * shifted_images(image, path)
    chi2 = ((frames - expected) ** 2 / expected).mean(axis=(1, 2))
    np.testing.assert_allclose(chi2, 1.0, atol=0.02)
    # the displacement matters: frames do not fit the unshifted image
    stale = ((frames[-1] - expected[0]) ** 2 / expected[0]).mean()
    assert stale > 1.5


def test_movie_frames_with_gain_and_reproducibility():
    image = np.ones((128, 128), dtype=np.float32)
    gain = np.where(np.arange(128)[None, :] < 64, 0.5, 2.0).astype(np.float32) * np.ones((128, 1), np.float32)
    path = np.zeros((4, 2))
    a = movie_frames(np.random.default_rng(2), image, path, dose_e_per_px_per_frame=8.0, gain=gain)
    b = movie_frames(np.random.default_rng(2), image, path, dose_e_per_px_per_frame=8.0, gain=gain, workers=1)
    assert np.array_equal(a, b)  # independent of the thread count
    assert a[..., :64].mean() == pytest.approx(16.0, rel=0.02)
    assert a[..., 64:].mean() == pytest.approx(4.0, rel=0.02)
    assert (a * gain).mean() == pytest.approx(8.0, rel=0.02)
    with pytest.raises(ValueError, match="gain shape"):
        movie_frames(np.random.default_rng(2), image, path, dose_e_per_px_per_frame=1.0, gain=gain[:10])


@pytest.mark.parametrize("mean", [0.0, 0.03, 0.7, 1.0, 2.5, 12.0, 35.0])
def test_poisson_counts_follow_the_poisson_law(mean):
    counts = poisson_counts(np.random.default_rng(9), np.full((400, 500), mean, dtype=np.float32))
    assert counts.shape == (400, 500)
    assert counts.dtype == np.uint16
    if mean == 0:
        assert not counts.any()
        return
    assert counts.mean() == pytest.approx(mean, rel=0.01, abs=1e-3)
    assert counts.var() == pytest.approx(mean, rel=0.02, abs=1e-3)
    # chi-square against the pmf over bins with enough expected counts (tail lumped)
    k = np.arange(int(counts.max()) + 1)
    pmf = scipy.stats.poisson.pmf(k, mean) * counts.size
    observed = np.bincount(counts.ravel(), minlength=k.size).astype(float)
    keep = pmf > 20
    expected = np.append(pmf[keep], counts.size - pmf[keep].sum())
    observed = np.append(observed[keep], counts.size - observed[keep].sum())
    statistic = ((observed - expected) ** 2 / expected).sum()
    assert scipy.stats.chi2.sf(statistic, df=expected.size - 1) > 1e-3
