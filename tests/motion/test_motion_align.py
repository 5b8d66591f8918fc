"""Global frame alignment recovers known drift; shift and crop helpers keep their conventions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from emlive import synth
from emlive.acquisition import Optics
from emlive.motion.align import (
    align_frames,
    apply_shifts,
    boundary_spectra,
    crop_shape_for_bfactor,
    fourier_crop,
    rfft2_frames,
    smooth_component,
    subpixel_peak,
)


OPTICS = Optics(pixel_size_a=1.0)


def rmsd_px(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=1))))


@pytest.mark.parametrize(
    ("seed", "shape", "dose_e_a2_per_frame"),
    [(0, (512, 512), 1.0), (1, (512, 512), 1.5), (2, (384, 640), 1.2)],
)
def test_alignment_recovers_known_drift_512(drifting_movie, seed, shape, dose_e_a2_per_frame):
    """Small frames hold little signal: a milder B-factor keeps the high frequencies that help."""
    movie = drifting_movie(seed, shape=shape, dose_e_a2_per_frame=dose_e_a2_per_frame)
    shifts = align_frames(
        rfft2_frames(movie.frames), bfactor_px2=50.0, boundary=boundary_spectra(movie.frames)
    )
    assert shifts.shape == (len(movie.truth_px), 2)
    assert np.array_equal(shifts[0], [0.0, 0.0])
    # the kernel returns the correction s_i = -d_i
    assert rmsd_px(-shifts, movie.truth_px) < 0.2


def test_alignment_recovers_known_drift_1k_low_dose_default_bfactor(movie_1k):
    shifts = align_frames(
        rfft2_frames(movie_1k.frames, workers=-1),
        bfactor_px2=150.0,
        boundary=boundary_spectra(movie_1k.frames),
        workers=-1,
    )
    assert rmsd_px(-shifts, movie_1k.truth_px) < 0.25


def test_alignment_of_odd_width_frames(drifting_movie):
    movie = drifting_movie(3, shape=(512, 511), dose_e_a2_per_frame=1.5)
    frames_ft = rfft2_frames(movie.frames)
    shifts = align_frames(
        frames_ft, nx=511, bfactor_px2=50.0, boundary=boundary_spectra(movie.frames)
    )
    assert rmsd_px(-shifts, movie.truth_px) < 0.3


def test_edge_correction_removes_the_pull_towards_zero_shift(drifting_movie):
    """Frame edges do not move with the content: uncorrected, they shrink the recovered drift."""
    slopes = {"plain": [], "corrected": []}
    errors = {"plain": [], "corrected": []}
    for seed in range(10, 14):
        movie = drifting_movie(
            seed, shape=(384, 384), n_frames=16, dose_e_a2_per_frame=2.0, path_length_px=30.0
        )
        frames_ft = rfft2_frames(movie.frames)
        truth = movie.truth_px - movie.truth_px.mean(axis=0)
        for name, boundary in (("plain", None), ("corrected", boundary_spectra(movie.frames))):
            shifts = align_frames(frames_ft, bfactor_px2=150.0, boundary=boundary)
            error = -shifts - movie.truth_px
            # least-squares slope of the error against the displacement: 0 means no bias
            slopes[name].append(np.sum(error * truth) / np.sum(truth * truth))
            errors[name].append(rmsd_px(-shifts, movie.truth_px))
    assert np.mean(slopes["plain"]) < -0.007  # about 1 % of every shift lost to the edges
    assert abs(np.mean(slopes["corrected"])) < 0.003
    assert np.mean(errors["corrected"]) < 0.8 * np.mean(errors["plain"])


def test_smooth_component_matches_the_periodic_plus_smooth_decomposition():
    """Moisan (2011): the smooth part solves Laplacian(s) = v, v = the jumps across the edges."""
    rng = np.random.default_rng(9)
    frames = rng.poisson(3.0, size=(3, 48, 41)).astype(np.float32)
    frames += np.linspace(0, 5, 41, dtype=np.float32)  # a ramp: large jumps across x edges
    v = np.zeros_like(frames)
    v[:, 0, :] += frames[:, -1, :] - frames[:, 0, :]
    v[:, -1, :] += frames[:, 0, :] - frames[:, -1, :]
    v[:, :, 0] += frames[:, :, -1] - frames[:, :, 0]
    v[:, :, -1] += frames[:, :, 0] - frames[:, :, -1]
    cos_y = np.cos(2 * np.pi * np.fft.fftfreq(48))[:, None]
    cos_x = np.cos(2 * np.pi * np.fft.rfftfreq(41))[None, :]
    laplacian = 2 * cos_y + 2 * cos_x - 4
    laplacian[0, 0] = 1.0
    expected = scipy.fft.rfft2(v) / laplacian
    expected[:, 0, 0] = 0
    smooth = smooth_component(boundary_spectra(frames), full_shape=(48, 41))
    np.testing.assert_allclose(smooth, expected, atol=1e-3 * np.abs(expected).max())
    # on a cropped grid it is the same spectrum, sampled at the kept frequencies
    cropped = smooth_component(boundary_spectra(frames), full_shape=(48, 41), crop_shape=(24, 20))
    np.testing.assert_allclose(
        cropped, fourier_crop(expected, (24, 20)), atol=1e-3 * np.abs(expected).max()
    )
    # what is left, the periodic component, joins up smoothly across the edges
    periodic = scipy.fft.irfft2(scipy.fft.rfft2(frames) - smooth, s=(48, 41))
    jump_before = np.abs(frames[:, :, -1] - frames[:, :, 0]).mean()
    jump_after = np.abs(periodic[:, :, -1] - periodic[:, :, 0]).mean()
    assert jump_after < 0.5 * jump_before


def test_search_range_limits_the_shift():
    """A frame whose content jumps beyond max_shift_px is not followed there; within, it is."""
    rng = np.random.default_rng(4)
    truth = np.zeros((8, 2))
    truth[5] = (30.0, -4.0)  # frame 5's content jumps 30 px in x
    image = synth.specimen_image(
        rng, (448, 448), optics=OPTICS, defocus_u_a=15000, defocus_v_a=15000, azimuth_deg=0
    )
    frames = synth.movie_frames(rng, image, truth, dose_e_per_px_per_frame=1.5)[:, 32:-32, 32:-32]
    frames = frames.astype(np.float32)
    frames_ft = rfft2_frames(frames)
    limited = align_frames(frames_ft, max_shift_px=10.0)
    assert np.all(np.hypot(*limited.T) <= 10.0 + 1e-9)
    assert rmsd_px(-limited, truth) > 5.0
    followed = align_frames(
        frames_ft, max_shift_px=40.0, bfactor_px2=50.0, boundary=boundary_spectra(frames)
    )
    assert rmsd_px(-followed, truth) < 0.3


def test_apply_shifts_undoes_a_known_displacement():
    """Correction s = -d applied to image(r - d) gives back the image (sign convention)."""
    rng = np.random.default_rng(7)
    image = synth.specimen_image(
        rng, (128, 160), optics=OPTICS, defocus_u_a=12000, defocus_v_a=12000, azimuth_deg=0
    )
    # band-limit below Nyquist, where a sub-pixel shift of a sampled real image is exact
    spectrum = scipy.fft.rfft2(image)
    spectrum[np.hypot(np.fft.fftfreq(128)[:, None], np.fft.rfftfreq(160)[None, :]) > 0.45] = 0
    image = scipy.fft.irfft2(spectrum, s=image.shape).astype(np.float32)
    displacement = np.array([[0.0, 0.0], [3.25, -1.5], [-7.75, 10.125]])
    moved = synth.shifted_images(image, displacement)
    restored_ft = apply_shifts(rfft2_frames(moved), -displacement)
    restored = scipy.fft.irfft2(restored_ft, s=image.shape)
    np.testing.assert_allclose(restored, np.broadcast_to(image, restored.shape), atol=1e-4)
    # the opposite sign moves it further away
    wrong = scipy.fft.irfft2(apply_shifts(rfft2_frames(moved), displacement), s=image.shape)
    assert np.abs(wrong[1] - image).max() > 0.1


def test_fourier_crop_band_limits_an_image():
    """Cropping the spectrum of a band-limited image samples it on a coarser grid."""
    rng = np.random.default_rng(8)
    ny, nx = 128, 96
    spectrum = scipy.fft.rfft2(rng.standard_normal((ny, nx)))
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    spectrum[(np.abs(ky) >= 0.2) | (kx >= 0.2)] = 0  # band-limited below the crop's Nyquist
    image = scipy.fft.irfft2(spectrum, s=(ny, nx))
    small = scipy.fft.irfft2(fourier_crop(spectrum, (ny // 2, nx // 2)), s=(ny // 2, nx // 2))
    # the inverse transform normalises by the smaller size: values grow by the area ratio
    np.testing.assert_allclose(small / 4, image[::2, ::2], atol=1e-9)


def test_crop_shape_follows_the_bfactor():
    assert crop_shape_for_bfactor((1024, 1024), 10.0) == (1024, 1024)
    mid = crop_shape_for_bfactor((4096, 4096), 150.0)
    strong = crop_shape_for_bfactor((4096, 4096), 1500.0)
    assert strong[0] < mid[0] < 4096
    for size in (*mid, *strong):
        assert size % 2 == 0 and scipy.fft.next_fast_len(size, real=True) == size
    # the band kept reaches the frequency where exp(-B k^2 / 2) falls to 1 %
    k_cut = np.sqrt(2 * np.log(100) / 150.0)
    assert mid[0] / 2 >= k_cut * 4096


@pytest.mark.parametrize(("dy", "dx"), [(0.0, 0.0), (0.3, -0.2), (-2.0, 1.45)])
def test_subpixel_peak_of_a_parabolic_peak_is_exact(dy, dx):
    offsets = np.arange(-5, 6, dtype=float)
    window = -((offsets[:, None] - dy) ** 2) - 2.0 * (offsets[None, :] - dx) ** 2
    mask = np.ones(window.shape, dtype=bool)
    mask[[0, -1], :] = mask[:, [0, -1]] = False
    found_y, found_x = subpixel_peak(window[None], mask)
    assert found_y[0] == pytest.approx(dy, abs=1e-9)
    assert found_x[0] == pytest.approx(dx, abs=1e-9)


def test_single_frame_needs_no_alignment():
    frames_ft = rfft2_frames(np.ones((1, 64, 64), dtype=np.float32))
    assert np.array_equal(align_frames(frames_ft), np.zeros((1, 2)))


def test_bad_options_are_rejected():
    frames_ft = rfft2_frames(np.ones((3, 64, 64), dtype=np.float32))
    with pytest.raises(ValueError, match="max_iterations"):
        align_frames(frames_ft, max_iterations=0)
    with pytest.raises(ValueError, match="nx=70"):
        align_frames(frames_ft, nx=70)
