"""Amplitude spectra for CTF fitting: tile averaging, background removal, radial profiles.

Pure functions of arrays and numbers (no file I/O). Conventions:

- Images and spectra are indexed ``[y, x]``.
- A *centred* spectrum of a ``tile × tile`` box has the zero frequency at ``[tile // 2, tile // 2]``
  (``numpy.fft.fftshift`` layout); pixel ``[iy, ix]`` is the frequency
  ``((ix - tile // 2), (iy - tile // 2)) / (tile * pixel_size_a)`` in 1/Å.
- Radii are in Fourier pixels of the tile (``radius_px / (tile * pixel_size_a)`` is 1/Å).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = [
    "average_amplitude_spectrum",
    "edge_taper",
    "ice_ring_ratio",
    "radial_profile",
    "radius_grid_px",
    "remove_background",
    "smooth_profile",
    "tile_starts",
]

# Tiles transformed per FFT call: bounds the transient memory (32 tiles of 720² px: ~65 MB
# of float32 tiles and as much of complex64 transforms) while keeping each call a batch.
_TILES_PER_BATCH = 32
# Values of the normalised spectrum are clipped here (in local standard deviations), so that
# isolated strong pixels (crystalline ice, detector artefacts) cannot dominate a correlation.
_CLIP_SIGMA = 4.0
# The band where the (hexagonal and cubic) ice reflections at ~3.9–3.6 Å put their power.
ICE_BAND_A = (3.9, 3.6)


def tile_starts(length: int, tile_size_px: int) -> np.ndarray:
    """Start indices of tiles of ``tile_size_px`` along an axis of ``length`` px, ~50 % overlap.

    The first tile starts at 0, the last ends at ``length``; the steps between are as equal
    as integers allow and never larger than half a tile.
    """
    if tile_size_px > length:
        raise ValueError(f"tile of {tile_size_px} px does not fit in an axis of {length} px")
    n = int(np.ceil((length - tile_size_px) / (tile_size_px / 2))) + 1
    return np.round(np.linspace(0, length - tile_size_px, n)).astype(np.int64)


def edge_taper(tile_size_px: int, *, taper_fraction: float = 0.125) -> np.ndarray:
    """Separable 2D window (tile, tile): 1 in the middle, a cosine roll-off to ~0 at the edges.

    The roll-off spans ``taper_fraction`` of the tile on each side. A mild taper keeps the
    spectral resolution of the tile (Thon rings at high defocus are only a few Fourier pixels
    apart) while suppressing the cross-shaped leakage of the tile edges.
    """
    n_taper = max(1, int(round(taper_fraction * tile_size_px)))
    ramp = 0.5 * (1.0 - np.cos(np.pi * (np.arange(n_taper) + 0.5) / n_taper))
    line = np.ones(tile_size_px, dtype=np.float64)
    line[:n_taper] = ramp
    line[-n_taper:] = ramp[::-1]
    return np.outer(line, line).astype(np.float32)


def average_amplitude_spectrum(
    image: np.ndarray,
    *,
    tile_size_px: int,
    out_size_px: int | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Average amplitude spectrum ``|F|`` of overlapping tiles of ``image``, centred.

    Tiles of ``tile_size_px`` (even) overlap by ~50 %; each is mean-subtracted and multiplied
    by :func:`edge_taper` before one batched ``scipy.fft.rfft2`` (``workers`` threads) per group
    of tiles. Returns a float32 ``(n, n)`` array, ``n = out_size_px`` (even, at most the tile;
    default the tile), with the zero frequency at ``[n // 2, n // 2]`` (set to 0): the central
    ``n × n`` frequencies of the tile's spectrum, i.e. the spectrum of a tile binned to a pixel
    ``tile_size_px / n`` times larger, sampled as finely as the whole tile allows. Scaled so
    that white noise of variance σ² gives a spectrum of mean ≈ σ·√π/2, whatever the sizes.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {img.shape}")
    if tile_size_px < 8 or tile_size_px % 2:
        raise ValueError(f"tile_size_px must be even and >= 8, got {tile_size_px}")
    out = tile_size_px if out_size_px is None else out_size_px
    if out < 8 or out % 2 or out > tile_size_px:
        raise ValueError(f"out_size_px must be even, >= 8 and at most the tile ({tile_size_px}), got {out}")
    ny, nx = img.shape
    if min(ny, nx) < tile_size_px:
        raise ValueError(f"image of {ny}×{nx} px is smaller than a tile of {tile_size_px} px")
    ys = tile_starts(ny, tile_size_px)
    xs = tile_starts(nx, tile_size_px)
    corners = [(y, x) for y in ys for x in xs]
    window = edge_taper(tile_size_px)
    half = np.zeros((tile_size_px, tile_size_px // 2 + 1), dtype=np.float64)
    for first in range(0, len(corners), _TILES_PER_BATCH):
        batch = np.stack(
            [img[y : y + tile_size_px, x : x + tile_size_px] for y, x in corners[first : first + _TILES_PER_BATCH]]
        ).astype(np.float32)
        batch -= batch.mean(axis=(1, 2), keepdims=True)
        batch *= window
        ft = scipy.fft.rfft2(batch, workers=workers)
        half += np.abs(ft).sum(axis=0)
    half /= len(corners) * np.sqrt(np.sum(window.astype(np.float64) ** 2))
    # rfft2 holds kx >= 0; |F(-k)| = |F(k)| gives the other half.
    full = np.empty((tile_size_px, tile_size_px), dtype=np.float64)
    nxh = tile_size_px // 2 + 1
    full[:, :nxh] = half
    # column kx = -j (index tile - j) equals the conjugate-symmetric point (-ky, +j)
    j = np.arange(1, tile_size_px // 2)
    full[:, tile_size_px - j] = half[(-np.arange(tile_size_px)) % tile_size_px][:, j]
    full[0, 0] = 0.0
    centred = np.fft.fftshift(full)
    first = tile_size_px // 2 - out // 2
    return centred[first : first + out, first : first + out].astype(np.float32)


def radius_grid_px(tile_size_px: int) -> np.ndarray:
    """Distance (Fourier px) of each pixel of a centred ``tile × tile`` spectrum from its centre."""
    c = np.arange(tile_size_px, dtype=np.float64) - tile_size_px // 2
    return np.hypot(c[:, None], c[None, :])


def radial_profile(
    values: np.ndarray,
    radius_px: np.ndarray,
    *,
    n_bins: int,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Average of ``values`` in rings of integer radius 0 … ``n_bins - 1`` px.

    Each value is shared between its two nearest integer radii with linear weights (no
    aliasing from rounding). Returns ``(profile, counts)``; bins that received no weight hold 0.
    ``values``, ``radius_px`` (and ``weights``) have any, matching, shapes.
    """
    r = np.asarray(radius_px, dtype=np.float64).ravel()
    v = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    keep = r < n_bins - 1
    r, v, w = r[keep], v[keep], w[keep]
    lo = np.floor(r).astype(np.int64)
    frac = r - lo
    w_hi = w * frac
    w_lo = w - w_hi
    counts = np.bincount(lo, w_lo, n_bins) + np.bincount(lo + 1, w_hi, n_bins)
    sums = np.bincount(lo, w_lo * v, n_bins) + np.bincount(lo + 1, w_hi * v, n_bins)
    profile = np.divide(sums, counts, out=np.zeros(n_bins), where=counts > 0)
    return profile, counts


def smooth_profile(profile: np.ndarray, window_px: np.ndarray, *, counts: np.ndarray | None = None) -> np.ndarray:
    """Triangle-weighted running mean of a 1D profile with a width that varies along it.

    ``window_px[i]`` is the half-width of the triangle at bin ``i`` (two passes of a boxcar of
    that full width); ``counts`` weights the bins (pixels per ring), so sparse rings near the
    centre count less. Windows are clipped at the ends of the profile.
    """
    p = np.asarray(profile, dtype=np.float64)
    w = np.ones_like(p) if counts is None else np.asarray(counts, dtype=np.float64)
    half = np.maximum(np.asarray(window_px, dtype=np.float64), 0.5) / 2.0
    idx = np.arange(p.size, dtype=np.float64)
    lo = np.clip(np.round(idx - half).astype(np.int64), 0, p.size - 1)
    hi = np.clip(np.round(idx + half).astype(np.int64), 0, p.size - 1)

    def box(x: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cx = np.concatenate([[0.0], np.cumsum(x * wt)])
        cw = np.concatenate([[0.0], np.cumsum(wt)])
        s = cx[hi + 1] - cx[lo]
        n = cw[hi + 1] - cw[lo]
        return np.divide(s, n, out=np.zeros_like(s), where=n > 0), n

    once, n_once = box(p, w)
    twice, _ = box(once, n_once)
    return twice


def remove_background(
    spectrum: np.ndarray,
    *,
    window_px: np.ndarray,
    low_cut_px: float,
    rings: np.ndarray | None = None,
    iterations: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Background-subtracted, locally normalised spectrum, and the background.

    The background is the radial profile of ``spectrum`` smoothed by :func:`smooth_profile`
    with ``window_px`` (one value per integer radius from 0; make it the Thon ring spacing, so
    that the smoothing nulls the rings and keeps the background). Given ``rings`` — a model of
    the Thon rings on the same grid, e.g. the CTF² of a first fit — the rings are taken out of
    the profile before smoothing, their local amplitude estimated by regression against the
    model (``iterations`` times): near the centre, where a ring is as wide as the smoothing
    window, this keeps the background from following it.

    The background is subtracted, and the remainder is divided by its smoothed radial RMS, so
    that every resolution carries the same noise in a correlation (values clipped at ±4). Radii
    below ``low_cut_px`` — the intense centre that is never fitted — are left out of the
    profiles and set to 0. Returns float32 ``(normalised, background)``, both centred like
    ``spectrum``.
    """
    spec = np.asarray(spectrum, dtype=np.float64)
    if spec.ndim != 2 or spec.shape[0] != spec.shape[1]:
        raise ValueError(f"expected a square centred spectrum, got shape {spec.shape}")
    tile = spec.shape[0]
    radius = radius_grid_px(tile)
    n_bins = int(np.ceil(radius.max())) + 2
    window = np.asarray(window_px, dtype=np.float64)
    if window.size < n_bins:
        window = np.concatenate([window, np.full(n_bins - window.size, window[-1] if window.size else 3.0)])
    window = window[:n_bins]
    valid = radius >= low_cut_px
    profile, counts = radial_profile(spec[valid], radius[valid], n_bins=n_bins)

    def smooth(values: np.ndarray) -> np.ndarray:
        return smooth_profile(values, window, counts=counts)

    background_1d = smooth(profile)
    if rings is not None:
        model, _ = radial_profile(np.asarray(rings, dtype=np.float64)[valid], radius[valid], n_bins=n_bins)
        model_detail = model - smooth(model)
        model_power = np.maximum(smooth(model_detail**2), 1e-12)
        for _ in range(iterations):
            amplitude = np.maximum(smooth((profile - background_1d) * model_detail) / model_power, 0.0)
            background_1d = smooth(profile - amplitude * model)
    background = np.interp(radius, np.arange(n_bins), background_1d)
    residual = spec - background
    power, _ = radial_profile(residual[valid] ** 2, radius[valid], n_bins=n_bins)
    rms_1d = np.sqrt(np.maximum(smooth(power), 0.0))
    rms = np.interp(radius, np.arange(n_bins), rms_1d)
    positive = rms[valid] > 0
    floor = float(np.median(rms[valid][positive])) * 1e-6 if positive.any() else 1.0
    normalised = np.where(valid, residual / np.maximum(rms, floor), 0.0)
    np.clip(normalised, -_CLIP_SIGMA, _CLIP_SIGMA, out=normalised)
    return normalised.astype(np.float32), background.astype(np.float32)


def ice_ring_ratio(spectrum: np.ndarray, *, pixel_size_a: float) -> float | None:
    """Power in the ice band (:data:`ICE_BAND_A`, 3.9–3.6 Å) relative to the bands beside it.

    ``spectrum`` is a centred amplitude spectrum (as from :func:`average_amplitude_spectrum`)
    of pixels of ``pixel_size_a`` Å. The mean power (amplitude²) in the ice band is divided by
    the mean of the mean powers of the two flanking bands of the same width in spatial
    frequency (4.26–3.9 Å and 3.6–3.34 Å), i.e. by the smooth fall-off interpolated across the
    band. About 1 for vitreous ice and for a spectrum of noise; above 1 where crystalline (or
    thick, partly crystalline) ice scatters into its rings, which is what curation looks for.
    Each band is wider than a Thon ring at every usual defocus, so the rings average out.
    Returns ``None`` where the outer flank lies beyond Nyquist (pixels above ~1.67 Å).
    """
    spec = np.asarray(spectrum, dtype=np.float64)
    if spec.ndim != 2 or spec.shape[0] != spec.shape[1]:
        raise ValueError(f"expected a square centred spectrum, got shape {spec.shape}")
    tile = spec.shape[0]
    k_lo, k_hi = 1.0 / ICE_BAND_A[0], 1.0 / ICE_BAND_A[1]
    width = k_hi - k_lo
    if k_hi + width >= 0.5 / pixel_size_a * (1.0 - 2.0 / tile):
        return None
    k = radius_grid_px(tile) / (tile * pixel_size_a)
    power = spec * spec

    def band_mean(lo: float, hi: float) -> float:
        inside = (k >= lo) & (k < hi)
        return float(power[inside].mean()) if inside.any() else 0.0

    flanks = 0.5 * (band_mean(k_lo - width, k_lo) + band_mean(k_hi, k_hi + width))
    if not flanks > 0:
        return None
    return band_mean(k_lo, k_hi) / flanks
