"""Synthetic specimen images and dose-fractionated movies with a known drift and a known CTF.

Conventions (as in :mod:`emlive.optics`): arrays are ``[y, x]``; displacements are ``(x, y)`` in
pixels. A trajectory gives the *content displacement* ``d_i`` of frame ``i``:
``frame_i(r) = frame_0(r - d_i)`` with ``d_0 = (0, 0)``. A motion-correction kernel returns the
correction ``s_i = -d_i`` (RELION's rlnMicrographShiftX/Y convention).

Images are built in the Fourier domain from white noise, so they are periodic and a sub-pixel
shift applied as a Fourier phase ramp is exact: the expected intensity of every frame is known
to floating-point precision, and so is the CTF (its zeros are where :func:`emlive.optics.ctf_2d`
puts them).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft

from emlive.acquisition import Optics
from emlive.optics import ctf_2d, frequency_grid
from emlive.synth.deform import LocalMotion, warped_images

# Frames shifted per batched inverse FFT: bounds peak memory to a few complex frames.
_SHIFT_BATCH = 8


def trajectory(
    rng: np.random.Generator,
    *,
    n_frames: int,
    amplitude_px: float,
) -> np.ndarray:
    """A smooth, stage-like drift: fast at first, slowing down, gently curving.

    Returns ``(n_frames, 2)`` float64 content displacements ``(x, y)`` in pixels with
    ``d_0 = (0, 0)``. The path length (the sum of the frame-to-frame step lengths) is exactly
    ``amplitude_px``. The speed decays exponentially (time constant 15–35 % of the movie) towards
    a slow creep (10–30 % of the initial speed); the direction is random and turns by up to
    ±60° over the movie.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if amplitude_px < 0:
        raise ValueError(f"amplitude_px must be non-negative, got {amplitude_px}")
    out = np.zeros((n_frames, 2), dtype=np.float64)
    n_steps = n_frames - 1
    if n_steps == 0:
        return out
    step = np.arange(n_steps, dtype=np.float64)
    decay_frames = rng.uniform(0.15, 0.35) * n_frames
    speed = np.exp(-step / decay_frames) + rng.uniform(0.1, 0.3)
    direction_rad = rng.uniform(0.0, 2.0 * np.pi) + rng.uniform(-1.0, 1.0) * (np.pi / 3.0) * (
        step / max(n_steps - 1, 1)
    )
    speed *= amplitude_px / speed.sum()
    out[1:, 0] = np.cumsum(speed * np.cos(direction_rad))
    out[1:, 1] = np.cumsum(speed * np.sin(direction_rad))
    return out


def _filtered_noise(rng: np.random.Generator, shape: tuple[int, int], transfer: np.ndarray) -> np.ndarray:
    """White Gaussian noise filtered by ``transfer`` (rfft2 grid), zero mean, float64."""
    noise_ft = scipy.fft.rfft2(rng.standard_normal(shape, dtype=np.float32))
    noise_ft *= transfer
    noise_ft[0, 0] = 0.0
    return scipy.fft.irfft2(noise_ft, s=shape)


def specimen_image(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    optics: Optics,
    defocus_u_a: float,
    defocus_v_a: float,
    azimuth_deg: float,
    phase_shift_rad: float = 0.0,
    contrast: float = 0.1,
    texture: float = 0.15,
    texture_scale_px: float = 40.0,
    bfactor_a2: float = 0.0,
) -> np.ndarray:
    """Expected intensity (mean exactly 1) of a specimen imaged with a known CTF.

    The image is ``1 + phase + texture``:

    - ``phase``: a white-noise weak-phase object filtered by :func:`emlive.optics.ctf_2d` with
      the given defocus U/V (Å, positive = underfocus), azimuth (degrees from +x) and phase
      shift (rad), times an optional envelope ``exp(-bfactor_a2 k² / 4)``. Its power spectrum is
      the CTF² (times the envelope²): the Thon rings are exact. ``contrast`` is its RMS.
    - ``texture``: a low-frequency amplitude texture (ice/carbon-like blobs about
      ``texture_scale_px`` across, not CTF-modulated) with a Gaussian spectrum of width
      ``1 / texture_scale_px`` cycles/px and RMS ``texture``. It gives frame alignment
      something to lock on to at low dose, and fades out fast enough to leave the Thon rings
      alone: with the defaults its power falls below the phase contrast's at periods shorter
      than about 15 px (``texture_scale_px / 2.6``).

    Both parts are periodic, so Fourier shifts of the image are exact. Returns float32 ``shape``.
    """
    ny, nx = shape
    ctf = ctf_2d(
        (ny, nx),
        pixel_size_a=optics.pixel_size_a,
        voltage_kv=optics.voltage_kv,
        cs_mm=optics.cs_mm,
        defocus_u_a=defocus_u_a,
        defocus_v_a=defocus_v_a,
        azimuth_deg=azimuth_deg,
        amplitude_contrast=optics.amplitude_contrast,
        phase_shift_rad=phase_shift_rad,
    )
    ky, kx = frequency_grid((ny, nx), pixel_size_a=optics.pixel_size_a)
    k2_a2 = kx * kx + ky * ky
    if bfactor_a2:
        ctf = ctf * np.exp(-0.25 * bfactor_a2 * k2_a2).astype(np.float32)
    phase = _filtered_noise(rng, (ny, nx), ctf)
    image = 1.0 + phase * (contrast / max(float(phase.std()), 1e-12))
    if texture:
        k2_px = k2_a2 * np.float32(optics.pixel_size_a**2)
        gaussian = np.exp(-0.5 * k2_px * np.float32(texture_scale_px**2))
        blobs = _filtered_noise(rng, (ny, nx), gaussian)
        image += blobs * (texture / max(float(blobs.std()), 1e-12))
    return image.astype(np.float32)


def shifted_images(image: np.ndarray, displacements_px: np.ndarray, *, workers: int | None = None) -> np.ndarray:
    """``image`` displaced by each ``(x, y)`` of ``displacements_px`` (px), by Fourier shift.

    ``out[i](r) = image(r - d_i)`` exactly for a periodic image. Returns float32
    ``(n, ny, nx)``; the transforms are batched (``scipy.fft`` with ``workers``).
    """
    displacements_px = np.asarray(displacements_px, dtype=np.float64).reshape(-1, 2)
    ny, nx = image.shape
    workers = workers or os.cpu_count() or 1
    image_ft = scipy.fft.rfft2(image.astype(np.float32), workers=workers)
    fy = np.fft.fftfreq(ny)
    fx = np.fft.rfftfreq(nx)
    out = np.empty((len(displacements_px), ny, nx), dtype=np.float32)
    buffer = np.empty((min(_SHIFT_BATCH, len(displacements_px)), *image_ft.shape), dtype=np.complex64)
    for start in range(0, len(displacements_px), _SHIFT_BATCH):
        batch = displacements_px[start : start + _SHIFT_BATCH]
        ramp_y = np.exp(-2j * np.pi * fy[None, :, None] * batch[:, 1, None, None]).astype(np.complex64)
        ramp_x = np.exp(-2j * np.pi * fx[None, None, :] * batch[:, 0, None, None]).astype(np.complex64)
        shifted_ft = np.multiply(image_ft[None], ramp_y, out=buffer[: len(batch)])
        shifted_ft *= ramp_x
        if nx % 2 == 0:
            # The Nyquist column of a real signal must stay real: use the cosine part only.
            shifted_ft[..., -1] = image_ft[None, :, -1] * ramp_y[..., 0] * np.cos(np.pi * batch[:, 0, None])
        out[start : start + len(batch)] = scipy.fft.irfft2(shifted_ft, s=(ny, nx), workers=workers)
    return out


# Above this mean, inverse-CDF search needs too many steps; numpy's sampler is used instead.
_SMALL_MEAN = 20.0
# Counts are uint16; keep the mean far enough below 65535 that no draw overflows.
_LARGEST_MEAN = 60000.0


def _poisson_inverse_cdf(uniform: np.ndarray, mean: np.ndarray, dtype: type) -> np.ndarray:
    """Smallest k with CDF(k; mean) >= uniform, by a compacting search (1-D arrays)."""
    counts = np.zeros(uniform.size, dtype=np.uint16)
    mean = mean.astype(dtype, copy=False)
    term = np.exp(-mean)  # P(k = 0)
    active = np.flatnonzero(uniform > term)
    term, cdf, mean, u = term[active], term[active], mean[active], uniform[active]
    k = 0
    while active.size:
        k += 1
        counts[active] = k
        term *= mean
        term *= dtype(1.0 / k)  # P(k) = P(k-1) * mean / k
        cdf = cdf + term
        keep = np.flatnonzero((u > cdf) & (term > 0))
        active, term, cdf, mean, u = active[keep], term[keep], cdf[keep], mean[keep], u[keep]
    return counts


def poisson_counts(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    """Poisson counts (uint16) of mean ``expected`` (float32, >= 0), any shape.

    For the low doses of counting detectors (means up to 20) this is an exact inverse-CDF
    search: one uniform per pixel, then only the pixels still above the running CDF are
    visited, about ``mean + 1`` steps on average, in float32 — faster than
    ``Generator.poisson``. The rare uniforms above 0.999 (where a float32 CDF could stall just
    below them) are searched in float64. Larger means use ``Generator.poisson``.
    """
    expected = np.asarray(expected, dtype=np.float32)
    largest = float(expected.max()) if expected.size else 0.0
    if largest > _LARGEST_MEAN:
        raise ValueError(f"a mean of {largest:g} counts per pixel does not fit uint16 counts (max {_LARGEST_MEAN:g})")
    if largest > _SMALL_MEAN:
        return rng.poisson(expected).astype(np.uint16)
    flat = expected.ravel()
    uniform = rng.random(flat.size, dtype=np.float32)
    tail = np.flatnonzero(uniform > np.float32(0.999))
    body_uniform = uniform.copy()
    body_uniform[tail] = 0.0  # searched separately below
    counts = _poisson_inverse_cdf(body_uniform, flat, np.float32)
    counts[tail] = _poisson_inverse_cdf(uniform[tail].astype(np.float64), flat[tail], np.float64)
    return counts.reshape(expected.shape)


def _poisson_stack(
    rng: np.random.Generator,
    expected: np.ndarray,
    out: np.ndarray,
    *,
    workers: int,
) -> None:
    """Fill ``out[i]`` with Poisson(``expected[i]``) counts, one child generator per frame.

    Frames are drawn in threads (numpy releases the GIL in its array operations), and each
    frame has its own generator spawned from ``rng``, so the result does not depend on
    scheduling.
    """
    generators = rng.spawn(len(expected))

    def draw(i: int) -> None:
        out[i] = poisson_counts(generators[i], np.maximum(expected[i], 0.0))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(draw, range(len(expected))))


def movie_frames(
    rng: np.random.Generator,
    image: np.ndarray,
    trajectory_px: np.ndarray,
    *,
    dose_e_per_px_per_frame: float,
    gain: np.ndarray | None = None,
    local_motion: LocalMotion | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Counted movie frames of ``image`` drifting along ``trajectory_px``.

    Frame ``i`` is ``Poisson(dose_e_per_px_per_frame * image(r - d_i) / gain)`` electrons per
    pixel, so multiplying the counts by ``gain`` restores the expected image (the convention
    of a gain reference that is multiplied into the frames). With ``local_motion`` (a field
    on ``image.shape``, see :mod:`emlive.synth.deform`) the content of frame ``i`` is
    ``image(r - d_i - D_local(r, i))`` instead, by cubic-spline interpolation. Returns uint16
    ``(n_frames, ny, nx)``.
    """
    if dose_e_per_px_per_frame <= 0:
        raise ValueError(f"dose_e_per_px_per_frame must be positive, got {dose_e_per_px_per_frame}")
    if gain is not None and gain.shape != image.shape:
        raise ValueError(f"gain shape {gain.shape} differs from image shape {image.shape}")
    workers = workers or os.cpu_count() or 1
    trajectory_px = np.asarray(trajectory_px, dtype=np.float64).reshape(-1, 2)
    scale = np.float32(dose_e_per_px_per_frame)
    out = np.empty((len(trajectory_px), *image.shape), dtype=np.uint16)
    for start in range(0, len(trajectory_px), _SHIFT_BATCH):
        batch = trajectory_px[start : start + _SHIFT_BATCH]
        if local_motion is None:
            expected = shifted_images(image, batch, workers=workers)
        else:
            expected = warped_images(image, batch, local_motion, first_frame=start, workers=workers)
        expected *= scale
        if gain is not None:
            expected /= gain.astype(np.float32)
        _poisson_stack(rng, expected, out[start : start + len(expected)], workers=workers)
    return out
