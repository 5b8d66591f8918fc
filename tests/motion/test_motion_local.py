"""Local motion: the polynomial model, patch alignment against a known field, tiled sums."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
import starfile

from emlive import synth
from emlive.acquisition import Acquisition, Optics
from emlive.io.mrc import write_mrc_atomic
from emlive.motion.deform import (
    PatchShifts,
    evaluate_model,
    fit_polynomial_model,
    local_sums,
    patch_windows,
    polynomial_terms,
    tile_size_for_model,
)
from emlive.motion.dose import sum_shifted_spectra
from emlive.motion.native import motion_correct, motion_star_blocks
from emlive.motion.types import MotionParams


def _field_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=-1))))


def test_model_is_relions_third_order_polynomial():
    """Coefficient k multiplies RELION's term k: x-coefficients 0-17, y 18-35, zero at frame 0."""
    shape = (3000, 4000)
    coefficients = np.zeros(36)
    coefficients[4] = 2.0  # x-shift: c4 z² x
    coefficients[18 + 15] = -1.0  # y-shift: c15 z x y
    x_px, y_px, z = 3000.0, 600.0, 3.0
    x, y = x_px / 4000 - 0.5, y_px / 3000 - 0.5
    value = evaluate_model(coefficients, x_px, y_px, z, shape=shape)
    assert value == pytest.approx([2.0 * z * z * x, -1.0 * z * x * y])
    assert np.all(evaluate_model(np.ones(36), np.arange(5.0), 7.0, 0.0, shape=shape) == 0.0)
    assert polynomial_terms(np.array(0.1), np.array(0.2), np.array(2.0)).shape == (18,)


def test_fit_recovers_a_polynomial_field_from_noisy_patch_tracks():
    rng = np.random.default_rng(5)
    shape = (1024, 1024)
    truth = rng.normal(0.0, 1.0, 36) * np.tile([0.3, 0.01, 2e-4] * 6, 2)
    windows = patch_windows(shape, (5, 5))
    centres = np.array([((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2) for y0, y1, x0, x1 in windows])
    frames = np.arange(30)
    clean = evaluate_model(truth, centres[:, :1], centres[:, 1:], frames[None, :], shape=shape)
    noisy = clean + rng.normal(0.0, 0.4, clean.shape) + rng.normal(0.0, 1.0, (len(centres), 1, 2))  # noise + offsets
    noisy[3] += 25.0  # one patch lost its way entirely
    fitted = fit_polynomial_model(PatchShifts(centres, noisy), shape=shape)
    gx, gy = np.meshgrid(np.linspace(0, 1023, 11), np.linspace(0, 1023, 11))
    got = evaluate_model(fitted, gx[None], gy[None], frames[:, None, None], shape=shape)
    want = evaluate_model(truth, gx[None], gy[None], frames[:, None, None], shape=shape)
    assert _field_rmsd(got, want) < 0.2  # 750 points of 0.4 px noise, one patch 25 px off


def _warp(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """image(r + field(r)) with cubic splines, periodic."""
    ny, nx = image.shape
    gy, gx = np.mgrid[:ny, :nx].astype(np.float64)
    return scipy.ndimage.map_coordinates(
        image, [gy + field[..., 1], gx + field[..., 0]], order=3, mode="grid-wrap"
    ).astype(np.float32)


def test_local_sums_undo_a_known_polynomial_deformation():
    """Frames deformed by the model's own field (plus global shifts) sum back to n × the image."""
    rng = np.random.default_rng(11)
    shape = (512, 512)
    n = 6
    image = scipy.ndimage.gaussian_filter(rng.standard_normal(shape), 2.0, mode="wrap").astype(np.float32)
    coefficients = np.zeros(36)
    coefficients[3] = 0.6  # x-shift grows with x: 0.6 z x, up to ±1.5 px at frame 5
    coefficients[18 + 12] = 1.2  # y-shift: 1.2 z y², up to 1.5 px
    global_shifts = np.cumsum(rng.normal(0.0, 2.0, (n, 2)), axis=0)
    global_shifts -= global_shifts[0]
    gy, gx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    frames = np.empty((n, *shape), np.float32)
    for t in range(n):
        correction = global_shifts[t] + evaluate_model(coefficients, gx, gy, t, shape=shape)
        frames[t] = _warp(image, correction)  # frame_t(r) = image(r + s(r, t)), so frame_t(r - s) = image(r)
    # the field varies fast (1.5 px across the frame in 6 frames): the engine's tiles would be the
    # smallest it uses; the kernel itself is checked here with tiles small enough for this field
    assert tile_size_for_model(coefficients, shape=shape, n_frames=n) == 256
    tile = 64
    total = local_sums(frames, global_shifts, coefficients, tile_px=tile)[0]
    inner = (slice(24, -24), slice(24, -24))
    error = total[inner] - n * image[inner]
    local_error = float(np.sqrt(np.mean(error**2)))
    assert local_error < 0.06 * n * float(image.std())  # 64 px tiles hold this field to ±0.2 px
    # whereas the global correction alone leaves the local deformation in
    global_only = local_sums(frames, global_shifts, np.zeros(36), tile_px=tile)[0]
    assert np.sqrt(np.mean((global_only[inner] - n * image[inner]) ** 2)) > 3 * local_error


def test_local_sums_without_local_motion_equal_the_fourier_sum():
    rng = np.random.default_rng(2)
    n, size = 5, 600
    frames = scipy.ndimage.gaussian_filter(rng.random((n, size, size), dtype=np.float32), (0, 1, 1))
    shifts = rng.normal(0.0, 6.0, (n, 2))
    shifts[0] = 0.0
    tiled = local_sums(frames, shifts, np.zeros(36), tile_px=128)[0]
    reference = scipy.fft.irfft2(
        sum_shifted_spectra(scipy.fft.rfft2(frames), shifts, full_shape=(size, size))[0], s=(size, size)
    )
    inner = (slice(40, -40), slice(40, -40))
    assert np.abs(tiled[inner] - reference[inner]).max() < 0.03 * float(reference.std())


def test_local_sums_of_stored_frames_apply_scale_and_offset_per_tile():
    """Frames kept as stored (uint8) with the gain and bad-pixel replacements applied tile by
    tile give the sums of the corrected float32 frames."""
    rng = np.random.default_rng(5)
    n, size = 4, 300
    stored = rng.poisson(3.0, (n, size, size)).astype(np.uint8)
    scale = rng.uniform(0.8, 1.2, (size, size)).astype(np.float32)
    scale[7, 9] = 0.0
    offset = np.zeros((size, size), np.float32)
    offset[7, 9] = 2.5
    shifts = np.array([[0.0, 0.0], [1.3, -2.2], [3.1, 0.4], [-0.6, 4.9]])
    model = np.zeros(36)
    model[0], model[18] = 0.05, -0.03
    got = local_sums(stored, shifts, model, tile_px=128, workers=2, scale=scale, offset=offset)
    want = local_sums(stored * scale + offset, shifts, model, tile_px=128, workers=1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))


@pytest.fixture(scope="module")
def local_movie():
    """640² × 20 frames, 1.0 e/Å²/frame, 12 px global drift and a 4 px local field."""
    rng = np.random.default_rng(2027)
    size, margin, n = 640, 32, 20
    field_shape = (size + 2 * margin, size + 2 * margin)
    image = synth.specimen_image(
        rng, field_shape, optics=Optics(pixel_size_a=1.0), defocus_u_a=15000, defocus_v_a=14000, azimuth_deg=20
    )
    drift = synth.trajectory(rng, n_frames=n, amplitude_px=12.0)
    field = synth.local_motion(rng, shape=field_shape, n_frames=n, amplitude_px=4.0)
    counts = synth.movie_frames(rng, image, drift, dose_e_per_px_per_frame=1.0, local_motion=field)
    frames = counts[:, margin : margin + size, margin : margin + size]
    return frames, drift, field, margin


def test_local_model_recovers_the_known_field(tmp_path, local_movie):
    frames, drift, field, margin = local_movie
    n, ny, nx = frames.shape
    path = tmp_path / "local.mrc"
    write_mrc_atomic(path, frames.astype(np.int8), pixel_size_a=1.0)
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    result = motion_correct(path, tmp_path / "out", acq, MotionParams(patches=(5, 5)), workers=2)

    gx, gy = np.meshgrid(np.linspace(40, nx - 40, 9), np.linspace(40, ny - 40, 9))
    t = np.arange(n)[:, None, None]
    truth = -(drift[:, None, None, :] + field.displacement(gx[None] + margin, gy[None] + margin, t))
    shifts = np.array(result.shifts_px)[:, None, None, :]
    assert result.local_model is not None
    local = shifts + evaluate_model(np.array(result.local_model), gx[None], gy[None], t, shape=(ny, nx))
    local_error = _field_rmsd(local, truth)
    assert local_error < 0.5
    assert local_error < 0.6 * _field_rmsd(shifts, truth), (local_error, _field_rmsd(shifts, truth))  # the global trajectory alone cannot describe it

    star = starfile.read(result.star_path, always_dict=True)
    assert star["general"]["rlnMotionModelVersion"] == 1
    model = star["local_motion_model"]
    assert list(model["rlnMotionModelCoeffsIdx"]) == list(range(36))
    np.testing.assert_allclose(model["rlnMotionModelCoeff"], result.local_model, rtol=1e-6, atol=1e-12)
    local_shift = star["local_shift"]
    assert list(local_shift.columns) == [
        "rlnMicrographFrameNumber",
        "rlnCoordinateX",
        "rlnCoordinateY",
        "rlnMicrographShiftX",
        "rlnMicrographShiftY",
    ]
    assert len(local_shift) == 25 * n and local_shift["rlnMicrographFrameNumber"].max() == n
    assert result.drift_plot_path is not None and result.drift_plot_path.stat().st_size > 1000


def test_global_only_writes_no_local_tables(tmp_path, local_movie):
    frames, *_ = local_movie
    path = tmp_path / "global.mrc"
    write_mrc_atomic(path, frames[:6].astype(np.int8), pixel_size_a=1.0)
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    result = motion_correct(path, tmp_path / "out", acq, MotionParams(patches=(1, 1)), workers=2)
    star = starfile.read(result.star_path, always_dict=True)
    assert result.local_model is None
    assert star["general"]["rlnMotionModelVersion"] == 0
    assert set(star) == {"general", "global_shift"}


def test_star_blocks_carry_patch_centres_in_unbinned_pixels():
    shifts = np.zeros((3, 2))
    patches = PatchShifts(np.array([[100.0, 200.0], [300.0, 200.0]]), np.arange(12.0).reshape(2, 3, 2))
    blocks = motion_star_blocks(
        movie_name="m.tif",
        shape=(400, 400),
        shifts_px=shifts,
        acq=Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0),
        bin_factor=2.0,
        local_model=np.zeros(36),
        patch_shifts=patches,
    )
    table = blocks["local_shift"]
    assert list(table["rlnMicrographFrameNumber"]) == [1, 2, 3, 1, 2, 3]
    assert list(table["rlnCoordinateX"]) == [100.0] * 3 + [300.0] * 3
    assert list(table["rlnMicrographShiftY"]) == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
