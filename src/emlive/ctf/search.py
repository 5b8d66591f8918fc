"""Fitting the CTF to an averaged amplitude spectrum: search, refinement, fit statistics.

Pure functions of arrays and numbers. Spectra are centred (see :mod:`emlive.ctf.spectrum`).
The model is ``CTF² = sin²χ`` with χ from :func:`emlive.optics.ctf_chi` (defocus in Å,
positive = underfocus; azimuth of the defocus-U axis in degrees from +x counter-clockwise). In
the weak-signal regime of cryo-EM the background-subtracted amplitude grows linearly with CTF²,
so the score is the normalised cross-correlation between the spectrum and CTF² over the fitting
band (ctffind's score).

The method follows ctffind's published one (Rohou & Grigorieff 2015), with its own details:

1. a ring-agnostic background is removed (:func:`emlive.ctf.spectrum.remove_background`);
2. an exhaustive search of the mean defocus (and phase shift) on radial profiles, vectorised
   over a grid — ctffind's 1D search, done per angular sector so that it covers the
   astigmatism too (:func:`search_defocus_grid`);
3. a local refinement of (mean defocus, astigmatism vector[, phase shift]) by damped Newton
   steps on the exact gradient and Hessian of the score (:func:`fit_ctf`);
4. with that fit, the background is estimated again, smoothing over the fitted ring spacing
   with the fitted rings taken out, and the fit is refined once more from the first CTF zero
   outwards (inside it a ring is too wide to tell from the background), the model multiplied
   by the ring amplitude found at each frequency (a matched filter, :func:`refine_fit`);
5. the fit resolution is where a windowed correlation between the astigmatism-corrected
   1D profile and the fitted CTF falls below 0.5 (:func:`fit_profile`);
6. the fit counts as found (``fit_ok``) when its score is significant: ``cc·√n`` over the
   ``n`` independent pixels of the band is at least :data:`FIT_SIGNIFICANCE_MIN` (see
   :func:`fit_significance`; neighbouring pixels of a spectrum share data, so the band's
   pixels count as fewer, by :func:`neighbour_correlation_factor`). Otherwise no fit
   resolution is claimed.

An optional astigmatism restraint (ctffind's "expected astigmatism") lowers the score of a
candidate by ``½ (|U − V| / expected)² / √n``: an astigmatism of the expected size costs half
the standard deviation that the score of pure noise has, so it steers only where the data
cannot tell (:func:`astigmatism_penalty`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from emlive.ctf.spectrum import radial_profile, radius_grid_px, remove_background
from emlive.optics import ctf_chi, electron_wavelength_a

__all__ = [
    "FIT_CC_THRESHOLD",
    "FIT_SIGNIFICANCE_MIN",
    "MAX_ASTIGMATISM_A",
    "CtfFit",
    "FitBand",
    "FitProfile",
    "Microscope",
    "SpectrumFit",
    "astigmatism_penalty",
    "background_window_px",
    "band_pixels",
    "correlation",
    "ctf_squared_image",
    "fit_ctf",
    "fit_profile",
    "fit_significance",
    "neighbour_correlation_factor",
    "fit_spectrum",
    "refine_fit",
    "ring_amplitude",
    "search_defocus_grid",
]

# Largest |U - V| (Å) the grid search covers; the refinement may go beyond.
MAX_ASTIGMATISM_A = 3000.0
# Windowed correlation between profile and fit that counts as "rings still fitted".
FIT_CC_THRESHOLD = 0.5
# Smallest significance (score × √pixels in the band) of a fit that counts as found. The best
# score a search finds in pure noise stays below ~8 (measured on 256 and 512 px spectra of
# noise-only micrographs at 0.8–1.3 Å, and of rings too weak to fit); fits of visible rings
# reach 9–30 and more.
FIT_SIGNIFICANCE_MIN = 10.0
# Elements of a (candidates × pixels) block evaluated at once (bounds memory to ~32 MB).
_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Microscope:
    """What the CTF model needs besides defocus: voltage (kV), Cs (mm), amplitude contrast."""

    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float

    @property
    def wavelength_a(self) -> float:
        return float(electron_wavelength_a(self.voltage_kv))

    def chi(
        self,
        s_a2: np.ndarray,
        angle_rad: np.ndarray,
        defocus_u_a: np.ndarray | float,
        defocus_v_a: np.ndarray | float,
        azimuth_deg: np.ndarray | float,
        phase_shift_rad: np.ndarray | float,
    ) -> np.ndarray:
        """χ of :func:`emlive.optics.ctf_chi`; every argument broadcasts."""
        return ctf_chi(
            s_a2,
            angle_rad,
            voltage_kv=self.voltage_kv,
            cs_mm=self.cs_mm,
            defocus_u_a=defocus_u_a,  # type: ignore[arg-type]  # arrays broadcast
            defocus_v_a=defocus_v_a,  # type: ignore[arg-type]
            azimuth_deg=azimuth_deg,  # type: ignore[arg-type]
            phase_shift_rad=phase_shift_rad,  # type: ignore[arg-type]
            amplitude_contrast=self.amplitude_contrast,
        )


@dataclass(frozen=True)
class FitBand:
    """Pixels of the half-plane of a centred spectrum within the fitting band.

    ``s_a2`` squared spatial frequency (1/Å²), ``angle_rad`` its direction from +x,
    ``values`` the spectrum there minus its mean, ``norm`` their Euclidean norm, ``amplitude``
    the expected ring amplitude that multiplies the model CTF² at each pixel; ``box_a`` the tile
    edge in Å (a Fourier pixel is 1 / box_a); ``cos2_angle`` and ``sin2_angle`` are cos 2θ and
    sin 2θ of the direction (the astigmatism's basis).
    """

    s_a2: np.ndarray
    angle_rad: np.ndarray
    cos2_angle: np.ndarray
    sin2_angle: np.ndarray
    values: np.ndarray
    amplitude: np.ndarray
    norm: float
    k_min_a: float
    k_max_a: float
    box_a: float


@dataclass(frozen=True)
class CtfFit:
    """Fitted CTF parameters and the score over the fitting band.

    ``defocus_u_a >= defocus_v_a``; ``azimuth_deg`` in (-90, 90]; ``phase_shift_rad`` in [0, π).
    """

    defocus_u_a: float
    defocus_v_a: float
    azimuth_deg: float
    phase_shift_rad: float
    cross_correlation: float

    @property
    def mean_defocus_a(self) -> float:
        return 0.5 * (self.defocus_u_a + self.defocus_v_a)


@dataclass(frozen=True)
class FitProfile:
    """1D statistics of a fit (the rows of ctffind's ``_avrot.txt``) in 1-Fourier-pixel bins.

    ``frequency_a`` (1/Å); ``rotational_average`` of the normalised spectrum (no astigmatism
    assumed); ``astig_average`` the same with each pixel moved to the radius it would have at
    the mean defocus, scaled to the range of ``ctf_fit`` (``|CTF|`` at the mean defocus) over
    the fitting band; ``fit_cc`` the correlation between the two over a window of two Thon
    rings, ``noise_cc_2sigma`` twice its standard deviation for noise; ``fit_resolution_a``
    the resolution (Å) to which ``fit_cc`` stays above :data:`FIT_CC_THRESHOLD`.
    """

    frequency_a: np.ndarray
    rotational_average: np.ndarray
    astig_average: np.ndarray
    ctf_fit: np.ndarray
    fit_cc: np.ndarray
    noise_cc_2sigma: np.ndarray
    fit_resolution_a: float


@dataclass(frozen=True)
class SpectrumFit:
    """Everything :func:`fit_spectrum` found: the fit, its 1D statistics, the spectra used.

    ``significance`` is :func:`fit_significance` of the fit; ``fit_ok`` whether it reaches
    :data:`FIT_SIGNIFICANCE_MIN` (if not, the parameters are the best guess in noise, and the
    profile's fit resolution is the lowest resolution fitted: no rings are claimed).
    """

    fit: CtfFit
    profile: FitProfile
    normalised: np.ndarray
    background: np.ndarray
    significance: float
    fit_ok: bool


def _frequency_limits(tile: int, pixel_size_a: float, min_res_a: float, max_res_a: float) -> tuple[float, float]:
    nyquist = 0.5 / pixel_size_a
    k_max = min(1.0 / max_res_a, nyquist * (1.0 - 2.0 / tile))
    k_min = 1.0 / min_res_a
    if not k_min < k_max:
        raise ValueError(
            f"fitting band {min_res_a} Å … {max_res_a} Å is empty at pixel size {pixel_size_a} Å "
            f"(Nyquist {2 * pixel_size_a:.2f} Å); lower min_res_a or the pixel size"
        )
    return k_min, k_max


def _centred_grid(tile: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(tile, dtype=np.float64) - tile // 2
    ky, kx = np.meshgrid(c, c, indexing="ij")
    return ky, kx


@dataclass(frozen=True)
class _Grid:
    """The centred ``tile × tile`` Fourier grid of a spectrum, flat, computed once per size.

    ``radius_px`` (Fourier px), ``angle_rad`` (direction from +x), ``cos2``/``sin2`` (of twice
    the angle) and ``half_plane`` (kx > 0, or kx = 0 and ky > 0: each frequency once).
    """

    tile: int
    radius_px: np.ndarray
    angle_rad: np.ndarray
    cos2: np.ndarray
    sin2: np.ndarray
    half_plane: np.ndarray

    def s_a2(self, pixel_size_a: float) -> np.ndarray:
        """Squared spatial frequency (1/Å²) of each pixel."""
        return (self.radius_px / (self.tile * pixel_size_a)) ** 2


@functools.lru_cache(maxsize=4)  # ~10 MB each for a 512 px box
def _grid(tile: int) -> _Grid:
    ky, kx = (g.ravel() for g in _centred_grid(tile))
    angle = np.arctan2(ky, kx)
    arrays = (np.hypot(kx, ky), angle, np.cos(2.0 * angle), np.sin(2.0 * angle), (kx > 0) | ((kx == 0) & (ky > 0)))
    for a in arrays:
        a.flags.writeable = False
    return _Grid(tile, *arrays)


@functools.lru_cache(maxsize=16)
def _band_index(tile: int, pixel_size_a: float, min_res_a: float, max_res_a: float) -> tuple[np.ndarray, float, float]:
    """Flat indices of the half-plane pixels in the fitting band, and its limits (1/Å)."""
    k_min, k_max = _frequency_limits(tile, pixel_size_a, min_res_a, max_res_a)
    grid = _grid(tile)
    k = grid.radius_px / (tile * pixel_size_a)
    index = np.flatnonzero(grid.half_plane & (k >= k_min) & (k <= k_max))
    index.flags.writeable = False
    return index, k_min, k_max


def band_pixels(
    normalised: np.ndarray,
    *,
    pixel_size_a: float,
    min_res_a: float,
    max_res_a: float,
    amplitude: np.ndarray | None = None,
) -> FitBand:
    """The half-plane pixels of a centred spectrum between ``min_res_a`` and ``max_res_a``.

    ``max_res_a`` is clamped to just inside Nyquist; ``amplitude`` (same shape as the spectrum,
    default 1) is the ring amplitude the model is multiplied with. Raises ``ValueError`` if the
    band is empty.
    """
    tile = normalised.shape[0]
    index, k_min, k_max = _band_index(tile, float(pixel_size_a), float(min_res_a), float(max_res_a))
    grid = _grid(tile)
    values = np.asarray(normalised, dtype=np.float64).ravel()[index]
    amp = np.ones_like(values) if amplitude is None else np.asarray(amplitude, dtype=np.float64).ravel()[index]
    if not amp.max() > 0:
        amp = np.ones_like(values)
    values = values - values.mean()
    return FitBand(
        s_a2=grid.s_a2(pixel_size_a)[index],
        angle_rad=grid.angle_rad[index],
        cos2_angle=grid.cos2[index],
        sin2_angle=grid.sin2[index],
        values=values,
        amplitude=amp,
        norm=float(np.sqrt(_dot(values, values))),
        k_min_a=k_min,
        k_max_a=k_max,
        box_a=tile * pixel_size_a,
    )


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum over the last axis of ``a * b``.

    ``einsum`` rather than ``@``: these products are small, and a threaded BLAS sharing its
    cores with other work (a Dask worker, parallel tests) can be 10-100x slower on them.
    """
    return np.einsum("...i,...i->...", a, b)


def _row_correlations(
    model: np.ndarray, centred: np.ndarray, norm: float, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted Pearson correlation of each row of ``model`` with ``centred``.

    ``centred`` has weighted mean 0 and weighted norm ``norm`` (weights default to 1).
    """
    if weights is None:
        weights = np.ones(centred.shape)
    wsum = weights.sum()
    dot = _dot(model, weights * centred)
    mean = _dot(model, weights) / wsum
    var = _dot(model * model, weights) - wsum * mean * mean
    denom = np.sqrt(np.maximum(var, 0.0)) * norm
    return np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0)


def correlation(
    band: FitBand,
    microscope: Microscope,
    *,
    defocus_u_a: np.ndarray | float,
    defocus_v_a: np.ndarray | float,
    azimuth_deg: np.ndarray | float,
    phase_shift_rad: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Score (normalised cross-correlation with amplitude × CTF²) of parameter sets over ``band``.

    Parameters broadcast against each other (arrays of candidates or scalars); returns one
    score per candidate, in the broadcast shape.
    """
    u, v, az, ph = np.broadcast_arrays(
        *(np.asarray(x, dtype=np.float64) for x in (defocus_u_a, defocus_v_a, azimuth_deg, phase_shift_rad))
    )
    shape = u.shape
    u, v, az, ph = (np.ravel(x) for x in (u, v, az, ph))
    out = np.empty(u.size)
    step = max(1, _BLOCK_ELEMENTS // max(band.values.size, 1))
    for i in range(0, u.size, step):
        j = slice(i, i + step)
        chi = microscope.chi(
            band.s_a2[None, :], band.angle_rad[None, :], u[j, None], v[j, None], az[j, None], ph[j, None]
        )
        out[j] = _row_correlations(band.amplitude * np.sin(chi) ** 2, band.values, band.norm)
    return out.reshape(shape)


def _defocus_step_a(wavelength_a: float, k_max_a: float) -> float:
    """Grid step that changes χ at the highest fitted frequency by π/8 (a sixteenth of a ring)."""
    return 1.0 / (8.0 * wavelength_a * k_max_a**2)


def astigmatism_penalty(astigmatism_a: np.ndarray | float, n_pixels: int, expected_astigmatism_a: float | None) -> np.ndarray:
    """What the astigmatism restraint subtracts from a score: ``½ (astig / expected)² / √n``.

    ``astigmatism_a`` is ``|U − V|`` (Å), ``n_pixels`` the pixels of the fitting band; the score
    of pure noise has a standard deviation of about ``1 / √n``. ``None`` (no restraint) gives 0.
    """
    astig = np.asarray(astigmatism_a, dtype=np.float64)
    if expected_astigmatism_a is None:
        return np.zeros_like(astig)
    return 0.5 * (astig / expected_astigmatism_a) ** 2 / np.sqrt(max(n_pixels, 1))


def fit_significance(cross_correlation: float, n_pixels: float) -> float:
    """``cc · √n``: the score in units of its standard deviation for pure noise over ``n`` pixels.

    Comparable across box sizes and fitting bands, unlike the score itself (which for noise
    shrinks as the band holds more pixels).
    """
    return float(cross_correlation) * float(np.sqrt(max(n_pixels, 0)))


def neighbour_correlation_factor(
    normalised: np.ndarray,
    fit: CtfFit,
    microscope: Microscope,
    *,
    pixel_size_a: float,
    min_res_a: float,
    max_res_a: float,
) -> float:
    """How many pixels of the band make one independent measurement: ``(1 + 2ρx)(1 + 2ρy)``.

    ``ρx``, ``ρy`` are the correlations between horizontally and vertically neighbouring pixels
    of what the fit leaves (the spectrum minus its regression on CTF² of ``fit``) over the
    fitting band: a spectrum averaged with a window (a tile's taper, or a triangle across bins)
    has correlated neighbours, and the score of noise then spreads wider than for independent
    pixels. Never below 1 (anticorrelation is not counted as extra information).
    """
    tile = normalised.shape[0]
    k_min, k_max = _frequency_limits(tile, pixel_size_a, min_res_a, max_res_a)
    k = _grid(tile).radius_px.reshape(tile, tile) / (tile * pixel_size_a)
    band = (k >= k_min) & (k <= k_max)
    values = np.asarray(normalised, dtype=np.float64)
    model = ctf_squared_image(tile, fit, microscope, pixel_size_a=pixel_size_a)
    v, m = values[band] - values[band].mean(), model[band] - model[band].mean()
    slope = _dot(v, m) / max(_dot(m, m), 1e-30)
    residual = np.zeros_like(values)
    residual[band] = v - slope * m
    power = _dot(residual.ravel(), residual.ravel())
    if not power > 0:
        return 1.0
    rho_x = float(np.einsum("ij,ij->", residual[:, 1:], residual[:, :-1])) / power
    rho_y = float(np.einsum("ij,ij->", residual[1:], residual[:-1])) / power
    return max(1.0, (1.0 + 2.0 * rho_x) * (1.0 + 2.0 * rho_y))


def search_defocus_grid(
    normalised: np.ndarray,
    microscope: Microscope,
    *,
    pixel_size_a: float,
    min_res_a: float,
    max_res_a: float,
    min_defocus_a: float,
    max_defocus_a: float,
    fit_phase_shift: bool = False,
    expected_astigmatism_a: float | None = None,
    n_candidates: int = 3,
) -> list[tuple[float, np.ndarray]]:
    """Exhaustive search of mean defocus, astigmatism (and phase shift) on a coarse grid.

    ctffind's 1D search on the rotational average, extended so that a large astigmatism —
    which washes the rings out of a rotational average at high defocus — cannot hide the
    truth: the fitting band is cut into 16 angular sectors, and each sector's radial profile
    is scored against CTF² for every defocus of a grid (and every phase shift in [0, π) in
    steps of π/12 with ``fit_phase_shift``), all at once. A set of parameters (mean defocus,
    half-astigmatism h, azimuth) then scores the sum over sectors of each sector's score at
    its own defocus ``mean + h·cos 2(θ - azimuth)``, looked up in those tables for every
    grid point (h in 10 steps up to :data:`MAX_ASTIGMATISM_A` / 2, azimuth in 11.25° steps,
    mean defocus in steps that move the phase at the highest frequency by π/8). With h = 0
    this is the 1D search. With ``expected_astigmatism_a`` each score is lowered by
    :func:`astigmatism_penalty` of ``2h``. Returns up to ``n_candidates`` distinct local maxima
    over the mean defocus as ``(score, (mean, a, b, phase))``, best first, with
    ``a = h·cos 2·azimuth`` and ``b = h·sin 2·azimuth``.
    """
    band = band_pixels(normalised, pixel_size_a=pixel_size_a, min_res_a=min_res_a, max_res_a=max_res_a)
    n_sectors = 16
    sector_width = np.pi / n_sectors
    sector = np.clip(((band.angle_rad + 0.5 * np.pi) / sector_width).astype(np.int64), 0, n_sectors - 1)
    radius = np.sqrt(band.s_a2) * band.box_a
    r0 = int(np.floor(radius.min()))
    n_bins = int(np.ceil(radius.max())) + 2 - r0
    s_bins = ((np.arange(n_bins) + r0) / band.box_a) ** 2
    step = _defocus_step_a(microscope.wavelength_a, band.k_max_a)
    max_half = 0.5 * MAX_ASTIGMATISM_A
    first = max(min_defocus_a - max_half, step)
    defoci = np.arange(first, max_defocus_a + max_half + step, step)
    phases = np.arange(12) * (np.pi / 12) if fit_phase_shift else np.zeros(1)
    dd, pp = (x.ravel() for x in np.meshgrid(defoci, phases, indexing="ij"))
    chi = microscope.chi(s_bins[None, :], np.zeros((1, 1)), dd[:, None], dd[:, None], 0.0, pp[:, None])
    model = np.sin(chi) ** 2
    tables = np.empty((n_sectors, defoci.size, phases.size))
    weights = np.empty(n_sectors)
    for j in range(n_sectors):
        in_sector = sector == j
        profile, counts = radial_profile(band.values[in_sector], radius[in_sector] - r0, n_bins=n_bins)
        total = float(counts.sum())
        weights[j] = total
        centred = profile - _dot(profile, counts) / max(total, 1e-30)
        norm = float(np.sqrt(_dot(counts * centred, centred)))
        tables[j] = _row_correlations(model, centred, norm, counts).reshape(defoci.size, phases.size)
    weights /= weights.sum()
    # every (h, azimuth) of the grid, h = 0 once
    n_halves = int(min(10, np.ceil(max_half / step)))  # at most 10: bounds time and memory
    halves = max_half * np.arange(1, n_halves + 1) / n_halves
    azimuths = np.arange(n_sectors) * sector_width
    hh = np.concatenate([[0.0], np.repeat(halves, azimuths.size)])
    aa = np.concatenate([[0.0], np.tile(azimuths, halves.size)])
    centres = -0.5 * np.pi + (np.arange(n_sectors) + 0.5) * sector_width
    means = np.flatnonzero((defoci >= min_defocus_a - 0.5 * step) & (defoci <= max_defocus_a + 0.5 * step))
    scores = np.zeros((hh.size, means.size, phases.size))
    for j in range(n_sectors):
        shift = hh * np.cos(2.0 * (centres[j] - aa)) / step  # in grid steps, per (h, azimuth)
        position = means[None, :] + shift[:, None]
        lo = np.clip(np.floor(position).astype(np.int64), 0, defoci.size - 2)
        frac = np.clip(position - lo, 0.0, 1.0)[..., None]
        scores += weights[j] * ((1.0 - frac) * tables[j][lo] + frac * tables[j][lo + 1])
    scores -= astigmatism_penalty(2.0 * hh, band.values.size, expected_astigmatism_a)[:, None, None]
    # best over (h, azimuth, phase) for each mean defocus, then distinct local maxima
    flat = scores.transpose(1, 0, 2).reshape(means.size, -1)
    best_index = flat.argmax(axis=1)
    curve = flat[np.arange(means.size), best_index]
    padded = np.concatenate([[-np.inf], curve, [-np.inf]])
    peaks = np.flatnonzero((curve >= padded[:-2]) & (curve >= padded[2:]))
    peaks = peaks[np.argsort(curve[peaks])[::-1]]
    chosen: list[int] = []
    for i in peaks:
        if all(abs(int(i) - k) > 2 for k in chosen):
            chosen.append(int(i))
        if len(chosen) == n_candidates:
            break
    found = []
    for i in chosen:
        combo, phase_index = divmod(int(best_index[i]), phases.size)
        half, azimuth = hh[combo], aa[combo]
        x = np.array([defoci[means[i]], half * np.cos(2 * azimuth), half * np.sin(2 * azimuth), phases[phase_index]])
        found.append((float(curve[i]), x))
    return found


def _params_to_ctf(x: np.ndarray) -> tuple[float, float, float, float]:
    """(mean defocus, a, b, phase) → (U, V, azimuth°, phase); D(θ) = mean + a·cos2θ + b·sin2θ."""
    mean, a, b, phase = (float(v) for v in x)
    half = float(np.hypot(a, b))
    azimuth = 0.5 * float(np.degrees(np.arctan2(b, a)))
    return mean + half, mean - half, azimuth, phase


def _ctf_to_params(fit: CtfFit) -> np.ndarray:
    half = 0.5 * (fit.defocus_u_a - fit.defocus_v_a)
    two_theta = np.radians(2.0 * fit.azimuth_deg)
    return np.array([fit.mean_defocus_a, half * np.cos(two_theta), half * np.sin(two_theta), fit.phase_shift_rad])


def _refine(
    band: FitBand,
    microscope: Microscope,
    start: np.ndarray,
    *,
    scale: np.ndarray,
    bounds: list[tuple[float, float]],
    fit_phase_shift: bool,
    expected_astigmatism_a: float | None = None,
    tolerance: float = 1e-4,
    max_iterations: int = 50,
) -> tuple[float, np.ndarray]:
    """Local maximisation of the band score from ``start`` = (mean, a, b, phase).

    χ is linear in (mean, a, b, phase) (:meth:`Microscope.chi`: D(θ) = mean + a·cos2θ +
    b·sin2θ), so the score's gradient and Hessian are exact sums over the band's pixels; a
    damped Newton iteration (Levenberg–Marquardt on the Hessian, steps capped at two ``scale``
    units, within ``bounds``) converges in a few steps from a grid point, until a step moves
    less than ``tolerance`` (in ``scale`` units). No general-purpose optimiser: its many small
    BLAS calls are slow where threads are contended. The score maximised (and returned)
    includes the astigmatism restraint, if any.
    """
    free = 4 if fit_phase_shift else 3
    lam = microscope.wavelength_a
    cs_a = microscope.cs_mm * 1e7
    ds = np.pi * lam * band.s_a2
    # dχ/dy for the scaled parameters y = x / scale
    basis = np.stack([ds, ds * band.cos2_angle, ds * band.sin2_angle, np.ones_like(ds)][:free]) * scale[:free, None]
    offset = -0.5 * np.pi * cs_a * lam**3 * band.s_a2**2 + np.arcsin(microscope.amplitude_contrast)
    if not fit_phase_shift:
        offset = offset + start[3]
    amp, values, n = band.amplitude, band.values, band.values.size
    # restraint: ½ (2·|(a, b)| / expected)² / √n = k (a² + b²)
    k_restraint = 0.0 if expected_astigmatism_a is None else 2.0 / (expected_astigmatism_a**2 * np.sqrt(n))
    penalty = np.zeros(free)
    penalty[1:3] = k_restraint * scale[1:3] ** 2

    def evaluate(y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        chi2 = 2.0 * (offset + np.einsum("j,jn->n", y, basis))
        cos2chi, sin2chi = np.cos(chi2), np.sin(chi2)
        model = 0.5 * amp * (1.0 - cos2chi)  # amp · sin²χ
        d_model = amp * sin2chi  # ∂model/∂χ
        dd_model = 2.0 * amp * cos2chi  # ∂²model/∂χ²
        centred = model - model.mean()
        dot = _dot(centred, values)
        var = max(_dot(centred, centred), 1e-30)
        sd = np.sqrt(var)
        jac = basis * d_model  # ∂model/∂y_j
        d_dot = np.einsum("jn,n->j", jac, values)
        d_sd = np.einsum("jn,n->j", jac, centred) / sd
        jac_mean = jac.mean(axis=1)
        dd_dot = np.einsum("jn,kn,n->jk", basis, basis, dd_model * values)
        dd_var = 2.0 * (np.einsum("jn,kn->jk", jac, jac) - n * np.outer(jac_mean, jac_mean))
        dd_var += 2.0 * np.einsum("jn,kn,n->jk", basis, basis, dd_model * centred)
        dd_sd = dd_var / (2.0 * sd) - np.outer(d_sd, d_sd) / sd
        cross = np.outer(d_dot, d_sd)
        score = dot / sd
        grad = d_dot / sd - dot * d_sd / var
        hess = dd_dot / sd - (cross + cross.T) / var - dot * dd_sd / var + 2.0 * dot * np.outer(d_sd, d_sd) / (var * sd)
        score, grad, hess = score / band.norm, grad / band.norm, hess / band.norm
        return (
            float(score - _dot(penalty, y * y)),
            grad - 2.0 * penalty * y,
            hess - 2.0 * np.diag(penalty),
        )

    lower = np.array([lo / sc for (lo, _), sc in zip(bounds[:free], scale[:free], strict=True)])
    upper = np.array([hi / sc for (_, hi), sc in zip(bounds[:free], scale[:free], strict=True)])
    y = np.clip(start[:free] / scale[:free], lower, upper)
    score, grad, hess = evaluate(y)
    damping = 0.0
    for _ in range(max_iterations):
        curvature, vectors = np.linalg.eigh(-hess)
        # shift the curvature positive (an ascent direction), more while steps fail
        shift = max(damping, 1e-9 - curvature.min(), 0.0)
        step = vectors @ ((vectors.T @ grad) / (curvature + shift))
        longest = float(np.abs(step).max())
        if longest > 2.0:
            step *= 2.0 / longest
        trial = np.clip(y + step, lower, upper)
        moved = float(np.abs(trial - y).max())
        if moved < tolerance:
            break
        trial_score, trial_grad, trial_hess = evaluate(trial)
        if trial_score >= score:
            y, score, grad, hess = trial, trial_score, trial_grad, trial_hess
            damping *= 0.25
        else:
            damping = max(4.0 * damping, 0.1 * float(np.abs(curvature).max()), 1e-6)
    full = np.append(y * scale[:free], [] if fit_phase_shift else [start[3]])
    return score, full


def _to_fit(x: np.ndarray, score: float) -> CtfFit:
    u, v, az, phase = _params_to_ctf(x)
    if az <= -90.0:
        az += 180.0
    return CtfFit(
        defocus_u_a=u,
        defocus_v_a=v,
        azimuth_deg=az,
        phase_shift_rad=float(np.mod(phase, np.pi)),
        cross_correlation=float(score),
    )


def _bounds(min_defocus_a: float, max_defocus_a: float) -> list[tuple[float, float]]:
    span = max_defocus_a - min_defocus_a
    return [(min_defocus_a, max_defocus_a), (-span, span), (-span, span), (-np.pi, 2.0 * np.pi)]


def fit_ctf(
    normalised: np.ndarray,
    microscope: Microscope,
    *,
    pixel_size_a: float,
    min_res_a: float,
    max_res_a: float,
    min_defocus_a: float,
    max_defocus_a: float,
    fit_phase_shift: bool = False,
    expected_astigmatism_a: float | None = None,
) -> CtfFit:
    """Fit defocus U/V, azimuth (and phase shift) to a centred background-free spectrum.

    1. :func:`search_defocus_grid` gives a few candidates (mean defocus, astigmatism, phase).
    2. From each candidate scoring at least half the best, and from the best without
       astigmatism, damped Newton steps maximise the band score over (mean, a, b[, phase]) where the
       defocus along direction θ is ``mean + a·cos2θ + b·sin2θ`` (smooth through zero
       astigmatism).

    ``expected_astigmatism_a`` restrains the astigmatism in both (:func:`astigmatism_penalty`).
    The returned score is the normalised cross-correlation over the band at the optimum
    (without the restraint's penalty).
    """
    band = band_pixels(normalised, pixel_size_a=pixel_size_a, min_res_a=min_res_a, max_res_a=max_res_a)
    step = _defocus_step_a(microscope.wavelength_a, band.k_max_a)
    candidates = search_defocus_grid(
        normalised,
        microscope,
        pixel_size_a=pixel_size_a,
        min_res_a=min_res_a,
        max_res_a=max_res_a,
        min_defocus_a=min_defocus_a,
        max_defocus_a=max_defocus_a,
        fit_phase_shift=fit_phase_shift,
        expected_astigmatism_a=expected_astigmatism_a,
    )
    best_grid, (mean, _, _, phase) = candidates[0]
    starts = [x for score, x in candidates if score >= 0.5 * best_grid]
    starts.append(np.array([mean, 0.0, 0.0, phase]))
    scale = np.array([step, step, step, 0.1])
    bounds = _bounds(min_defocus_a, max_defocus_a)
    best_score, best_x = -np.inf, starts[0]
    for x0 in starts:
        score, x = _refine(
            band,
            microscope,
            x0,
            scale=scale,
            bounds=bounds,
            fit_phase_shift=fit_phase_shift,
            expected_astigmatism_a=expected_astigmatism_a,
        )
        if score > best_score:
            best_score, best_x = score, x
    if expected_astigmatism_a is not None:
        u, v, az, ph = _params_to_ctf(best_x)
        best_score = float(correlation(band, microscope, defocus_u_a=u, defocus_v_a=v, azimuth_deg=az, phase_shift_rad=ph))
    return _to_fit(best_x, best_score)


def refine_fit(
    normalised: np.ndarray,
    fit: CtfFit,
    microscope: Microscope,
    *,
    pixel_size_a: float,
    min_res_a: float,
    max_res_a: float,
    min_defocus_a: float,
    max_defocus_a: float,
    fit_phase_shift: bool = False,
    amplitude: np.ndarray | None = None,
    start_res_a: float | None = None,
    expected_astigmatism_a: float | None = None,
) -> CtfFit:
    """Refine ``fit`` locally on ``normalised``, the model CTF² multiplied by ``amplitude``.

    With the ring amplitude of each pixel in the model (see :func:`ring_amplitude`), the score
    is a matched filter: frequencies where the rings have faded into the noise no longer dilute
    it, and rings whose strength changes across their width (near the centre) pull the fit no
    more than their share. ``start_res_a`` (Å) moves the start of the refined band to higher
    frequency where it is finer than ``min_res_a``. The returned score is the plain normalised
    cross-correlation with CTF² over the full band ``min_res_a … max_res_a`` (the number
    ctffind reports), whatever ``amplitude`` and ``start_res_a`` (and without the penalty of
    ``expected_astigmatism_a``, which restrains the astigmatism as in :func:`fit_ctf`).
    """
    weighted = band_pixels(
        normalised,
        pixel_size_a=pixel_size_a,
        min_res_a=min(min_res_a, start_res_a or min_res_a),  # finer start only
        max_res_a=max_res_a,
        amplitude=amplitude,
    )
    step = _defocus_step_a(microscope.wavelength_a, weighted.k_max_a)
    _, x = _refine(
        weighted,
        microscope,
        _ctf_to_params(fit),
        scale=np.array([step, step, step, 0.1]),
        bounds=_bounds(min_defocus_a, max_defocus_a),
        fit_phase_shift=fit_phase_shift,
        expected_astigmatism_a=expected_astigmatism_a,
    )
    plain = band_pixels(normalised, pixel_size_a=pixel_size_a, min_res_a=min_res_a, max_res_a=max_res_a)
    u, v, az, ph = _params_to_ctf(x)
    score = float(correlation(plain, microscope, defocus_u_a=u, defocus_v_a=v, azimuth_deg=az, phase_shift_rad=ph))
    return _to_fit(x, score)


def _astig_corrected_radius(tile: int, fit: CtfFit, microscope: Microscope, *, pixel_size_a: float) -> np.ndarray:
    """Radius (Fourier px) at which the mean defocus gives each pixel of the grid its phase χ.

    Solves ``π λ s' D̄ - c s'² = π λ s D(θ) - c s²`` (``c = π Cs λ³ / 2``) for the smaller root
    ``s'``: averaging the spectrum in rings of that radius undoes the astigmatism.
    """
    lam = microscope.wavelength_a
    cs_a = microscope.cs_mm * 1e7
    mean = fit.mean_defocus_a
    half = 0.5 * (fit.defocus_u_a - fit.defocus_v_a)
    box_a = tile * pixel_size_a
    grid = _grid(tile)
    s = grid.s_a2(pixel_size_a)
    two_az = np.radians(2.0 * fit.azimuth_deg)
    defocus = mean + half * (np.cos(two_az) * grid.cos2 + np.sin(two_az) * grid.sin2)
    c1 = np.pi * lam * mean
    c2 = 0.5 * np.pi * cs_a * lam**3
    g = np.pi * lam * s * defocus - c2 * s * s
    disc = np.sqrt(np.maximum(c1 * c1 - 4.0 * c2 * g, 0.0))
    s_eq = np.maximum(2.0 * g / (c1 + disc), 0.0) if c1 > 0 else s
    return (np.sqrt(s_eq) * box_a).reshape(tile, tile)


def _ring_period_px(freq_a: np.ndarray, mean_defocus_a: float, microscope: Microscope, box_a: float) -> np.ndarray:
    """Distance (Fourier px) between Thon rings (zeros of CTF²) at each frequency, from dχ/dk."""
    lam = microscope.wavelength_a
    cs_a = microscope.cs_mm * 1e7
    dchi_dk = np.abs(2.0 * np.pi * lam * mean_defocus_a * freq_a - 2.0 * np.pi * cs_a * lam**3 * freq_a**3)
    return np.divide(np.pi, dchi_dk, out=np.full(freq_a.shape, np.inf), where=dchi_dk > 0) * box_a


def _windowed_fit(
    profile: np.ndarray, model: np.ndarray, filled: np.ndarray, half_window_px: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlation and regression slope of ``profile`` on ``model`` in a window around each bin.

    A straight line in the radius is removed from both within each window first (partial
    correlation), so that a slowly varying background residual does not count. Bins where
    ``filled`` is false are left out. Returns ``(correlation, slope, n_bins_in_window)``.
    """
    size = profile.size
    idx = np.arange(size)
    lo = np.clip(np.ceil(idx - half_window_px).astype(np.int64), 0, size - 1)
    hi = np.clip(np.floor(idx + half_window_px).astype(np.int64), 0, size - 1)

    def window_sum(a: np.ndarray) -> np.ndarray:
        cum = np.concatenate([[0.0], np.cumsum(a)])
        return cum[hi + 1] - cum[lo]

    f = filled.astype(np.float64)
    x = np.where(filled, profile, 0.0)
    y = np.where(filled, model, 0.0)
    r = idx * f
    n = window_sum(f)
    n_safe = np.maximum(n, 1.0)
    sr, sx, sy = window_sum(r), window_sum(x), window_sum(y)
    srr = window_sum(r * r) - sr * sr / n_safe
    srr_inv = np.divide(1.0, srr, out=np.zeros(size), where=srr > 1e-9)
    sxr = window_sum(x * r) - sx * sr / n_safe
    syr = window_sum(y * r) - sy * sr / n_safe
    cov = window_sum(x * y) - sx * sy / n_safe - sxr * syr * srr_inv
    var_x = window_sum(x * x) - sx * sx / n_safe - sxr * sxr * srr_inv
    var_y = window_sum(y * y) - sy * sy / n_safe - syr * syr * srr_inv
    ok = (n > 3) & (var_x > 1e-12) & (var_y > 1e-12)
    cc = np.divide(cov, np.sqrt(np.abs(var_x * var_y)), out=np.zeros(size), where=ok)
    slope = np.divide(cov, var_y, out=np.zeros(size), where=ok)
    return cc, slope, n


def _profiles(
    normalised: np.ndarray, fit: CtfFit, microscope: Microscope, *, pixel_size_a: float
) -> dict[str, np.ndarray]:
    """Rotational averages (plain and astigmatism-corrected), the 1D fit and windowed statistics."""
    tile = normalised.shape[0]
    box_a = tile * pixel_size_a
    n_bins = int(np.ceil(tile / np.sqrt(2.0)))
    rot, _ = radial_profile(normalised, radius_grid_px(tile), n_bins=n_bins)
    radius_eq = _astig_corrected_radius(tile, fit, microscope, pixel_size_a=pixel_size_a)
    astig, counts = radial_profile(normalised, radius_eq, n_bins=n_bins)
    freq = np.arange(n_bins) / box_a
    mean = fit.mean_defocus_a
    chi = microscope.chi(freq**2, np.zeros(n_bins), mean, mean, 0.0, fit.phase_shift_rad)
    ctf_abs = np.abs(np.sin(chi))
    period_px = _ring_period_px(freq, mean, microscope, box_a)
    filled = counts > 0
    cc, slope, n = _windowed_fit(astig, ctf_abs**2, filled, np.clip(period_px, 2.5, n_bins))
    return {
        "freq": freq,
        "rot": rot,
        "astig": astig,
        "filled": filled,
        "ctf_abs": ctf_abs,
        "period_px": period_px,
        "cc": cc,
        "slope": slope,
        "n": n,
    }


def fit_profile(
    normalised: np.ndarray,
    fit: CtfFit,
    microscope: Microscope,
    *,
    pixel_size_a: float,
    min_res_a: float,
    max_res_a: float,
) -> FitProfile:
    """1D profiles of the spectrum and the fit, their windowed correlation and the fit resolution.

    Each pixel is moved to the radius at which the mean defocus gives it the same phase χ
    (undoing the astigmatism), and the normalised spectrum is averaged in 1-px rings out to the
    corner of the box. The correlation with CTF² is taken in a window of ±1 Thon ring (at
    least ±2.5 px) around each radius, after removing a linear trend. Scanning outwards from
    the first CTF zero (or the start of the fitting band, whichever is further out), the fit
    resolution is the last radius with a correlation of at least :data:`FIT_CC_THRESHOLD`
    before it stays below for more than a ring (and more than 3 px); if fewer than 3 radii
    reach it, it is the start of the scan. It is never finer than Nyquist.
    """
    tile = normalised.shape[0]
    k_min, _ = _frequency_limits(tile, pixel_size_a, min_res_a, max_res_a)
    box_a = tile * pixel_size_a
    prof = _profiles(normalised, fit, microscope, pixel_size_a=pixel_size_a)
    cc, period_px, freq = prof["cc"], prof["period_px"], prof["freq"]
    mean = fit.mean_defocus_a
    first_zero_k = np.sqrt(1.0 / (microscope.wavelength_a * mean)) if mean > 0 else k_min
    start = min(int(np.ceil(max(k_min, first_zero_k) * box_a)), tile // 2)
    last_good, n_above, bad_run = start, 0, 0
    for i in range(start, tile // 2 + 1):
        if cc[i] >= FIT_CC_THRESHOLD:
            n_above += 1
            last_good, bad_run = i, 0
            continue
        bad_run += 1
        if bad_run > max(3.0, min(period_px[i], tile)):
            break
    if n_above < 3:
        last_good = start
    # the astigmatism-corrected profile scaled onto |CTF| over the fitting band, for plotting
    astig, ctf_abs = prof["astig"], prof["ctf_abs"]
    # the centre below half the lowest fitted frequency is not part of the normalised spectrum
    filled = prof["filled"] & (freq >= 0.5 * k_min)
    in_band = filled & (freq >= k_min) & (freq <= 1.0 / max_res_a)
    scaled = astig
    if in_band.sum() > 2:
        design = np.stack([np.ones(int(in_band.sum())), ctf_abs[in_band]], axis=1)
        (offset, gain), *_ = np.linalg.lstsq(design, astig[in_band], rcond=None)
        if gain > 0:
            scaled = (astig - offset) / gain
    return FitProfile(
        frequency_a=freq,
        rotational_average=np.where(filled, prof["rot"], 0.0),
        astig_average=np.where(filled, scaled, 0.0),
        ctf_fit=ctf_abs,
        fit_cc=cc,
        noise_cc_2sigma=2.0 / np.sqrt(np.maximum(prof["n"] - 2.0, 1.0)),
        fit_resolution_a=float(box_a / max(last_good, 1)),
    )


def ring_amplitude(
    normalised: np.ndarray, fit: CtfFit, microscope: Microscope, *, pixel_size_a: float
) -> np.ndarray:
    """The Thon-ring amplitude that ``fit`` finds at each pixel's radius, largest = 1.

    The windowed regression slope (±1 ring, linear trend removed) of the astigmatism-corrected
    profile on CTF²; the spectrum is normalised to unit noise, so this is a signal-to-noise
    ratio. Negative slopes count as 0. Returns the whole grid (ones if no ring is found).
    """
    tile = normalised.shape[0]
    prof = _profiles(normalised, fit, microscope, pixel_size_a=pixel_size_a)
    amplitude = np.maximum(prof["slope"], 0.0)
    if not amplitude.max() > 0:
        return np.ones_like(normalised, dtype=np.float64)
    return np.interp(radius_grid_px(tile), np.arange(amplitude.size), amplitude / amplitude.max())


def ctf_squared_image(tile: int, fit: CtfFit, microscope: Microscope, *, pixel_size_a: float) -> np.ndarray:
    """CTF² of ``fit`` on the centred ``tile × tile`` grid of a spectrum (float64)."""
    grid = _grid(tile)
    s = grid.s_a2(pixel_size_a)
    lam = microscope.wavelength_a
    half = 0.5 * (fit.defocus_u_a - fit.defocus_v_a)
    two_az = np.radians(2.0 * fit.azimuth_deg)
    defocus = fit.mean_defocus_a + half * (np.cos(two_az) * grid.cos2 + np.sin(two_az) * grid.sin2)
    chi = np.pi * lam * s * defocus - 0.5 * np.pi * microscope.cs_mm * 1e7 * lam**3 * s * s
    chi += fit.phase_shift_rad + np.arcsin(microscope.amplitude_contrast)
    return (0.5 * (1.0 - np.cos(2.0 * chi))).reshape(tile, tile)


def background_window_px(tile: int, defocus_a: float, microscope: Microscope, *, pixel_size_a: float) -> np.ndarray:
    """Smoothing width for :func:`emlive.ctf.spectrum.remove_background` at each integer radius.

    The Thon ring spacing of ``defocus_a`` (a triangle of that half-width nulls rings of that
    spacing and keeps the smooth background), clipped to 3 … tile/8 px.
    """
    box_a = tile * pixel_size_a
    radii = np.arange(int(np.ceil(tile / np.sqrt(2.0))) + 3, dtype=np.float64)
    period = _ring_period_px(np.maximum(radii, 1.0) / box_a, defocus_a, microscope, box_a)
    return np.clip(period, 3.0, tile / 8.0)


def fit_spectrum(
    spectrum: np.ndarray,
    microscope: Microscope,
    *,
    pixel_size_a: float,
    min_res_a: float,
    max_res_a: float,
    min_defocus_a: float,
    max_defocus_a: float,
    fit_phase_shift: bool = False,
    expected_astigmatism_a: float | None = None,
) -> SpectrumFit:
    """The whole fit of an averaged amplitude spectrum (centred, as from
    :func:`emlive.ctf.spectrum.average_amplitude_spectrum`): steps 1–6 of this module's docstring.

    The background is removed twice: first smoothing over the ring spacing of
    ``min_defocus_a`` (wide enough for any defocus searched), then, once the defocus is known,
    over the ring spacing of the fit, which follows the background closer at low resolution.
    """
    tile = spectrum.shape[0]
    limits = dict(pixel_size_a=pixel_size_a, min_res_a=min_res_a, max_res_a=max_res_a)
    search = dict(
        limits,
        min_defocus_a=min_defocus_a,
        max_defocus_a=max_defocus_a,
        fit_phase_shift=fit_phase_shift,
        expected_astigmatism_a=expected_astigmatism_a,
    )
    low_cut_px = 0.5 * tile * pixel_size_a / min_res_a
    normalised, background = remove_background(
        spectrum,
        window_px=background_window_px(tile, min_defocus_a, microscope, pixel_size_a=pixel_size_a),
        low_cut_px=low_cut_px,
    )
    fit = fit_ctf(normalised, microscope, **search)
    normalised, background = remove_background(
        spectrum,
        window_px=background_window_px(tile, fit.mean_defocus_a, microscope, pixel_size_a=pixel_size_a),
        low_cut_px=low_cut_px,
        rings=ctf_squared_image(tile, fit, microscope, pixel_size_a=pixel_size_a),
    )
    amplitude = ring_amplitude(normalised, fit, microscope, pixel_size_a=pixel_size_a)
    # inside the first zero a Thon ring is wider than half its radius: no smoothing can tell
    # it from the background there, so the refinement starts at the first zero (or min_res_a)
    start_res_a = float(np.sqrt(microscope.wavelength_a * fit.mean_defocus_a))
    fit = refine_fit(normalised, fit, microscope, **search, amplitude=amplitude, start_res_a=start_res_a)
    profile = fit_profile(normalised, fit, microscope, **limits)
    n_band = _band_index(tile, float(pixel_size_a), float(min_res_a), float(max_res_a))[0].size
    n_independent = n_band / neighbour_correlation_factor(normalised, fit, microscope, **limits)
    significance = fit_significance(fit.cross_correlation, n_independent)
    fit_ok = significance >= FIT_SIGNIFICANCE_MIN
    if not fit_ok:
        profile = replace(profile, fit_resolution_a=float(min_res_a))
    return SpectrumFit(
        fit=fit,
        profile=profile,
        normalised=normalised,
        background=background,
        significance=significance,
        fit_ok=fit_ok,
    )
