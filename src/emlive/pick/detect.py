"""Template-free particle detection: pure kernels (arrays in, arrays and dataclasses out).

The native picker in five steps, each a function here:

1. :func:`working_image` — the micrograph Fourier-cropped to a working pixel size of about a
   sixteenth of the particle diameter (an ideal low-pass), its tilt (a plane) set aside.
2. :func:`exclusion_mask` — where not to pick: a margin along the edges, contamination (very
   dark blobs much bigger than a particle) and a carbon film (a region whose large-scale mean
   differs from the ice by a sharp step, not a smooth ramp as an ice gradient);
   :func:`fill_dark` evens the carbon and contamination out, and :func:`phase_flip` flips
   the phases where the CTF is positive (when the CTF is known).
3. :func:`score_map` — a matched filter for a dark sphere of the particle's diameter (smooth
   backgrounds and ice gradients removed by its zero mean), in units of its own noise: the
   noise of the working image is measured per tile in a high-frequency band (median over the
   tiles not excluded) and propagated through the filter, so a score is a z-score (≈ a
   normal deviate in empty ice).
4. :func:`find_peaks` — local maxima above a threshold, greedy non-maximum suppression at a
   minimum distance, refined to sub-pixel.
5. :func:`automatic_threshold` — the threshold from the micrograph's own statistics: strict
   enough that its noise alone would give no pick (:func:`noise_threshold`), lower where it
   holds many more peaks than its noise explains (where the F1 score its peak counts and the
   expected noise count predict is highest).

:func:`pick_micrograph` chains them. Conventions: arrays ``[y, x]`` (row 0 first as stored);
coordinates ``(x, y)`` in pixels of the given array (x = column); defocus in Å, positive
underfocus; azimuth in degrees from +x (as :mod:`emlive.optics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.ndimage
from scipy.spatial import cKDTree

from emlive.optics import ctf_chi

__all__ = [
    "DEFAULT_MIN_DISTANCE_D",
    "DEFAULT_EXPECTED_FALSE_PICKS",
    "MIN_Z_THRESHOLD",
    "CtfModel",
    "ExclusionMask",
    "PickError",
    "Picks",
    "ScoreMap",
    "WorkingImage",
    "automatic_threshold",
    "exclusion_mask",
    "expected_noise_peaks",
    "fill_dark",
    "find_peaks",
    "noise_threshold",
    "phase_flip",
    "pick_micrograph",
    "score_map",
    "working_image",
]

# Working pixel size as a fraction of the particle diameter.
WORKING_PIXELS_PER_DIAMETER = 16.0
# Default minimum distance between picks, in particle diameters.
DEFAULT_MIN_DISTANCE_D = 0.75
# Noise peaks the strict threshold lets through per micrograph (on average, in pure noise).
DEFAULT_EXPECTED_FALSE_PICKS = 0.05
# Lowest automatic threshold, in noise standard deviations of the score map.
MIN_Z_THRESHOLD = 2.5
# A micrograph with less than this fraction left to pick in is refused (PickError).
MAX_MASKED_FRACTION = 0.9


class PickError(ValueError):
    """A micrograph cannot be picked (e.g. almost all of it is carbon or contamination)."""


@dataclass(frozen=True)
class CtfModel:
    """The CTF needed for phase flipping: defocus (Å, positive underfocus), azimuth (° from +x)."""

    defocus_u_a: float
    defocus_v_a: float
    azimuth_deg: float
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    phase_shift_rad: float = 0.0


@dataclass(frozen=True, eq=False)
class WorkingImage:
    """A micrograph low-passed and resampled to ``pixel_size_a`` (``image`` float32 ``[y, x]``).

    ``background`` is the plane fitted to the micrograph (zero mean), which ``image`` holds and
    ``image_ft`` (the ``rfft2`` of ``image - background``: what the picker filters) does not.

    ``scale_xy`` and ``offset_px`` convert working pixels to input pixels:
    ``x_in = x_work * scale_xy[0] + offset_px`` (likewise y). The mean of ``image`` is the input's
    mean (counts per input pixel).
    """

    image: np.ndarray
    background: np.ndarray
    image_ft: np.ndarray
    pixel_size_a: float
    scale_xy: tuple[float, float]
    offset_px: float
    phase_flipped: bool

    def to_input_px(self, xy: np.ndarray) -> np.ndarray:
        """``(n, 2)`` working-pixel ``(x, y)`` to input pixels."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return xy * np.asarray(self.scale_xy) + self.offset_px


@dataclass(frozen=True, eq=False)
class ExclusionMask:
    """Where picks are not allowed, on the working grid (bool ``[y, x]``, True = excluded)."""

    edge: np.ndarray
    carbon: np.ndarray
    contamination: np.ndarray
    dark: np.ndarray
    """The carbon and contamination themselves, before widening (what :func:`fill_dark` evens out)."""

    @property
    def excluded(self) -> np.ndarray:
        return self.edge | self.carbon | self.contamination

    @property
    def masked_fraction(self) -> float:
        return float(self.excluded.mean())


@dataclass(frozen=True, eq=False)
class ScoreMap:
    """Matched-filter score (float32 ``[y, x]``, higher = more particle-like) in noise σ units.

    ``noise_sigma`` is the score's noise σ before normalisation (image units);
    ``roughness_per_px2`` the variance of the noise's derivative along one axis (1/px², for a
    unit-variance field), which with the area sets how many noise peaks to expect
    (see :func:`automatic_threshold`).
    """

    z: np.ndarray
    noise_sigma: float
    roughness_per_px2: float


@dataclass(frozen=True, eq=False)
class Picks:
    """Particles found in one micrograph.

    ``xy_px`` ``(n, 2)`` float64 ``(x, y)`` in pixels of the input image (x = column, y = row);
    ``scores`` ``(n,)`` their z-scores, in decreasing order; ``threshold`` the score they had
    to reach; ``masked_fraction`` the fraction of the image excluded from picking;
    ``working`` and ``mask`` the working image (low-passed, as it was: not flipped, carbon
    not evened out) and the exclusion mask, for pictures.
    """

    xy_px: np.ndarray
    scores: np.ndarray
    threshold: float
    masked_fraction: float
    working: WorkingImage
    mask: ExclusionMask


def _half_grid_weights(shape: tuple[int, int]) -> np.ndarray:
    """Multiplicity of each rfft2 column in the full spectrum (1 or 2), shape (1, nx//2+1)."""
    nx = shape[1]
    w = np.full(nx // 2 + 1, 2.0)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    return w[None, :]


def _full_mean(values: np.ndarray, shape: tuple[int, int]) -> float:
    """Mean over the full ``fft2`` grid of a quantity given on the rfft2 half grid."""
    return float((values * _half_grid_weights(shape)).sum() / (shape[0] * shape[1]))


def _box_average(image: np.ndarray, box: int, box_x: int | None = None) -> np.ndarray:
    """Mean over ``box``×``box_x`` blocks (rows and columns beyond a whole block dropped).

    Sums of strided slices, separable: several times faster than a reshaped ``mean``."""
    bx_size = box if box_x is None else box_x
    by, bx = image.shape[0] // box, image.shape[1] // bx_size
    rows = image[0 : by * box : box, : bx * bx_size].astype(np.float32)
    for dy in range(1, box):
        rows += image[dy : by * box : box, : bx * bx_size]
    out = rows[:, 0::bx_size].copy()
    for dx in range(1, bx_size):
        out += rows[:, dx::bx_size]
    out *= np.float32(1.0 / (box * bx_size))
    return out


def _ice_plane(image: np.ndarray, *, blocks: int = 32, keep_above: float = 0.9) -> tuple[float, float]:
    """Slopes (x, y) per pixel of the plane fitted to the bright part of ``image``.

    Fitted to block means at least ``keep_above`` times the 90th percentile of them: carbon
    and contamination (darker) do not tilt it, and a linear ice gradient, being a plane, is
    fitted exactly by any part of it. Non-finite pixels are replaced by the median first.
    """
    ny, nx = image.shape
    by, bx = max(1, ny // blocks), max(1, nx // blocks)
    means = _box_average(image, by, bx)
    gy, gx = np.mgrid[: means.shape[0], : means.shape[1]]
    centre_x = (gx + 0.5) * bx - 0.5 - 0.5 * (nx - 1)
    centre_y = (gy + 0.5) * by - 0.5 - 0.5 * (ny - 1)
    reference = np.percentile(means, 90)
    keep = means >= keep_above * reference
    if reference <= 0 or keep.sum() < 8:  # not counts (a normalised image): fit it all
        keep = np.ones(means.shape, dtype=bool)
    design = np.column_stack([np.ones(keep.sum()), centre_x[keep], centre_y[keep]])
    coef, *_ = np.linalg.lstsq(design, means[keep].astype(np.float64), rcond=None)
    return float(coef[1]), float(coef[2])


def working_image(
    image: np.ndarray,
    *,
    pixel_size_a: float,
    working_pixel_size_a: float,
    workers: int = 2,
) -> WorkingImage:
    """Fourier-crop ``image`` to about ``working_pixel_size_a`` (an ideal low-pass).

    The crop keeps every frequency below the new Nyquist (no aliasing). The image is not made
    finer than it is (``working_pixel_size_a`` below ``pixel_size_a`` keeps the input's size).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 8:
        raise ValueError(f"a micrograph must be a 2D image of at least 8×8 pixels, got shape {img.shape}")
    finite = np.isfinite(img)
    if not finite.all():
        if not finite.any():
            raise PickError("the micrograph holds no finite pixel values")
        img = np.where(finite, img, np.float32(np.median(img[finite])))
    factor = max(1.0, working_pixel_size_a / pixel_size_a)
    # Box-average by an integer factor first (a third of the way): a smaller FFT, and what it
    # folds into the working band is attenuated 5-fold by the box; white noise stays white.
    box = max(1, int(factor // 3))
    if box > 1:
        img = _box_average(img, box)
    ny, nx = img.shape
    # A tilted background (an ice gradient) is a step where the periodic FFT wraps around;
    # phase flipping would spread it into the image. Remove the best-fitting plane first and
    # add it back (unflipped) afterwards.
    slope_x, slope_y = _ice_plane(img)
    xs = np.arange(nx, dtype=np.float32) - np.float32(0.5 * (nx - 1))
    ys = np.arange(ny, dtype=np.float32) - np.float32(0.5 * (ny - 1))
    img = img - (np.float32(slope_x) * xs[None, :] + np.float32(slope_y) * ys[:, None])
    binned_px_a = pixel_size_a * box
    my = min(ny, max(8, 2 * round(ny * binned_px_a / working_pixel_size_a / 2)))
    mx = min(nx, max(8, 2 * round(nx * binned_px_a / working_pixel_size_a / 2)))
    full_ft = scipy.fft.rfft2(img, workers=workers)
    cropped = np.empty((my, mx // 2 + 1), dtype=np.complex64)
    cropped[: my - my // 2] = full_ft[: my - my // 2, : mx // 2 + 1]
    cropped[my - my // 2 :] = full_ft[ny - my // 2 :, : mx // 2 + 1]
    cropped *= np.float32(my * mx / (ny * nx))
    if mx < nx:  # the new Nyquist column was a pair of complex columns: keep it real
        cropped[:, -1] = cropped[:, -1].real
    px_y = binned_px_a * ny / my
    px_x = binned_px_a * nx / mx
    small = scipy.fft.irfft2(cropped, s=(my, mx), workers=workers).astype(np.float32)
    # the plane on the working grid: working pixel i sits at binned pixel i * n / m
    at_x = np.arange(mx, dtype=np.float32) * np.float32(nx / mx) - np.float32(0.5 * (nx - 1))
    at_y = np.arange(my, dtype=np.float32) * np.float32(ny / my) - np.float32(0.5 * (ny - 1))
    plane = np.float32(slope_x) * at_x[None, :] + np.float32(slope_y) * at_y[:, None]
    return WorkingImage(
        image=small + plane,
        background=plane,
        image_ft=cropped,
        pixel_size_a=float(math.sqrt(px_y * px_x)),
        scale_xy=(box * nx / mx, box * ny / my),
        offset_px=0.5 * (box - 1),
        phase_flipped=False,
    )


def phase_flip(working: WorkingImage, ctf: CtfModel, *, workers: int = 2) -> WorkingImage:
    """``working`` with each Fourier component multiplied by the sign of the CTF there.

    Afterwards particles are dark against the ice at every resolution, as they are at low
    resolution in underfocus (``CTF = -sin χ`` < 0). The background plane is left as it is.
    """
    my, mx = working.image.shape
    px = working.pixel_size_a
    ky = np.fft.fftfreq(my, d=px).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(mx, d=px).astype(np.float32)[None, :]
    chi = ctf_chi(
        kx * kx + ky * ky,
        np.arctan2(ky, kx),
        voltage_kv=ctf.voltage_kv,
        cs_mm=ctf.cs_mm,
        defocus_u_a=ctf.defocus_u_a,
        defocus_v_a=ctf.defocus_v_a,
        azimuth_deg=ctf.azimuth_deg,
        phase_shift_rad=ctf.phase_shift_rad,
        amplitude_contrast=ctf.amplitude_contrast,
    )
    flip = np.where(np.sin(chi) >= 0, np.float32(1.0), np.float32(-1.0))
    flip[0, 0] = 1.0
    flipped_ft = (working.image_ft * flip).astype(np.complex64)
    flat = scipy.fft.irfft2(flipped_ft, s=(my, mx), workers=workers).astype(np.float32)
    return WorkingImage(
        image=flat + working.background,
        background=working.background,
        image_ft=flipped_ft,
        pixel_size_a=working.pixel_size_a,
        scale_xy=working.scale_xy,
        offset_px=working.offset_px,
        phase_flipped=True,
    )


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (1-D)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_lo = np.cumsum(hist)
    weight_hi = weight_lo[-1] - weight_lo
    sum_lo = np.cumsum(hist * centres)
    mean_lo = sum_lo / np.maximum(weight_lo, 1)
    mean_hi = (sum_lo[-1] - sum_lo) / np.maximum(weight_hi, 1)
    between = weight_lo * weight_hi * (mean_lo - mean_hi) ** 2
    return float(centres[int(np.argmax(between))])


def _widen(mask: np.ndarray, distance_px: float) -> np.ndarray:
    """``mask`` grown by ``distance_px`` (Euclidean)."""
    if not mask.any():
        return mask
    return scipy.ndimage.distance_transform_edt(~mask) <= distance_px


def exclusion_mask(
    image: np.ndarray,
    *,
    diameter_px: float,
    min_carbon_step: float = 0.05,
    min_carbon_separation: float = 5.0,
    contamination_level: float = 0.6,
) -> ExclusionMask:
    """Edges, contamination and carbon of a working image (``diameter_px`` the particle's).

    - edge: within half a diameter of the image border;
    - contamination: where the mean over a particle-sized neighbourhood is below
      ``contamination_level`` times the clear ice's (the 90th percentile of such means: carbon
      and contamination are darker, and may cover most of the image), in blobs bigger than a
      particle,
      widened by 0.75 diameter (no picks touching it);
    - carbon: the large-scale mean (over about a diameter) splits into two levels (Otsu) whose
      relative difference is at least ``min_carbon_step`` *and* at least
      ``min_carbon_separation`` times the spread within the levels (a sharp edge between two
      flat levels; an ice gradient's values fill the range between its ends, and split in two
      they differ by only 3.5 times their spread). The darker level (thicker:
      the film) is carbon, widened by 0.75 diameter. No carbon is found when the whole
      image is carbon: it has nothing to differ from.
    """
    img = np.asarray(image, dtype=np.float32)
    ny, nx = img.shape
    radius = 0.5 * diameter_px
    edge = np.zeros(img.shape, dtype=bool)
    e = max(1, int(math.ceil(radius)))
    edge[:e] = edge[-e:] = True
    edge[:, :e] = edge[:, -e:] = True

    # coarse maps on a grid binned to about a quarter diameter
    b = max(1, int(diameter_px // 4))
    cy, cx = ny // b, nx // b
    coarse = img[: cy * b, : cx * b].reshape(cy, b, cx, b).mean(axis=(1, 3))
    level = float(np.percentile(coarse, 90))
    if not level > 0:
        # not an image of counts (a normalised one): no absolute levels to compare
        empty = np.zeros(img.shape, dtype=bool)
        return ExclusionMask(edge=edge, carbon=empty, contamination=empty.copy(), dark=empty.copy())
    local = scipy.ndimage.gaussian_filter(coarse, sigma=radius / b, mode="reflect") / level
    dark = local < contamination_level
    labels, n = scipy.ndimage.label(dark)
    contamination_c = np.zeros(coarse.shape, dtype=bool)
    if n:
        sizes = scipy.ndimage.sum_labels(dark, labels, index=np.arange(1, n + 1))
        big = np.flatnonzero(sizes * b * b > math.pi * diameter_px**2) + 1
        contamination_core = _widen(np.isin(labels, big), 0.25 * diameter_px / b)
        contamination_c = _widen(contamination_core, 0.5 * diameter_px / b)
    else:
        contamination_core = contamination_c

    # the large-scale mean of what is not contamination (normalised convolution: the dark
    # contamination must not make a darker halo around itself that looks like carbon)
    weight = (~contamination_c).astype(np.float32)
    sigma_c = diameter_px / b
    broad = scipy.ndimage.gaussian_filter(coarse * weight, sigma=sigma_c, mode="reflect")
    broad /= np.maximum(scipy.ndimage.gaussian_filter(weight, sigma=sigma_c, mode="reflect"), 1e-3) * level
    carbon_c = np.zeros(coarse.shape, dtype=bool)
    carbon_core = carbon_c
    values = broad[~contamination_c]
    if values.size > 16:
        split = _otsu(values)
        lo, hi = values[values < split], values[values >= split]
        if lo.size and hi.size:
            mean_lo, mean_hi = float(lo.mean()), float(hi.mean())
            gap = mean_hi - mean_lo
            spread = math.sqrt((((lo - mean_lo) ** 2).sum() + ((hi - mean_hi) ** 2).sum()) / values.size)
            if gap >= min_carbon_step * mean_hi and gap >= min_carbon_separation * spread:
                carbon_core = (broad < split) & ~contamination_c
                carbon_c = _widen(carbon_core, 0.75 * diameter_px / b)

    def upsample(mask_c: np.ndarray) -> np.ndarray:
        out = np.zeros(img.shape, dtype=bool)
        out[: cy * b, : cx * b] = np.repeat(np.repeat(mask_c, b, axis=0), b, axis=1)
        if cy * b < ny:
            out[cy * b :] = out[cy * b - 1]
        if cx * b < nx:
            out[:, cx * b :] = out[:, cx * b - 1 : cx * b]
        return out

    return ExclusionMask(
        edge=edge,
        carbon=upsample(carbon_c),
        contamination=upsample(contamination_c),
        dark=upsample(carbon_core | contamination_core),
    )


def fill_dark(working: WorkingImage, mask: ExclusionMask, *, workers: int = 2) -> WorkingImage:
    """``working`` with its carbon and contamination (``mask.dark``) set to the ice's median.

    The step at the edge of a dark region would otherwise score like a row of particles
    along it, beyond where picks are excluded. The background plane is fitted again to the
    ice alone. Returns ``working`` itself when there is nothing dark.
    """
    if not mask.dark.any() or mask.dark.all():
        return working
    keep = ~mask.excluded if (~mask.excluded).any() else ~mask.dark
    # the tilt of the ice alone: a dark region biases the plane fitted to the whole image,
    # and the wrong plane leaves a step where the FFT wraps around
    my, mx = working.image.shape
    yy, xx = np.nonzero(keep)
    design = np.column_stack([np.ones(yy.size), xx - 0.5 * (mx - 1), yy - 0.5 * (my - 1)])
    coef, *_ = np.linalg.lstsq(design, working.image[keep].astype(np.float64), rcond=None)
    xs = (np.arange(mx) - 0.5 * (mx - 1)).astype(np.float32)
    ys = (np.arange(my) - 0.5 * (my - 1)).astype(np.float32)
    background = (np.float32(coef[1]) * xs[None, :] + np.float32(coef[2]) * ys[:, None]).astype(np.float32)
    flat = working.image - background
    flat[mask.dark] = np.median(flat[keep])
    return WorkingImage(
        image=flat + background,
        background=background,
        image_ft=scipy.fft.rfft2(flat, workers=workers).astype(np.complex64),
        pixel_size_a=working.pixel_size_a,
        scale_xy=working.scale_xy,
        offset_px=working.offset_px,
        phase_flipped=working.phase_flipped,
    )


# First zero of a sphere's transform, as k·D (k in cycles per unit, D the diameter): 4.4934 / π.
_SPHERE_FIRST_ZERO_KD = 4.4934 / math.pi


def _sphere_transform(k_r: np.ndarray) -> np.ndarray:
    """Fourier transform of a uniform sphere (its projection's 2D transform), 1 at k = 0.

    ``k_r`` is ``2π k R`` (dimensionless)."""
    x = np.maximum(k_r, 1e-6)
    out = 3.0 * (np.sin(x) - x * np.cos(x)) / x**3
    return np.where(k_r < 1e-3, 1.0, out)


def score_map(
    working: WorkingImage,
    *,
    diameter_px: float,
    excluded: np.ndarray | None = None,
    workers: int = 2,
) -> ScoreMap:
    """Matched-filter score of a dark particle of ``diameter_px`` (working pixels), as a z-score.

    The filter is the transform of a uniform sphere of the particle's diameter up to its
    first zero (the matched filter of a sphere's low-resolution image in white noise),
    high-passed (nothing larger than about two diameters: smooth backgrounds and ice
    gradients go). The sign makes dark particles score high: phase-flip the image first
    (:func:`phase_flip`) when its CTF is known. Weighting the filter by ``|CTF|`` as well (the
    strict matched filter) gains little and rings: faint side peaks a diameter from strong
    particles. The noise of the working image is measured per tile (about two diameters
    across) in the band above 0.7 of Nyquist, where particles have almost no power; the
    median over the tiles not ``excluded`` is propagated through the filter (white noise
    assumed) to give the score's σ.
    """
    my, mx = working.image.shape
    # Mirror the image by a diameter on every side: the filter must not see the step where
    # the periodic FFT would wrap the right edge onto the left.
    pad = min(int(math.ceil(diameter_px)), my - 1, mx - 1)
    padded = np.pad(working.image - working.background, pad, mode="reflect")
    filt, kx = _matched_filter(padded.shape, diameter_px=diameter_px)
    padded_ft = scipy.fft.rfft2(padded, workers=workers)
    padded_ft *= filt
    score = scipy.fft.irfft2(padded_ft, s=padded.shape, workers=workers)[pad : pad + my, pad : pad + mx]

    ky = np.fft.fftfreq(my).astype(np.float32)[:, None]
    k = np.sqrt(np.fft.rfftfreq(mx).astype(np.float32)[None, :] ** 2 + ky * ky)
    band = (k > 0.35).astype(np.float32)  # 0.7 of Nyquist (0.5 cycles/px) and above
    high = scipy.fft.irfft2(working.image_ft * band, s=(my, mx), workers=workers)
    t = max(4, int(round(2 * diameter_px)))
    ty, tx = my // t, mx // t
    if ty >= 1 and tx >= 1:
        tiles = (high[: ty * t, : tx * t] ** 2).reshape(ty, t, tx, t).mean(axis=(1, 3))
        usable = np.ones(tiles.shape, dtype=bool)
        if excluded is not None:
            usable = ~excluded[: ty * t, : tx * t].reshape(ty, t, tx, t).any(axis=(1, 3))
        band_var = float(np.median(tiles[usable] if usable.any() else tiles))
    else:
        band_var = float(np.mean(high**2))
    pixel_var = band_var / max(_full_mean(band, (my, mx)), 1e-12)
    power = filt.astype(np.float64) ** 2
    filter_power = max(_full_mean(power, padded.shape), 1e-30)
    sigma = math.sqrt(max(pixel_var * filter_power, 1e-30))
    derivative_power = _full_mean(power * (2.0 * math.pi * kx.astype(np.float64)) ** 2, padded.shape)
    return ScoreMap(
        z=(score / np.float32(sigma)).astype(np.float32),
        noise_sigma=sigma,
        roughness_per_px2=derivative_power / filter_power,
    )


def _matched_filter(shape: tuple[int, int], *, diameter_px: float) -> tuple[np.ndarray, np.ndarray]:
    """The filter of :func:`score_map` on the rfft2 grid of ``shape``, and its kx (cycles/px)."""
    ky = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]  # cycles per working px
    kx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    k = np.sqrt(kx * kx + ky * ky)
    kc = 0.5 / diameter_px
    high_pass = 1.0 - np.exp(-0.5 * (k / kc) ** 2)
    # the sphere's first lobe only: finer detail (the particle's own structure) pulls the
    # peak off the particle's centre
    first_lobe = k * diameter_px < _SPHERE_FIRST_ZERO_KD
    filt = np.where(first_lobe, -_sphere_transform(math.pi * k * diameter_px) * high_pass, 0.0)
    return filt.astype(np.float32), kx


def find_peaks(
    z: np.ndarray,
    *,
    min_distance_px: float,
    threshold: float,
    excluded: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of ``z`` above ``threshold``, no two closer than ``min_distance_px``.

    Greedy non-maximum suppression: the highest peak is kept, every peak within
    ``min_distance_px`` of it dropped, and so on. Peaks on ``excluded`` pixels are dropped.
    Positions are refined by a parabola through the peak and its neighbours along each axis.
    Returns ``(xy, values)``: ``(n, 2)`` float64 ``(x, y)`` px and ``(n,)`` in decreasing order.
    """
    z = np.asarray(z, dtype=np.float32)
    local_max = scipy.ndimage.maximum_filter(z, size=3, mode="nearest") == z
    candidate = local_max & (z >= threshold)
    if excluded is not None:
        candidate &= ~excluded
    iy, ix = np.nonzero(candidate)
    values = z[iy, ix]
    order = np.argsort(-values, kind="stable")
    iy, ix, values = iy[order], ix[order], values[order]
    if len(values) > 1:
        tree = cKDTree(np.column_stack([ix, iy]).astype(np.float64))
        neighbours = tree.query_ball_point(np.column_stack([ix, iy]), r=min_distance_px - 1e-9)
        suppressed = np.zeros(len(values), dtype=bool)
        keep = []
        for i in range(len(values)):
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed[neighbours[i]] = True
        keep_idx = np.asarray(keep, dtype=np.int64)
        iy, ix, values = iy[keep_idx], ix[keep_idx], values[keep_idx]
    ny, nx = z.shape

    def parabola(minus: np.ndarray, centre: np.ndarray, plus: np.ndarray) -> np.ndarray:
        curvature = minus - 2.0 * centre + plus
        safe = np.where(curvature < 0, curvature, -1.0)
        return np.where(curvature < 0, np.clip(0.5 * (minus - plus) / safe, -0.5, 0.5), 0.0)

    zc = z[iy, ix].astype(np.float64)
    dx = parabola(z[iy, np.maximum(ix - 1, 0)], zc, z[iy, np.minimum(ix + 1, nx - 1)])
    dy = parabola(z[np.maximum(iy - 1, 0), ix], zc, z[np.minimum(iy + 1, ny - 1), ix])
    xy = np.column_stack([ix + dx, iy + dy]).astype(np.float64)
    return xy, values.astype(np.float64)


def expected_noise_peaks(threshold: float, *, area_px: float, roughness_per_px2: float) -> float:
    """Expected number of noise peaks above ``threshold`` in a unit-variance Gaussian field.

    The Euler-characteristic density of a 2D isotropic Gaussian field (Adler), which for high
    thresholds is the density of local maxima above them:
    ``area · λ₂ / (2π)^{3/2} · u · exp(-u²/2)`` with ``λ₂`` the derivative variance.
    """
    u = float(threshold)
    return area_px * roughness_per_px2 / (2.0 * math.pi) ** 1.5 * max(u, 0.0) * math.exp(-0.5 * u * u)


def noise_threshold(
    scores: ScoreMap,
    *,
    area_px: float,
    expected_false_picks: float = DEFAULT_EXPECTED_FALSE_PICKS,
    floor: float = MIN_Z_THRESHOLD,
) -> float:
    """The z-score that noise alone exceeds ``expected_false_picks`` times in ``area_px``.

    ``area_px`` is the area picks may lie in (working pixels). The noise level behind the
    z-scores is the micrograph's own (see :func:`score_map`); the threshold then follows from
    how many independent noise peaks an area of this size holds (:func:`expected_noise_peaks`),
    so a bigger micrograph or a smaller particle needs a slightly higher score. Never below
    ``floor``.
    """
    def expected(u: float) -> float:
        return expected_noise_peaks(u, area_px=area_px, roughness_per_px2=scores.roughness_per_px2)

    lo, hi = floor, 40.0
    if expected(lo) <= expected_false_picks:
        return float(lo)
    for _ in range(60):  # the expected count falls monotonically above u = 1
        mid = 0.5 * (lo + hi)
        if expected(mid) > expected_false_picks:
            lo = mid
        else:
            hi = mid
    return float(hi)


def automatic_threshold(
    scores: ScoreMap,
    peak_values: np.ndarray,
    *,
    area_px: float,
    expected_false_picks: float = DEFAULT_EXPECTED_FALSE_PICKS,
    floor: float = MIN_Z_THRESHOLD,
) -> float:
    """The threshold of one micrograph, from its own noise and its own peaks.

    At most :func:`noise_threshold` (where noise alone would give ``expected_false_picks``),
    and lower where the micrograph holds many more peaks than its noise explains: above a
    threshold ``t`` it has ``N(t)`` peaks of which about ``E(t)`` (:func:`expected_noise_peaks`)
    are noise, so ``N(t) - E(t)`` particles; taking all particles to be those above ``floor``,
    ``t`` is the peak value that maximises the F1 score this predicts,
    ``2 (N(t) - E(t)) / (N(t) + N(floor) - E(floor))``. Faint particles are then picked in a
    micrograph full of them, strong ones without the noise beside them, and a micrograph with
    no more peaks above ``floor`` than its noise explains (within three standard deviations
    of the expected count) keeps the strict threshold. ``peak_values`` are the scores of the micrograph's peaks after
    non-maximum suppression (any order), found down to ``floor``.
    """
    strict = noise_threshold(scores, area_px=area_px, expected_false_picks=expected_false_picks, floor=floor)
    values = np.sort(np.asarray(peak_values, dtype=np.float64))[::-1]
    values = values[values >= floor]
    if not values.size:
        return strict
    found = np.arange(1, values.size + 1, dtype=np.float64)
    noise = np.array(
        [expected_noise_peaks(v, area_px=area_px, roughness_per_px2=scores.roughness_per_px2) for v in values]
    )
    particles = found - noise
    total = particles[-1]
    if total < 3.0 * math.sqrt(noise[-1]) + 3.0:
        # no more peaks than noise gives, within its Poisson scatter: empty ice
        return strict
    f1 = 2.0 * particles / (found + total)
    best = int(np.argmax(f1))
    if particles[best] <= 0:
        return strict
    return float(min(strict, values[best]))


def pick_micrograph(
    image: np.ndarray,
    *,
    pixel_size_a: float,
    diameter_a: float,
    min_distance_a: float | None = None,
    threshold: float | None = None,
    ctf: CtfModel | None = None,
    workers: int = 2,
) -> Picks:
    """Pick the particles of ``diameter_a`` (Å) in ``image`` (``[y, x]``, ``pixel_size_a`` Å).

    ``min_distance_a`` defaults to 0.75 diameters; ``threshold`` (z-score, see
    :func:`score_map`) to :func:`automatic_threshold`. With ``ctf`` the image is phase-flipped
    (after carbon and contamination are evened out). Raises :class:`PickError` when more than 90 % of the
    image is excluded (carbon, contamination, edges).
    """
    if not diameter_a > 0:
        raise ValueError(f"diameter_a must be > 0 Å, got {diameter_a!r}")
    if not pixel_size_a > 0:
        raise ValueError(f"pixel_size_a must be > 0 Å, got {pixel_size_a!r}")
    working = working_image(
        image,
        pixel_size_a=pixel_size_a,
        working_pixel_size_a=diameter_a / WORKING_PIXELS_PER_DIAMETER,
        workers=workers,
    )
    diameter_px = diameter_a / working.pixel_size_a
    mask = exclusion_mask(working.image, diameter_px=diameter_px)
    if mask.masked_fraction > MAX_MASKED_FRACTION:
        raise PickError(
            f"{mask.masked_fraction:.0%} of the micrograph is excluded "
            f"(carbon {mask.carbon.mean():.0%}, contamination {mask.contamination.mean():.0%}, "
            f"edges {mask.edge.mean():.0%}): too little ice left to pick in"
        )
    # even out carbon and contamination before flipping: flipping a sharp dark edge rings
    filtered = fill_dark(working, mask, workers=workers)
    if ctf is not None:
        filtered = phase_flip(filtered, ctf, workers=workers)
    scores = score_map(filtered, diameter_px=diameter_px, excluded=mask.excluded, workers=workers)
    min_distance_px = (min_distance_a or DEFAULT_MIN_DISTANCE_D * diameter_a) / working.pixel_size_a
    if threshold is None:
        # greedy suppression keeps the same peaks above any threshold: find them once, low
        xy, values = find_peaks(
            scores.z, min_distance_px=min_distance_px, threshold=MIN_Z_THRESHOLD, excluded=mask.excluded
        )
        chosen = automatic_threshold(scores, values, area_px=float((~mask.excluded).sum()))
        keep = values >= chosen
        xy, values = xy[keep], values[keep]
    else:
        chosen = float(threshold)
        xy, values = find_peaks(scores.z, min_distance_px=min_distance_px, threshold=chosen, excluded=mask.excluded)
    return Picks(
        xy_px=filtered.to_input_px(xy),
        scores=values,
        threshold=chosen,
        masked_fraction=mask.masked_fraction,
        working=working,
        mask=mask,
    )
