"""Local motion: patch alignment, RELION's polynomial deformation model, and the sums that apply
it (pure kernels).

Conventions are those of :mod:`emlive.motion.align` (frames ``[y, x]``, shifts ``(x, y)`` px,
corrections: ``aligned_t(r) = frame_t(r - s(r, t))``). The *local* correction is what is left
after the global one: ``s(r, t) = s_global(t) + s_local(r, t)``, as RELION adds them.

The model is RELION 3.1's ``ThirdOrderPolynomialModel`` (rlnMotionModelVersion 1), 18
coefficients per axis::

    s_local_x(x, y, z) = (c0 z + c1 z² + c2 z³)
                       + (c3 z + c4 z² + c5 z³) x  + (c6 z + c7 z² + c8 z³) x²
                       + (c9 z + c10 z² + c11 z³) y + (c12 z + c13 z² + c14 z³) y²
                       + (c15 z + c16 z² + c17 z³) x y

with ``x = X / width - 0.5``, ``y = Y / height - 0.5`` (``X, Y`` in unbinned movie pixels) and
``z`` the 0-based frame index; ``s_local_y`` likewise with coefficients 18–35. It is zero at
frame 0 (the reference) for every position, cubic in time, quadratic in space.

How it is found (:func:`align_patches`, :func:`fit_polynomial_model`): the globally aligned
frames, on the Fourier band the alignment uses, are cut into a grid of patches; each patch's
frames are aligned to each other with :func:`emlive.motion.align.align_frames` (Newton
refinement of the continuous cross-correlation, periodic components only), which gives a noisy
residual track per patch; the polynomial is fitted to all tracks at once by least squares, with
a free offset per patch (so no patch's frame-0 noise is taken as truth) and robust (Huber)
reweighting of patches that disagree.

How it is applied (:func:`local_sums`): the output is cut into tiles small enough that the
model's correction varies by at most ~0.1 px across one; each tile, with a margin, is cut from
every frame at the integer part of its correction, transformed in one batched FFT, shifted by
the fractional part as a phase ramp, summed plainly and with dose weights, transformed back and
blended with its neighbours by linear ramps over a narrow overlap (weights that sum to 1).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.fft

from emlive.motion.align import align_frames, apply_shifts, boundary_spectra

__all__ = [
    "N_COEFFS_PER_AXIS",
    "PatchShifts",
    "align_patches",
    "evaluate_model",
    "fit_polynomial_model",
    "globally_aligned_frames",
    "local_sums",
    "patch_windows",
    "polynomial_terms",
    "tile_size_for_model",
]

N_COEFFS_PER_AXIS = 18
# Tiles of local_sums: margin for the sub-pixel shift's wrap-around, and the blending overlap.
_TILE_MARGIN_PX = 16
_TILE_OVERLAP_PX = 16
_MIN_TILE_PX = 256
_MAX_TILE_PX = 1024
# Largest change of the correction across one tile, px (±half of it at the tile's edges).
_TILE_TOLERANCE_PX = 0.25
_HUBER_PX = 1.0


@dataclass(frozen=True)
class PatchShifts:
    """Residual corrections measured on a grid of patches.

    ``centres_px`` (P, 2) are the patches' centres (x, y) in unbinned movie pixels;
    ``shifts_px`` (P, n, 2) their residual corrections (x, y) per frame, unbinned px, frame 0
    of each patch at (0, 0).
    """

    centres_px: np.ndarray
    shifts_px: np.ndarray


def polynomial_terms(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The 18 basis functions of RELION's third-order model at normalised ``x, y`` and frame
    ``z``, in its coefficient order; shape ``broadcast(x, y, z) + (18,)``."""
    x, y, z = np.broadcast_arrays(
        np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), np.asarray(z, dtype=np.float64)
    )
    space = (np.ones_like(x), x, x * x, y, y * y, x * y)
    time = (z, z * z, z * z * z)
    return np.stack([s * t for s in space for t in time], axis=-1)


def _normalised(x_px: np.ndarray, y_px: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = shape
    return np.asarray(x_px, dtype=np.float64) / nx - 0.5, np.asarray(y_px, dtype=np.float64) / ny - 0.5


def evaluate_model(
    coefficients: np.ndarray,
    x_px: np.ndarray | float,
    y_px: np.ndarray | float,
    frame: np.ndarray | float,
    *,
    shape: tuple[int, int],
) -> np.ndarray:
    """The local correction ``s_local`` (x, y) px at positions (unbinned px) and 0-based frames.

    ``coefficients`` (36,) in RELION's order (x then y); ``shape`` the movie's (ny, nx).
    Returns ``broadcast(x, y, frame) + (2,)``.
    """
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if coefficients.shape != (2 * N_COEFFS_PER_AXIS,):
        raise ValueError(f"coefficients must be ({2 * N_COEFFS_PER_AXIS},), got {coefficients.shape}")
    x, y = _normalised(x_px, y_px, shape)
    terms = polynomial_terms(x, y, frame)
    return np.stack([terms @ coefficients[:N_COEFFS_PER_AXIS], terms @ coefficients[N_COEFFS_PER_AXIS:]], axis=-1)


def fit_polynomial_model(patches: PatchShifts, *, shape: tuple[int, int], iterations: int = 3) -> np.ndarray:
    """Least-squares fit of RELION's third-order model to patch tracks; (36,) coefficients.

    Each patch gets a free constant offset (its track is compared up to a constant), so the
    model stays zero at frame 0 without trusting any one frame. Patches whose residuals are
    large (beyond ~1 px RMS) are down-weighted (Huber weights, ``iterations`` rounds).
    """
    centres = np.asarray(patches.centres_px, dtype=np.float64)
    shifts = np.asarray(patches.shifts_px, dtype=np.float64)
    n_patches, n_frames, _ = shifts.shape
    if n_patches < 1 or n_frames < 2:
        return np.zeros(2 * N_COEFFS_PER_AXIS)
    x, y = _normalised(centres[:, 0], centres[:, 1], shape)
    z = np.arange(n_frames, dtype=np.float64)
    design = polynomial_terms(x[:, None], y[:, None], z[None, :])  # (P, n, 18)
    design -= design.mean(axis=1, keepdims=True)
    data = shifts - shifts.mean(axis=1, keepdims=True)  # (P, n, 2)
    # Keep the problem well posed with few patches or frames: scale columns, drop the dead ones.
    flat = design.reshape(-1, N_COEFFS_PER_AXIS)
    norms = np.sqrt((flat * flat).sum(axis=0))
    live = norms > 1e-9 * max(float(norms.max()), 1e-300)
    weights = np.ones(n_patches)
    solution = np.zeros((N_COEFFS_PER_AXIS, 2))
    for _ in range(max(1, iterations)):
        w = np.repeat(np.sqrt(weights), n_frames)[:, None]
        a = flat[:, live] / norms[live] * w
        b = data.reshape(-1, 2) * w
        coef, *_ = np.linalg.lstsq(a, b, rcond=None)
        solution[:] = 0.0
        solution[live] = coef / norms[live][:, None]
        residual = data - np.einsum("pnk,kd->pnd", design, solution)
        rms = np.sqrt((residual**2).sum(axis=2).mean(axis=1))
        weights = np.where(rms <= _HUBER_PX, 1.0, _HUBER_PX / np.maximum(rms, 1e-12))
    return np.concatenate([solution[:, 0], solution[:, 1]])


def patch_windows(shape: tuple[int, int], patches: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Equal, even-sized patches ``(y0, y1, x0, x1)`` tiling an image of ``shape``, row by row.

    ``patches`` is (nx, ny) patch counts (RELION's --patch_x, --patch_y); the patches are
    ``floor(size / count)`` (made even) wide and spread evenly from edge to edge.
    """
    ny, nx = shape
    px, py = patches

    def starts(n: int, count: int) -> tuple[list[int], int]:
        size = max(2, (n // count) & ~1)
        if count == 1:
            return [(n - size) // 2], size
        return [round(k * (n - size) / (count - 1)) for k in range(count)], size

    ys, hy = starts(ny, py)
    xs, hx = starts(nx, px)
    return [(y0, y0 + hy, x0, x0 + hx) for y0 in ys for x0 in xs]


def align_patches(
    aligned_frames: np.ndarray,
    *,
    patches: tuple[int, int],
    scale_xy: tuple[float, float],
    bfactor_px2: float,
    max_shift_px: float,
    tolerance_px: float = 0.01,
    max_iterations: int = 10,
    workers: int | None = None,
) -> PatchShifts:
    """Residual per-frame corrections of each patch of globally aligned frames.

    ``aligned_frames`` (n, ny', nx') float32 are the frames after the global correction, at a
    reduced size (Fourier-cropped); ``scale_xy`` the unbinned movie pixels per pixel of them
    along x and y. ``bfactor_px2`` and ``max_shift_px`` are in unbinned pixels. Each patch's
    stack is aligned by :func:`emlive.motion.align.align_frames` (periodic components only).
    Returns centres and shifts in unbinned pixels.
    """
    n = aligned_frames.shape[0]
    windows = patch_windows(aligned_frames.shape[1:], patches)
    sx, sy = scale_xy
    centres = []
    shifts = np.zeros((len(windows), n, 2))
    scale2 = sx * sy
    for y0, y1, x0, x1 in windows:
        centres.append(((x0 + (x1 - x0 - 1) / 2.0) * sx, (y0 + (y1 - y0 - 1) / 2.0) * sy))

    def align_one(p: int) -> None:
        y0, y1, x0, x1 = windows[p]
        stack = np.ascontiguousarray(aligned_frames[:, y0:y1, x0:x1])
        spectra = scipy.fft.rfft2(stack, axes=(-2, -1), workers=1)
        found = align_frames(
            spectra,
            bfactor_px2=bfactor_px2 / scale2,
            max_shift_px=max_shift_px / max(sx, sy),
            tolerance_px=tolerance_px / max(sx, sy),
            max_iterations=max_iterations,
            nx=x1 - x0,
            boundary=boundary_spectra(stack, workers=1),
            workers=1,
        )
        shifts[p, :, 0] = found[:, 0] * sx
        shifts[p, :, 1] = found[:, 1] * sy

    # patches are independent: one per thread (numpy and the transforms release the GIL)
    n_threads = max(1, min(_threads(workers), len(windows)))
    if n_threads == 1:
        for p in range(len(windows)):
            align_one(p)
    else:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            list(pool.map(align_one, range(len(windows))))
    return PatchShifts(np.asarray(centres, dtype=np.float64), shifts)


def globally_aligned_frames(
    spectra: np.ndarray,
    shifts_px: np.ndarray,
    *,
    crop_shape: tuple[int, int],
    full_shape: tuple[int, int],
    workers: int | None = None,
    batch: int = 8,
) -> np.ndarray:
    """Real frames (n, ny', nx') float32 from Fourier-cropped half-spectra, shifted by the
    global corrections ``shifts_px`` (unbinned px). Batched inverse transforms."""
    n = spectra.shape[0]
    out = np.empty((n, *crop_shape), dtype=np.float32)
    for start in range(0, n, batch):
        part = apply_shifts(
            spectra[start : start + batch], shifts_px[start : start + batch], full_shape=full_shape, crop_shape=crop_shape
        )
        out[start : start + batch] = scipy.fft.irfft2(part, s=crop_shape, axes=(-2, -1), workers=workers)
    return out


def tile_size_for_model(
    coefficients: np.ndarray, *, shape: tuple[int, int], n_frames: int, tolerance_px: float = _TILE_TOLERANCE_PX
) -> int:
    """Tile core size (px) over which the model's correction changes by at most ``tolerance_px``.

    The largest spatial gradient of the local model over the image and all frames bounds the
    change across a tile; the size is clamped to [256, 1024] px (smaller tiles cost more than
    they give: ±0.15 px at the edges of a 256 px tile for a field that changes 3 px over a
    4K frame) and rounded down to a multiple of 32.
    """
    ny, nx = shape
    gy, gx = np.meshgrid(np.linspace(0, ny, 9), np.linspace(0, nx, 9), indexing="ij")
    frames = np.arange(n_frames)[:, None, None]
    field = evaluate_model(coefficients, gx[None], gy[None], frames, shape=shape)  # (n, 9, 9, 2)
    step_x, step_y = nx / 8.0, ny / 8.0
    grad = max(
        float(np.abs(np.diff(field, axis=2)).max(initial=0.0)) / step_x,
        float(np.abs(np.diff(field, axis=1)).max(initial=0.0)) / step_y,
    )
    if grad <= 0:
        return _MAX_TILE_PX
    size = int(tolerance_px / grad) // 32 * 32
    return int(min(max(size, _MIN_TILE_PX), _MAX_TILE_PX))


def _axis_plan(n: int, tile_px: int) -> tuple[list[int], int, int]:
    """Tile bounds along one axis of ``n`` px, the window (FFT) size and the window's lead.

    Several tiles: cores of about ``tile_px``, windows of the largest core plus margins and
    overlaps on both sides (an FFT-friendly even size). One tile: the whole axis, lead 0 (the
    window is the periodic frame itself, as a whole-frame Fourier shift treats it).
    """
    pad = _TILE_MARGIN_PX + _TILE_OVERLAP_PX
    count = max(1, math.ceil(n / tile_px))
    bounds = [round(k * n / count) for k in range(count + 1)]
    if count > 1:
        core = max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        window = scipy.fft.next_fast_len(core + 2 * pad, real=True)
        while window % 2:
            window = scipy.fft.next_fast_len(window + 1, real=True)
        if window <= n:
            return bounds, window, pad
    return [0, n], n, 0


def _ramp(positions: np.ndarray, low: int, high: int, first: bool, last: bool) -> np.ndarray:
    """Blend weights of one tile along one axis (linear over ±overlap around each inner edge)."""
    o = _TILE_OVERLAP_PX
    up = np.ones(positions.size) if first else np.clip((positions - (low - o) + 0.5) / (2 * o), 0.0, 1.0)
    down = np.ones(positions.size) if last else np.clip(((high + o) - positions - 0.5) / (2 * o), 0.0, 1.0)
    return up * down


def local_sums(
    frames: np.ndarray,
    global_shifts_px: np.ndarray,
    coefficients: np.ndarray,
    *,
    tile_px: int,
    dose_filters: Callable[[tuple[int, int]], np.ndarray] | None = None,
    workers: int | None = None,
    scale: np.ndarray | None = None,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """The aligned sum (and, with ``dose_filters``, the dose-weighted sum) under the local model.

    ``frames`` (n, ny, nx) real frames of any real dtype (e.g. a movie's stored int8/uint8),
    corrected as ``frames[t] * scale + offset`` when ``scale``/``offset`` (ny, nx) float32 are
    given (the gain, bad pixels' replacements), a tile at a time; ``global_shifts_px`` (n, 2) global corrections;
    ``coefficients`` (36,) the local model (:func:`evaluate_model`) on ``(ny, nx)``;
    ``tile_px`` the tile core size (:func:`tile_size_for_model`). ``dose_filters(shape)``
    returns the per-frame weights (n, h, w // 2 + 1) on the half-spectrum grid of an (h, w)
    tile (e.g. :func:`emlive.motion.dose.dose_weight_stack`). Each tile's correction is the
    model's at the tile's centre. Returns float32 (1 or 2, ny, nx).
    """
    n, ny, nx = frames.shape
    bounds_y, win_y, pad_y = _axis_plan(ny, tile_px)
    bounds_x, win_x, pad_x = _axis_plan(nx, tile_px)
    weights = None if dose_filters is None else dose_filters((win_y, win_x))
    n_out = 1 if weights is None else 2
    if weights is not None and weights.shape != (n, win_y, win_x // 2 + 1):
        raise ValueError(f"dose filters must be ({n}, {win_y}, {win_x // 2 + 1}), got {weights.shape}")
    out = np.zeros((n_out, ny, nx), dtype=np.float32)
    global_shifts = np.asarray(global_shifts_px, dtype=np.float64)
    frame_index = np.arange(n)
    tiles = [(ty, tx) for ty in range(len(bounds_y) - 1) for tx in range(len(bounds_x) - 1)]
    n_threads = max(1, min(_threads(workers), len(tiles)))
    lock = threading.Lock()
    local = threading.local()

    def tile_sum(ty: int, tx: int) -> None:
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = np.empty((n, win_y, win_x), dtype=np.float32)
        y_lo, y_hi = bounds_y[ty], bounds_y[ty + 1]
        x_lo, x_hi = bounds_x[tx], bounds_x[tx + 1]
        total = global_shifts + evaluate_model(
            coefficients, (x_lo + x_hi) / 2.0, (y_lo + y_hi) / 2.0, frame_index, shape=(ny, nx)
        )
        whole = np.rint(total).astype(np.int64)
        out_y0, out_x0 = y_lo - pad_y, x_lo - pad_x  # output position of the window's first pixel
        fractional = np.empty((n, 2))
        for t in range(n):
            wy = out_y0 - int(whole[t, 1])
            wx = out_x0 - int(whole[t, 0])
            cy = min(max(wy, 0), ny - win_y)
            cx = min(max(wx, 0), nx - win_x)
            np.copyto(stack[t], frames[t, cy : cy + win_y, cx : cx + win_x], casting="unsafe")
            if scale is not None:
                stack[t] *= scale[cy : cy + win_y, cx : cx + win_x]
            if offset is not None:
                stack[t] += offset[cy : cy + win_y, cx : cx + win_x]
            # frame content wanted at window pixel u is at u - (total - whole) + (window offset)
            fractional[t, 0] = total[t, 0] - whole[t, 0] + (cx - wx)
            fractional[t, 1] = total[t, 1] - whole[t, 1] + (cy - wy)
        # each thread transforms its own tiles (parallel over tiles, not inside one transform)
        spectra = scipy.fft.rfft2(stack, axes=(-2, -1), workers=1)
        apply_shifts(spectra, fractional, crop_shape=(win_y, win_x), out=spectra)
        sums = np.empty((n_out,) + spectra.shape[1:], dtype=np.complex64)
        sums[0] = spectra.sum(axis=0)
        if weights is not None:
            spectra *= weights
            sums[1] = spectra.sum(axis=0)
        del spectra
        images = scipy.fft.irfft2(sums, s=(win_y, win_x), axes=(-2, -1), workers=1)
        # what this tile writes: its core plus the overlaps, inside the image
        y0, y1 = max(y_lo - _TILE_OVERLAP_PX, 0), min(y_hi + _TILE_OVERLAP_PX, ny)
        x0, x1 = max(x_lo - _TILE_OVERLAP_PX, 0), min(x_hi + _TILE_OVERLAP_PX, nx)
        blend = (
            _ramp(np.arange(y0, y1), y_lo, y_hi, ty == 0, ty == len(bounds_y) - 2)[:, None]
            * _ramp(np.arange(x0, x1), x_lo, x_hi, tx == 0, tx == len(bounds_x) - 2)[None, :]
        ).astype(np.float32)
        part = images[:, y0 - out_y0 : y1 - out_y0, x0 - out_x0 : x1 - out_x0] * blend
        with lock:  # neighbouring tiles overlap
            out[:, y0:y1, x0:x1] += part

    if n_threads == 1:
        for ty, tx in tiles:
            tile_sum(ty, tx)
    else:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            list(pool.map(lambda tile: tile_sum(*tile), tiles))
    return out


def _threads(workers: int | None) -> int:
    """The number of threads ``workers`` means (scipy.fft's convention: -1 or None = all CPUs)."""
    if workers is None or workers < 0:
        return os.cpu_count() or 1
    return max(1, workers)
