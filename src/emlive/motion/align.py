"""Global frame alignment by Fourier cross-correlation (pure kernel).

Conventions (shared by every motion kernel and engine in emlive):

- Frames are ``[y, x]`` images; their real-FFT half-spectra have shape ``(n, ny, nx // 2 + 1)``
  as ``scipy.fft.rfft2`` returns them, transformed once and reused by every later step.
- A frame's content displacement ``d_i`` means ``frame_i(r) = frame_0(r - d_i)``. The kernels
  return the *correction* ``s_i = -d_i``: the shift that, applied to frame ``i``
  (``aligned_i(r) = frame_i(r - s_i)``), brings it onto frame 0. This is what RELION writes to
  ``rlnMicrographShiftX/Y``. Shifts are ``(x, y)`` pairs in pixels of the frames given.
- A shift ``s`` is applied to a spectrum as the phase ramp ``exp(-2πi (kx·sx + ky·sy))`` with
  ``k`` in cycles per pixel.
- The B-factor (px²) is the usual amplitude envelope ``exp(-B k² / 4)`` on each image, so the
  cross-power spectrum of two images is weighted by ``exp(-B k² / 2)`` (MotionCorr's weighting).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.fft

__all__ = [
    "align_frames",
    "apply_shifts",
    "boundary_spectra",
    "crop_shape_for_bfactor",
    "fourier_crop",
    "half_spectrum_frequencies",
    "rfft2_frames",
    "smooth_component",
    "subpixel_peak",
]

log = logging.getLogger(__name__)

# The alignment runs on the band where the cross-power B-factor weight exp(-B k²/2) is above
# this floor; the rest carries under 1% of the weight of the lowest frequencies.
_WEIGHT_FLOOR = 1e-2
# Frames per batch when cross-correlation maps are computed (bounds temporary memory).
_CC_BATCH = 8
# The first search runs on half the band when that is still at least this many pixels across,
# and hands over to the whole band once its shifts change by less than this.
_COARSE_MIN_SIZE = 128
_COARSE_TOLERANCE_PX = 0.1


def rfft2_frames(frames: np.ndarray, *, workers: int | None = None) -> np.ndarray:
    """Half-spectra ``(n, ny, nx // 2 + 1)`` complex64 of a float32 stack ``(n, ny, nx)``.

    One batched ``scipy.fft.rfft2`` over the last two axes; ``workers`` as in ``scipy.fft``
    (``-1`` = all CPUs, ``None`` = scipy's current default).
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be a stack (n, ny, nx), got shape {frames.shape}")
    if frames.dtype != np.float32:
        frames = frames.astype(np.float32)
    return scipy.fft.rfft2(frames, axes=(-2, -1), workers=workers)


def fourier_crop(spectrum: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop half-spectra ``(..., ny, nx // 2 + 1)`` to those of an image of ``shape`` (ny', nx').

    Keeps the lowest frequencies (``(ny' + 1) // 2`` non-negative and ``ny' // 2`` negative
    rows, ``nx' // 2 + 1`` columns): the inverse transform at ``shape`` is the band-limited
    (binned) image. Values are not rescaled. Returns a new contiguous array.
    """
    ny_out, nx_out = shape
    ny = spectrum.shape[-2]
    nfx_out = nx_out // 2 + 1
    if ny_out > ny or nfx_out > spectrum.shape[-1]:
        raise ValueError(f"cannot crop half-spectra {spectrum.shape[-2:]} to an image of {shape}")
    out = np.empty(spectrum.shape[:-2] + (ny_out, nfx_out), dtype=spectrum.dtype)
    n_pos = (ny_out + 1) // 2
    n_neg = ny_out // 2
    out[..., :n_pos, :] = spectrum[..., :n_pos, :nfx_out]
    if n_neg:
        out[..., n_pos:, :] = spectrum[..., ny - n_neg :, :nfx_out]
    return out


def half_spectrum_frequencies(
    crop_shape: tuple[int, int], full_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (ky, kx) in cycles per *full-size* pixel of a cropped half-spectrum.

    ``crop_shape`` is the (ny', nx') image size the half-spectrum belongs to (as made by
    :func:`fourier_crop` from an image of ``full_shape``); 1D float64 arrays of length ny' and
    nx' // 2 + 1.
    """
    ny_c, nx_c = crop_shape
    ny, nx = full_shape
    ky = np.fft.fftfreq(ny_c, d=1.0 / ny_c) / ny
    kx = np.arange(nx_c // 2 + 1, dtype=np.float64) / nx
    return ky, kx


def _ramps(
    shifts_px: np.ndarray, crop_shape: tuple[int, int], full_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Separable phase ramps (n, ny', 1) and (n, 1, nfx') complex64 for shifts (n, 2) (x, y)."""
    ky, kx = half_spectrum_frequencies(crop_shape, full_shape)
    shifts = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    ry = np.exp(-2j * np.pi * shifts[:, 1:2] * ky[None, :]).astype(np.complex64)
    rx = np.exp(-2j * np.pi * shifts[:, 0:1] * kx[None, :]).astype(np.complex64)
    return ry[:, :, None], rx[:, None, :]


def apply_shifts(
    spectra: np.ndarray,
    shifts_px: np.ndarray,
    *,
    full_shape: tuple[int, int] | None = None,
    crop_shape: tuple[int, int] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Shift images given as half-spectra ``(n, ny', nfx')`` by ``shifts_px`` (n, 2) (x, y).

    The result is the spectrum of ``image_i(r - s_i)``. Shifts are in pixels of
    ``full_shape`` (the image the spectra were computed from; default: the spectra's own even
    size); ``crop_shape`` is the image size the (possibly Fourier-cropped) spectra belong to
    (default ``(ny', 2 * (nfx' - 1))``). ``out`` may be ``spectra`` itself (in place).
    """
    ny_c, nfx_c = spectra.shape[-2:]
    crop_shape = crop_shape or (ny_c, 2 * (nfx_c - 1))
    full_shape = full_shape or crop_shape
    ry, rx = _ramps(shifts_px, crop_shape, full_shape)
    out = np.multiply(spectra, ry, out=out)
    out *= rx
    return out


def boundary_spectra(
    frames: np.ndarray, *, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """1D spectra of the jumps across each frame's opposite edges, complex64:
    ``(rows (n, nx // 2 + 1), columns (n, ny))``.

    A transform treats a frame as periodic, so the jumps between its top and bottom rows and
    its left and right columns act like sharp lines that stay put while the content moves:
    they pull cross-correlation peaks towards zero shift. These jumps are all that is needed
    to remove them (:func:`smooth_component`); they cost only the frames' border pixels.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be a stack (n, ny, nx), got shape {frames.shape}")
    row_jump = frames[:, -1, :].astype(np.float32) - frames[:, 0, :]
    column_jump = frames[:, :, -1].astype(np.float32) - frames[:, :, 0]
    rows = scipy.fft.rfft(row_jump, axis=-1, workers=workers).astype(np.complex64)
    columns = scipy.fft.fft(column_jump, axis=-1, workers=workers).astype(np.complex64)
    return rows, columns


def _smooth_factors(
    crop_shape: tuple[int, int], full_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row and column indices of a (cropped) half-spectrum and the two factors of its
    smooth component: ``S = rows[:, None, ix] * along_y + columns[:, iy, None] * along_x``."""
    ny, nx = full_shape
    ny_c, nx_c = crop_shape
    iy = np.rint(np.fft.fftfreq(ny_c, d=1.0 / ny_c)).astype(np.int64) % ny  # rows in the full grid
    ix = np.arange(nx_c // 2 + 1)
    phase_y = 2.0 * np.pi * np.fft.fftfreq(ny_c, d=1.0 / ny_c) / ny
    phase_x = 2.0 * np.pi * ix / nx
    laplacian = 2.0 * np.cos(phase_y)[:, None] + 2.0 * np.cos(phase_x)[None, :] - 4.0
    laplacian[0, 0] = 1.0
    inverse = 1.0 / laplacian
    inverse[0, 0] = 0.0
    along_y = ((1.0 - np.exp(1j * phase_y))[:, None] * inverse).astype(np.complex64)
    along_x = ((1.0 - np.exp(1j * phase_x))[None, :] * inverse).astype(np.complex64)
    return iy, ix, along_y, along_x


def smooth_component(
    boundary: tuple[np.ndarray, np.ndarray],
    *,
    full_shape: tuple[int, int],
    crop_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Half-spectra of the smooth components of frames, from their :func:`boundary_spectra`.

    Moisan's periodic-plus-smooth decomposition (J. Math. Imaging Vis. 39, 2011): a frame is
    ``periodic + smooth``, where ``smooth`` solves a discrete Poisson equation driven by the
    edge jumps only. Subtracting it from a frame's spectrum leaves the periodic component, free
    of edge artifacts, with the same content. Returns (n, ny', nx' // 2 + 1) complex64 on the
    (possibly Fourier-cropped, see :func:`fourier_crop`) grid of ``crop_shape`` (default
    ``full_shape``); zero at the zero frequency.
    """
    rows, columns = boundary
    iy, ix, along_y, along_x = _smooth_factors(crop_shape or full_shape, full_shape)
    out = rows[:, None, ix] * along_y
    out += columns[:, iy, None] * along_x
    return out


def _subtract_smooth(
    spectra: np.ndarray,
    boundary: tuple[np.ndarray, np.ndarray],
    crop_shape: tuple[int, int],
    full_shape: tuple[int, int],
) -> None:
    """``spectra -= smooth_component(boundary)`` in place, in batches, without large temporaries."""
    rows, columns = boundary
    iy, ix, along_y, along_x = _smooth_factors(crop_shape, full_shape)
    buffer = np.empty((min(_CC_BATCH, len(spectra)),) + spectra.shape[1:], dtype=np.complex64)
    for start in range(0, len(spectra), _CC_BATCH):
        part = spectra[start : start + _CC_BATCH]
        buf = buffer[: len(part)]
        np.multiply(rows[start : start + _CC_BATCH, None, ix], along_y, out=buf)
        part -= buf
        np.multiply(columns[start : start + _CC_BATCH, iy, None], along_x, out=buf)
        part -= buf


def crop_shape_for_bfactor(shape: tuple[int, int], bfactor_px2: float) -> tuple[int, int]:
    """Image size whose Fourier band holds the cross-power weight ``exp(-B k²/2)`` above 1%.

    Returns even, FFT-friendly sizes no larger than ``shape``; the full shape when the band
    reaches Nyquist.
    """
    k_max = math.sqrt(2.0 * math.log(1.0 / _WEIGHT_FLOOR) / bfactor_px2)  # cycles/px
    out = []
    for n in shape:
        want = 2 * math.ceil(k_max * n)
        if want >= n:
            out.append(n)
            continue
        size = scipy.fft.next_fast_len(max(want, 32), real=True)
        while size % 2:
            size = scipy.fft.next_fast_len(size + 1, real=True)
        out.append(min(size, n))
    return out[0], out[1]


def subpixel_peak(window: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peak positions of a batch of maps ``(n, h, w)`` centred on zero offset.

    ``window[:, h // 2, w // 2]`` is offset 0; only elements where ``mask`` ((h, w) or
    (n, h, w)) is true are candidates (the mask must leave a one-element border free so that
    neighbours exist).
    Sub-pixel offsets come from a parabola through the maximum and its two neighbours along
    each axis. Returns (dy, dx), float64 arrays of length n, in map pixels from the centre.
    """
    n, h, w = window.shape
    masked = np.where(mask, window, -np.inf).reshape(n, -1)
    flat = np.argmax(masked, axis=1)
    iy, ix = np.divmod(flat, w)
    rows = np.arange(n)
    centre = window[rows, iy, ix].astype(np.float64)

    def vertex(minus: np.ndarray, plus: np.ndarray) -> np.ndarray:
        curvature = minus - 2.0 * centre + plus
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(curvature < 0, 0.5 * (minus - plus) / curvature, 0.0)
        return np.clip(delta, -0.5, 0.5)

    values = window.astype(np.float64, copy=False)
    dy = vertex(values[rows, iy - 1, ix], values[rows, iy + 1, ix])
    dx = vertex(values[rows, iy, ix - 1], values[rows, iy, ix + 1])
    return iy - h // 2 + dy, ix - w // 2 + dx


def _search_window(
    crop_shape: tuple[int, int], full_shape: tuple[int, int], max_shift_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (rows, cols) in map pixels of a zero-centred window of the CC maps.

    The window reaches ``2 * max_shift_px`` (a residual can take a frame from one edge of the
    allowed disc to the other) plus a border for the sub-pixel fit, within half the map.
    """
    ny_c, nx_c = crop_shape
    half_y = min(math.ceil(2.0 * max_shift_px * ny_c / full_shape[0]) + 1, ny_c // 2 - 1)
    half_x = min(math.ceil(2.0 * max_shift_px * nx_c / full_shape[1]) + 1, nx_c // 2 - 1)
    return np.arange(-half_y, half_y + 1), np.arange(-half_x, half_x + 1)


def _search_masks(
    off_y: np.ndarray,
    off_x: np.ndarray,
    scale: np.ndarray,
    shifts_px: np.ndarray,
    max_shift_px: float,
) -> np.ndarray:
    """Masks (n, h, w): residual offsets that keep each frame's total shift within the disc.

    ``scale`` is (x, y) full-size px per map px; the window's outer rows and columns stay
    free for the sub-pixel fit; the zero offset is always allowed.
    """
    total_y = off_y[None, :, None] * scale[1] + shifts_px[:, 1, None, None]
    total_x = off_x[None, None, :] * scale[0] + shifts_px[:, 0, None, None]
    masks = total_y**2 + total_x**2 <= max_shift_px**2
    masks[:, [0, -1], :] = False
    masks[:, :, [0, -1]] = False
    masks[:, off_y.size // 2, off_x.size // 2] = True
    return masks


def _newton_moments_matrix(kx: np.ndarray, nx: int) -> np.ndarray:
    """(2 nfx, 5) float32 matrix turning interleaved (re, im) rows of X into sums over x.

    Columns: Σ c kx Im X, Σ c Im X, Σ c kx² Re X, Σ c Re X, Σ c kx Re X, where ``c`` counts
    each half-spectrum column for itself and its Hermitian mirror (1 at kx = 0 and, for even
    widths, at Nyquist; 2 elsewhere).
    """
    nfx = kx.size
    c = np.full(nfx, 2.0)
    c[0] = 1.0
    if nx % 2 == 0:
        c[-1] = 1.0
    matrix = np.zeros((nfx, 2, 5))
    matrix[:, 1, 0] = c * kx
    matrix[:, 1, 1] = c
    matrix[:, 0, 2] = c * kx * kx
    matrix[:, 0, 3] = c
    matrix[:, 0, 4] = c * kx
    return matrix.reshape(2 * nfx, 5).astype(np.float32)


def _second_moments(power: np.ndarray, ky: np.ndarray, moments_matrix: np.ndarray) -> np.ndarray:
    """(b, 3) moments Σ c kx² P, Σ c ky² P, Σ c kx ky P of real half-spectra P (b, ny', nfx')."""
    # the real parts' rows of the matrix (even rows) act on the real power directly
    rows = (power @ moments_matrix[0::2, 2:]).astype(np.float64)
    return np.stack(
        [
            rows[:, :, 0].sum(axis=1),
            (ky * ky * rows[:, :, 1]).sum(axis=1),
            (ky * rows[:, :, 2]).sum(axis=1),
        ],
        axis=1,
    )


def _newton_steps(
    cross: np.ndarray, ky: np.ndarray, moments_matrix: np.ndarray, self_moments: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Newton steps towards the maximum of each cross-correlation, from its spectrum.

    ``cross`` (b, ny', nfx') are weighted cross-power half-spectra ``X = W S conj(F_i)`` of
    each frame with the sum S of all frames; the correlation with the sum of the *others* is
    ``X - W |F_i|²``, whose second moments ``self_moments`` (b, 3) are subtracted here. With
    ``CC(p) ∝ Re Σ_k c X(k) exp(2πi k·p)`` (k in cycles per full-size px, ``ky`` the rows'),
    the gradient and Hessian of CC at p = 0 are moments of X, so the step ``-H⁻¹ g`` finds the
    continuous peak exactly, with no sampling of the map and no fitting bias. Returns steps
    (b, 2) (x, y) in full-size px and whether each is usable (H negative definite).
    """
    b, ny_c, nfx_c = cross.shape
    rows = cross.view(np.float32).reshape(b, ny_c, 2 * nfx_c) @ moments_matrix  # (b, ny', 5)
    rows = rows.astype(np.float64)
    ky = ky[None, :]
    g_x = -2.0 * np.pi * rows[:, :, 0].sum(axis=1)
    g_y = -2.0 * np.pi * (ky * rows[:, :, 1]).sum(axis=1)
    h_xx = -4.0 * np.pi**2 * (rows[:, :, 2].sum(axis=1) - self_moments[:, 0])
    h_yy = -4.0 * np.pi**2 * ((ky * ky * rows[:, :, 3]).sum(axis=1) - self_moments[:, 1])
    h_xy = -4.0 * np.pi**2 * ((ky * rows[:, :, 4]).sum(axis=1) - self_moments[:, 2])
    det = h_xx * h_yy - h_xy * h_xy
    usable = (h_xx < 0) & (det > 0)
    safe = np.where(usable, det, 1.0)
    step_x = -(h_yy * g_x - h_xy * g_y) / safe
    step_y = -(h_xx * g_y - h_xy * g_x) / safe
    steps = np.where(usable[:, None], np.stack([step_x, step_y], axis=1), 0.0)
    return steps, usable


def align_frames(
    frames_ft: np.ndarray,
    *,
    bfactor_px2: float = 150.0,
    max_shift_px: float = 40.0,
    tolerance_px: float = 0.01,
    max_iterations: int = 10,
    nx: int | None = None,
    boundary: tuple[np.ndarray, np.ndarray] | None = None,
    full_shape: tuple[int, int] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Align frames to each other; return the per-frame correction shifts (n, 2) (x, y) px.

    With ``full_shape`` (ny, nx), ``frames_ft`` are already Fourier-cropped half-spectra (see
    :func:`fourier_crop`) of frames of that size, ``nx`` their own (cropped) width if odd, and
    they are used as they are (no further crop); shifts and ``boundary`` are then those of the
    full-size frames.

    ``frames_ft`` holds the half-spectra ``(n, ny, nx // 2 + 1)`` of the frames (see
    :func:`rfft2_frames`); ``nx`` is the frames' width when it is odd (default
    ``2 * (nx // 2 + 1 - 1)``). ``boundary`` (from :func:`boundary_spectra`) lets the
    alignment use each frame's periodic component (:func:`smooth_component`). Pass it: the
    frame edges do not move with the content, and without it they pull every shift towards
    zero (by about 1 % of the shift on 384²–512² frames; less on larger ones).

    Each frame is cross-correlated with the sum of all *other* frames, shifted by their current
    estimates (so a frame's own shot noise never correlates with itself). The cross-power
    spectrum is weighted by ``exp(-B k² / 2)`` (``B = bfactor_px2``, ``k`` in cycles/px), zero
    frequency left out, and only the band where that weight exceeds 1 % is used
    (:func:`crop_shape_for_bfactor`). Two stages:

    - *search*, on half that band when it is large: the correlation map is computed and its
      peak taken within ``max_shift_px`` of frame 0 (of the unaligned sum at first), with a
      parabola through the neighbours for the sub-pixel part; later iterations take Newton
      steps (below); until shifts change by less than 0.1 px;
    - *refinement*, on the whole band: Newton steps ``-H⁻¹ g`` from the gradient and Hessian of
      each correlation at the current estimate, which are moments of the cross-power spectrum.
      This converges on the maximum of the continuous, band-limited correlation — no map
      sampling, no fitting bias, no inverse transform. A frame whose step leaves the peak goes
      back to the map search.

    Each stage stops when no shift changes by more than ``tolerance_px`` (0.1 px for the
    search) or after ``max_iterations``. A shift is never further than ``max_shift_px`` from
    frame 0's.

    Returns float64 shifts ``s_i`` with ``s_0 = (0, 0)``, in full-size pixels: the correction
    that brings frame ``i`` onto frame 0 (``aligned_i(r) = frame_i(r - s_i)``; RELION's
    rlnMicrographShiftX/Y).
    """
    if frames_ft.ndim != 3:
        raise ValueError(f"frames_ft must be (n, ny, nx // 2 + 1), got shape {frames_ft.shape}")
    n, ny, nfx = frames_ft.shape
    nx = nx if nx is not None else 2 * (nfx - 1)
    if nx // 2 + 1 != nfx:
        raise ValueError(f"nx={nx} does not match half-spectra of width {nfx}")
    if n < 2:
        return np.zeros((n, 2))
    if not bfactor_px2 > 0 or not max_shift_px > 0 or not tolerance_px > 0 or max_iterations < 1:
        raise ValueError(
            "bfactor_px2, max_shift_px and tolerance_px must be > 0 and max_iterations >= 1, got "
            f"{bfactor_px2}, {max_shift_px}, {tolerance_px}, {max_iterations}"
        )
    if full_shape is None:
        full_shape = (ny, nx)
        crop_shape = crop_shape_for_bfactor(full_shape, bfactor_px2)
        crop = fourier_crop(frames_ft, crop_shape)
    else:
        crop_shape = (ny, nx)
        if ny > full_shape[0] or nx > full_shape[1]:
            raise ValueError(f"cropped spectra of {crop_shape} cannot belong to frames of {full_shape}")
        crop = frames_ft.copy()
    if boundary is not None:
        want = ((n, full_shape[1] // 2 + 1), (n, full_shape[0]))
        if boundary[0].shape != want[0] or boundary[1].shape != want[1]:
            raise ValueError(
                f"boundary spectra must be {want[0]} and {want[1]} for these frames, got "
                f"{boundary[0].shape} and {boundary[1].shape}"
            )
        _subtract_smooth(crop, boundary, crop_shape, full_shape)
    fine = _Band(crop, crop_shape, full_shape, bfactor_px2)
    shifts = np.zeros((n, 2))
    coarse_shape = _coarse_shape(crop_shape)
    if coarse_shape is not None:
        # find the peaks on a quarter of the band, then refine them on the whole band
        coarse = _Band(fourier_crop(crop, coarse_shape), coarse_shape, full_shape, bfactor_px2)
        shifts = _refine(
            coarse,
            shifts,
            search_first=True,
            max_shift_px=max_shift_px,
            tolerance_px=max(tolerance_px, _COARSE_TOLERANCE_PX),
            max_iterations=max_iterations,
            workers=workers,
        )
        del coarse
    shifts = _refine(
        fine,
        shifts,
        search_first=coarse_shape is None,
        max_shift_px=max_shift_px,
        tolerance_px=tolerance_px,
        max_iterations=max_iterations,
        workers=workers,
    )
    shifts -= shifts[0]
    return shifts


def _coarse_shape(crop_shape: tuple[int, int]) -> tuple[int, int] | None:
    """Half the band (a quarter of the pixels) for the first search, or None if small already."""
    if min(crop_shape) < 2 * _COARSE_MIN_SIZE:
        return None
    out = []
    for n in crop_shape:
        size = scipy.fft.next_fast_len(n // 2, real=True)
        while size % 2:
            size = scipy.fft.next_fast_len(size + 1, real=True)
        out.append(min(size, n))
    return out[0], out[1]


class _Band:
    """The spectra of all frames on one Fourier band, and what correlating them needs."""

    def __init__(
        self,
        spectra: np.ndarray,
        crop_shape: tuple[int, int],
        full_shape: tuple[int, int],
        bfactor_px2: float,
    ) -> None:
        self.spectra = spectra
        self.crop_shape = crop_shape
        self.full_shape = full_shape
        ny_c, nx_c = crop_shape
        self.scale = np.array([full_shape[1] / nx_c, full_shape[0] / ny_c])  # full px per map px
        self.ky, kx = half_spectrum_frequencies(crop_shape, full_shape)
        k2 = self.ky[:, None] ** 2 + kx[None, :] ** 2
        self.weight = np.exp(-0.5 * bfactor_px2 * k2).astype(np.float32)
        self.weight[0, 0] = 0.0
        self.moments_matrix = _newton_moments_matrix(kx, nx_c)
        # Each frame's correlation with itself, W |F_i|^2, is what "the sum of the others"
        # leaves out. It is real and even, so it does not move the gradient; its (shift-
        # invariant) Hessian moments are kept per frame: (n, 3) = Σ c k k^T W |F_i|^2.
        self.self_moments = np.empty((len(spectra), 3))
        for start in range(0, len(spectra), _CC_BATCH):
            power = self.self_power(start, start + _CC_BATCH)
            self.self_moments[start : start + _CC_BATCH] = _second_moments(
                power, self.ky, self.moments_matrix
            )

    def self_power(self, start: int, stop: int, spectra: np.ndarray | None = None) -> np.ndarray:
        """``W |F_i|^2`` for frames start..stop-1 (of ``spectra``, default the band's own)."""
        part = (self.spectra if spectra is None else spectra)[start:stop]
        power = np.abs(part)
        power *= power
        power *= self.weight
        return power



def _refine(
    band: _Band,
    shifts: np.ndarray,
    *,
    search_first: bool,
    max_shift_px: float,
    tolerance_px: float,
    max_iterations: int,
    workers: int | None,
) -> np.ndarray:
    """Iterate shift estimates on one band; see :func:`align_frames`. Returns new shifts."""
    n = len(band.spectra)
    crop_shape = band.crop_shape
    off_y, off_x = _search_window(crop_shape, band.full_shape, max_shift_px)
    rows = (off_y % crop_shape[0])[:, None]
    cols = (off_x % crop_shape[1])[None, :]
    # a Newton step longer than half a map pixel means the peak is not bracketed yet
    newton_limit_px = 0.5 * float(band.scale.max())
    shifts = shifts.copy()
    shifted = np.empty_like(band.spectra)
    cross = np.empty((min(_CC_BATCH, n),) + band.spectra.shape[1:], dtype=np.complex64)
    for iteration in range(1, max_iterations + 1):
        apply_shifts(
            band.spectra, shifts, full_shape=band.full_shape, crop_shape=crop_shape, out=shifted
        )
        weighted_total = shifted.sum(axis=0)
        weighted_total *= band.weight
        residual = np.empty((n, 2))
        masks = None
        for start in range(0, n, _CC_BATCH):
            stop = min(start + _CC_BATCH, n)
            xc = cross[: stop - start]
            np.conjugate(shifted[start:stop], out=xc)
            xc *= weighted_total  # W total conj(F_i); minus W |F_i|^2 it is W others conj(F_i)
            if iteration > 1 or not search_first:
                steps, usable = _newton_steps(
                    xc, band.ky, band.moments_matrix, band.self_moments[start:stop]
                )
                usable &= np.hypot(steps[:, 0], steps[:, 1]) <= newton_limit_px
                if usable.all():
                    residual[start:stop] = steps
                    continue
            # search the map: the first time, and whenever a peak is not bracketed yet
            xc.real -= band.self_power(start, stop, shifted)
            if masks is None:
                masks = _search_masks(off_y, off_x, band.scale, shifts, max_shift_px)
            cc = scipy.fft.irfft2(xc, s=crop_shape, axes=(-2, -1), workers=workers)
            dy, dx = subpixel_peak(cc[:, rows, cols], masks[start:stop])
            residual[start:stop, 0] = dx * band.scale[0]
            residual[start:stop, 1] = dy * band.scale[1]
        # the sum of the others lies at +p from frame i: shifting frame i by +p aligns it
        update = residual - residual[0]
        new_shifts = shifts + update
        radius = np.hypot(new_shifts[:, 0], new_shifts[:, 1])
        outside = radius > max_shift_px  # a sub-pixel step may cross the edge of the disc
        new_shifts[outside] *= (max_shift_px / radius[outside])[:, None]
        change = float(np.max(np.hypot(*(new_shifts - shifts).T)))
        shifts = new_shifts
        log.debug(
            "alignment on %dx%d, iteration %d: largest shift change %.4f px",
            crop_shape[1],
            crop_shape[0],
            iteration,
            change,
        )
        if change < tolerance_px:
            break
    return shifts
