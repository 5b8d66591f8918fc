"""Amplitude spectra for CTF fitting: the averaged spectrum, background removal, radial profiles.

Pure functions of arrays and numbers (no file I/O). Conventions:

- Images and spectra are indexed ``[y, x]``.
- A *centred* spectrum of a ``tile × tile`` box has the zero frequency at ``[tile // 2, tile // 2]``
  (``numpy.fft.fftshift`` layout); pixel ``[iy, ix]`` is the frequency
  ``((ix - tile // 2), (iy - tile // 2)) / (tile * pixel_size_a)`` in 1/Å.
- Radii are in Fourier pixels of the tile (``radius_px / (tile * pixel_size_a)`` is 1/Å).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.sparse

__all__ = [
    "average_amplitude_spectrum",
    "edge_taper",
    "ice_ring_ratio",
    "radial_profile",
    "radius_grid_px",
    "remove_background",
    "smooth_profile",
]

# Width of the cosine roll-off at each edge of a micrograph, as a fraction of its size: enough
# to keep the cross its edges' discontinuity puts through the spectrum's centre out of the
# fitted band, little enough to keep nearly all the data.
_EDGE_TAPER_FRACTION = 0.03
# Values of the normalised spectrum are clipped here (in local standard deviations), so that
# isolated strong pixels (crystalline ice, detector artefacts) cannot dominate a correlation.
_CLIP_SIGMA = 4.0
# The band where the (hexagonal and cubic) ice reflections at ~3.9–3.6 Å put their power.
ICE_BAND_A = (3.9, 3.6)


def edge_taper(length: int, *, taper_fraction: float = _EDGE_TAPER_FRACTION) -> np.ndarray:
    """1D window (``length``,) float32: 1 in the middle, a cosine roll-off to ~0 at both ends.

    The roll-off spans ``taper_fraction`` of the length on each side (at least 1 px). Applied
    along both axes of a micrograph it suppresses the cross-shaped leakage of its edges.
    """
    n_taper = max(1, int(round(taper_fraction * length)))
    if 2 * n_taper > length:
        raise ValueError(f"a taper of {n_taper} px on each side does not fit in {length} px")
    ramp = 0.5 * (1.0 - np.cos(np.pi * (np.arange(n_taper) + 0.5) / n_taper))
    line = np.ones(length, dtype=np.float64)
    line[:n_taper] = ramp
    line[-n_taper:] = ramp[::-1]
    return line.astype(np.float32)


def _binning(positions: np.ndarray, n_bins: int) -> scipy.sparse.csr_array:
    """Sparse (n_bins × positions) matrix sharing each sample between the two bins nearest its
    position (in bins) with linear weights: a bin takes every sample within one bin of it,
    weighted by a triangle. Weights to bins outside 0 … n_bins - 1 are dropped."""
    lower = np.floor(positions).astype(np.int64)
    frac = positions - lower
    rows = np.concatenate([lower, lower + 1])
    weights = np.concatenate([1.0 - frac, frac])
    cols = np.tile(np.arange(positions.size), 2)
    keep = (rows >= 0) & (rows < n_bins) & (weights > 0)
    return scipy.sparse.csr_array(
        (weights[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(n_bins, positions.size)
    )


def average_amplitude_spectrum(
    image: np.ndarray,
    *,
    tile_size_px: int,
    out_size_px: int | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Amplitude spectrum ``|F|`` of ``image``, averaged onto the Fourier grid of a tile, centred.

    The whole image, mean-subtracted and edge-tapered (:func:`edge_taper` along both axes), is
    transformed once (``scipy.fft``, ``workers`` threads); the amplitude at each of its
    frequencies is shared between the nearest bins of the grid of a ``tile_size_px`` box
    (bins of ``1 / (tile_size_px · pixel)``) with bilinear weights, and each bin holds the
    weighted mean: the image's spectrum smoothed by a triangle one bin wide on each side (as a
    tile's window smooths it, without the data a tile's taper discards) and sampled on the
    box's grid. Neighbouring bins share data: their noise is correlated (a quarter of it, along
    each axis), which :func:`emlive.ctf.search.fit_significance`'s caller accounts for.
    Returns a float32 ``(n, n)`` array, ``n = out_size_px`` (even, at most the tile; default
    the tile), with the zero frequency at ``[n // 2, n // 2]`` (set to 0): the central
    ``n × n`` bins, i.e. the spectrum of a pixel ``tile_size_px / n`` times larger, sampled as
    finely as a whole tile. Only the frequencies within the ``n × n`` box are transformed along
    the second axis. Scaled so that white noise of variance σ² gives a spectrum of mean
    ≈ σ·√π/2, whatever the sizes.
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
    h = out // 2
    # the image's frequencies (signed ky; kx >= 0, the other half by symmetry) within a bin of the box
    ky = np.arange(-(ny // 2), (ny - 1) // 2 + 1)
    ky = ky[np.abs(ky) * tile_size_px < (h + 1) * ny]
    kx = np.arange(nx // 2 + 1)
    kx = kx[kx * tile_size_px < (h + 1) * nx]
    taper_y, taper_x = edge_taper(ny), edge_taper(nx)
    # the mean of a subsample is close enough: what is left of it only touches the centre
    mean = float(img[:: max(1, ny // 512), :: max(1, nx // 512)].mean(dtype=np.float64))
    tapered = np.subtract(img, np.float32(mean), dtype=np.float32)
    edge_y, edge_x = int(np.count_nonzero(taper_y < 1)) // 2, int(np.count_nonzero(taper_x < 1)) // 2
    tapered[:edge_y] *= taper_y[:edge_y, None]
    tapered[ny - edge_y :] *= taper_y[ny - edge_y :, None]
    tapered[:, :edge_x] *= taper_x[:edge_x]
    tapered[:, nx - edge_x :] *= taper_x[nx - edge_x :]
    rows_ft = scipy.fft.rfft(tapered, axis=1, workers=workers)
    del tapered
    ft = scipy.fft.fft(rows_ft[:, : kx.size], axis=0, workers=workers, overwrite_x=True)
    del rows_ft
    n_neg = int(np.count_nonzero(ky < 0))
    amp = np.empty((ky.size, kx.size), dtype=np.float32)
    np.abs(ft[ny - n_neg :], out=amp[:n_neg])
    np.abs(ft[: ky.size - n_neg], out=amp[n_neg:])
    del ft
    # bins: rows ty = -h-1 … h+1 (index ty + h + 1), columns tx = 0 … h+1
    bin_y = _binning(ky * (tile_size_px / ny) + (h + 1), 2 * h + 3)
    bin_x = _binning(kx * (tile_size_px / nx), h + 2)
    sums = np.asarray(bin_y @ amp @ bin_x.T, dtype=np.float64)
    weight_y = np.asarray(bin_y.sum(axis=1), dtype=np.float64)
    weight_x = np.asarray(bin_x.sum(axis=1), dtype=np.float64)
    weights = weight_y[:, None] * weight_x[None, :]
    # column tx = 0 also gets the mirror images (-ky, -kx) of the frequencies kx > 0 near it
    kx_zero = np.asarray(bin_y @ amp[:, 0], dtype=np.float64)
    sums[:, 0] += sums[::-1, 0] - kx_zero[::-1]
    weights[:, 0] += weight_y[::-1] * (weight_x[0] - 1.0)
    if out == tile_size_px:  # the rows ty = ±h are one frequency, the box's Nyquist
        sums[1] += sums[-2]
        weights[1] += weights[-2]
        sums[-2], weights[-2] = sums[1], weights[1]
    binned = sums[1:-1, : h + 1] / weights[1:-1, : h + 1]  # ty = -h … h, tx = 0 … h
    centred = np.empty((out, out), dtype=np.float64)
    centred[:, h:] = binned[:out, :h]
    centred[:, :h] = binned[::-1][:out, h:0:-1]  # tx < 0: |F(ky, kx)| = |F(-ky, -kx)|
    centred /= np.sqrt(float(np.sum(taper_y.astype(np.float64) ** 2) * np.sum(taper_x.astype(np.float64) ** 2)))
    centred[h, h] = 0.0
    return centred.astype(np.float32)


def radius_grid_px(tile_size_px: int) -> np.ndarray:
    """Distance (Fourier px) of each pixel of a centred ``tile × tile`` spectrum from its centre.

    The array is computed once per size and shared: it is read-only.
    """
    return _radius_grid(int(tile_size_px))


@functools.lru_cache(maxsize=4)
def _radius_grid(tile: int) -> np.ndarray:
    c = np.arange(tile, dtype=np.float64) - tile // 2
    grid = np.hypot(c[:, None], c[None, :])
    grid.flags.writeable = False
    return grid


@dataclass(frozen=True)
class _Rings:
    """The 1-px rings of a centred ``tile × tile`` grid from ``low_cut_px`` outwards, for
    :func:`radial_profile`'s linear sharing of pixels between rings without recomputing it.

    ``valid`` (flat) marks the pixels at radii ≥ the cut; ``lower``/``frac`` place every pixel
    between its rings; ``counts`` is the weight each ring gets from the valid pixels.
    """

    n_bins: int
    valid: np.ndarray
    lower: np.ndarray
    frac: np.ndarray
    lower_valid: np.ndarray
    w_hi_valid: np.ndarray
    w_lo_valid: np.ndarray
    counts: np.ndarray

    def profile(self, values_valid: np.ndarray) -> np.ndarray:
        """Ring averages of values given at the valid pixels (0 where a ring has no weight)."""
        v = np.asarray(values_valid, dtype=np.float64)
        sums = np.bincount(self.lower_valid, self.w_lo_valid * v, self.n_bins)
        sums += np.bincount(self.lower_valid + 1, self.w_hi_valid * v, self.n_bins)
        return np.divide(sums, self.counts, out=np.zeros(self.n_bins), where=self.counts > 0)

    def expand(self, profile: np.ndarray) -> np.ndarray:
        """A 1D profile (one value per integer radius) interpolated linearly onto the flat grid."""
        p = np.asarray(profile, dtype=np.float64)
        low = p[self.lower]
        return low + self.frac * (p[self.lower + 1] - low)


@functools.lru_cache(maxsize=4)  # ~15 MB each for a 512 px box
def _rings(tile: int, low_cut_px: float) -> _Rings:
    radius = _radius_grid(tile).ravel()
    n_bins = int(np.ceil(radius.max())) + 2
    lower = np.floor(radius).astype(np.intp)
    frac = radius - lower
    valid = radius >= low_cut_px
    lower_valid = lower[valid]
    w_hi = frac[valid]
    w_lo = 1.0 - w_hi
    counts = np.bincount(lower_valid, w_lo, n_bins) + np.bincount(lower_valid + 1, w_hi, n_bins)
    arrays = (valid, lower, frac, lower_valid, w_hi, w_lo, counts)
    for a in arrays:
        a.flags.writeable = False
    return _Rings(n_bins, *arrays)


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
    rings_geometry = _rings(tile, float(low_cut_px))
    n_bins = rings_geometry.n_bins
    window = np.asarray(window_px, dtype=np.float64)
    if window.size < n_bins:
        window = np.concatenate([window, np.full(n_bins - window.size, window[-1] if window.size else 3.0)])
    window = window[:n_bins]
    valid = rings_geometry.valid
    flat = spec.ravel()
    profile = rings_geometry.profile(flat[valid])
    counts = rings_geometry.counts

    def smooth(values: np.ndarray) -> np.ndarray:
        return smooth_profile(values, window, counts=counts)

    background_1d = smooth(profile)
    if rings is not None:
        model = rings_geometry.profile(np.asarray(rings, dtype=np.float64).ravel()[valid])
        model_detail = model - smooth(model)
        model_power = np.maximum(smooth(model_detail**2), 1e-12)
        for _ in range(iterations):
            amplitude = np.maximum(smooth((profile - background_1d) * model_detail) / model_power, 0.0)
            background_1d = smooth(profile - amplitude * model)
    background = rings_geometry.expand(background_1d)
    residual = flat - background
    power = rings_geometry.profile(residual[valid] ** 2)
    rms_1d = np.sqrt(np.maximum(smooth(power), 0.0))
    positive = rms_1d[counts > 0]
    positive = positive[positive > 0]
    floor = float(np.median(positive)) * 1e-6 if positive.size else 1.0
    normalised = np.zeros(flat.size, dtype=np.float64)
    normalised[valid] = residual[valid] / np.maximum(rings_geometry.expand(rms_1d)[valid], floor)
    np.clip(normalised, -_CLIP_SIGMA, _CLIP_SIGMA, out=normalised)
    return normalised.reshape(tile, tile).astype(np.float32), background.reshape(tile, tile).astype(np.float32)


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
