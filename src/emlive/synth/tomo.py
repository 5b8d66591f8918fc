"""Synthetic tilt series of a 3D phantom with known alignment, defocus, dose and dark tilts.

The phantom is a slab of vitreous ice holding membrane vesicles (spherical bilayer shells),
ribosome-sized particles (two fused spheres) and 10 nm gold beads on both surfaces, in
arbitrary density units (protein 1, membrane 1.2, gold 8; ice 0).

Projections follow :mod:`emlive.tomo.geometry`: the volume is in the specimen frame (tilt axis
along ``y``), a point ``(x, y, z)`` projects at tilt ``θ`` to ``u = x cos θ + z sin θ``,
``v = y``, and appears in the image at ``R(α) (u, v) + s`` with ``α`` the tilt-axis angle and
``s`` the tilt's shift. Each projection is a line integral made exactly for band-limited
content: every z-slice is shifted by ``z tan θ`` along ``x`` with a Fourier phase ramp, the
slices are summed, and the sum is stretched by ``1 / cos θ``, rotated and shifted into the
detector's pixels by one cubic-spline interpolation.

:func:`tilt_series` turns the projections into counts as a microscope records them: weak-phase
images through each tilt's CTF, attenuated by the ice's inelastic scattering along the tilted
path, at the tilt's dose, with Poisson noise; two tilts are dark (the beam mostly blocked,
as by a grid bar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.ndimage

from emlive.optics import ctf_2d
from emlive.tomo.geometry import rotation_matrix

__all__ = [
    "TiltSeriesTruth",
    "dose_symmetric_order",
    "phantom",
    "project",
    "tilt_series",
]

DEFAULT_ANGLES_DEG = tuple(float(a) for a in np.arange(-60.0, 60.0 + 1e-9, 3.0))

# Densities (arbitrary units; ice = 0).
_PROTEIN = 1.0
_MEMBRANE = 1.2
_GOLD = 8.0


@dataclass(frozen=True)
class TiltSeriesTruth:
    """What a synthetic tilt series was made with; per-tilt arrays are in the stack's order.

    ``order[i]`` is tilt ``i``'s acquisition index (0 = first acquired); ``shifts_px`` (n, 2)
    the content displacement (x, y) of each tilt in its pixels (see :mod:`emlive.tomo.geometry`),
    zero for the tilt nearest 0°; ``defocus_a`` positive = underfocus; ``dark`` the indices of
    the dark tilts; ``volume`` the phantom ``[z, y, x]`` in the specimen frame, centred on the
    rotation centre (larger than the images: it covers their field at every tilt).
    """

    tilt_angles_deg: np.ndarray
    order: np.ndarray
    tilt_axis_deg: float
    shifts_px: np.ndarray
    defocus_a: np.ndarray
    dark: tuple[int, ...]
    dose_per_tilt_e_per_a2: float
    pixel_size_a: float
    volume: np.ndarray

    @property
    def pre_exposure_e_per_a2(self) -> np.ndarray:
        """Dose each tilt's specimen had received before that tilt was acquired, e/Å²."""
        return self.order.astype(np.float64) * self.dose_per_tilt_e_per_a2


def dose_symmetric_order(tilt_angles_deg: np.ndarray, *, group_size: int = 2) -> np.ndarray:
    """Acquisition index of each tilt in a Hagen dose-symmetric scheme (0 = first acquired).

    Starts at the tilt nearest 0°, then alternates groups of ``group_size`` tilts on the
    positive side (increasing angle) and the negative side (decreasing angle), positive first;
    when one side runs out the other continues. Returned in the order the angles are given.
    """
    angles = np.asarray(tilt_angles_deg, dtype=np.float64)
    if angles.ndim != 1 or angles.size == 0:
        raise ValueError("tilt_angles_deg must be a non-empty 1D sequence")
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    start = int(np.argmin(np.abs(angles)))
    rest = [i for i in range(angles.size) if i != start]
    positive = sorted((i for i in rest if angles[i] >= angles[start]), key=lambda i: angles[i])
    negative = sorted((i for i in rest if angles[i] < angles[start]), key=lambda i: -angles[i])
    sequence = [start]
    while positive or negative:
        for side in (positive, negative):
            take = side[:group_size]
            del side[:group_size]
            sequence.extend(take)
    order = np.empty(angles.size, dtype=np.int64)
    order[sequence] = np.arange(angles.size)
    return order


def _paint_ball(
    volume: np.ndarray, centre_zyx: np.ndarray, radius_px: float, density: float, *, inner_px: float = 0.0
) -> None:
    """Add a ball (or a shell when ``inner_px`` > 0) with a one-pixel soft edge, in place."""
    lo = np.maximum(np.floor(centre_zyx - radius_px - 1).astype(int), 0)
    hi = np.minimum(np.ceil(centre_zyx + radius_px + 2).astype(int), volume.shape)
    if np.any(hi <= lo):
        return
    z, y, x = (np.arange(a, b, dtype=np.float32) - c for a, b, c in zip(lo, hi, centre_zyx, strict=True))
    d = np.sqrt(z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2)
    value = np.clip(radius_px - d + 0.5, 0.0, 1.0)
    if inner_px > 0:
        value -= np.clip(inner_px - d + 0.5, 0.0, 1.0)
    volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += density * value


def phantom(
    shape_zyx: tuple[int, int, int],
    *,
    pixel_size_a: float,
    seed: int,
    vesicles_per_um2: float = 60.0,
    particles_per_um2: float = 2500.0,
    gold_per_um2: float = 250.0,
    gold_diameter_a: float = 100.0,
) -> np.ndarray:
    """A slab of ice ``[z, y, x]`` float32 filling ``shape_zyx``, with membranes, particles and gold.

    Vesicles (radius 15–45 nm, 4 nm bilayer), particles (two fused spheres, ~25 nm across) and
    gold beads (``gold_diameter_a``) are placed at random with the given numbers per µm² of the
    slab's area; the beads sit on the top and bottom surfaces. The content is spread evenly
    through the thickness, so its centre of mass is the volume's centre.
    """
    nz, ny, nx = shape_zyx
    rng = np.random.default_rng(seed)
    volume = np.zeros(shape_zyx, dtype=np.float32)
    area_um2 = ny * nx * (pixel_size_a * 1e-4) ** 2
    centre_z = (nz - 1) / 2.0

    def place(n: int, radius_px: float) -> np.ndarray:
        half = max(centre_z - radius_px - 1.0, 0.0)
        z = rng.uniform(centre_z - half, centre_z + half, n)
        return np.stack([z, rng.uniform(0, ny - 1, n), rng.uniform(0, nx - 1, n)], axis=1)

    bilayer_px = 40.0 / pixel_size_a
    for _ in range(rng.poisson(vesicles_per_um2 * area_um2)):
        radius = rng.uniform(150.0, 450.0) / pixel_size_a
        radius = min(radius, centre_z - 1.0)
        if radius <= bilayer_px:
            continue
        (centre,) = place(1, radius)
        _paint_ball(volume, centre, radius, _MEMBRANE, inner_px=radius - bilayer_px)
    for centre in place(rng.poisson(particles_per_um2 * area_um2), 125.0 / pixel_size_a):
        big, small = 110.0 / pixel_size_a, 85.0 / pixel_size_a
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        _paint_ball(volume, centre, big, _PROTEIN)
        _paint_ball(volume, centre + direction * 0.8 * big, small, _PROTEIN)
    gold_radius = 0.5 * gold_diameter_a / pixel_size_a
    n_gold = rng.poisson(gold_per_um2 * area_um2)
    surface = np.where(rng.random(n_gold) < 0.5, gold_radius + 0.5, nz - 1.5 - gold_radius)
    for z, y, x in zip(surface, rng.uniform(0, ny - 1, n_gold), rng.uniform(0, nx - 1, n_gold), strict=True):
        _paint_ball(volume, np.array([z, y, x]), gold_radius, _GOLD)
    return volume


def project(
    volume_zyx: np.ndarray,
    tilt_angles_deg: np.ndarray,
    *,
    tilt_axis_deg: float,
    shifts_px: np.ndarray | None = None,
    image_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Line integrals of ``volume_zyx`` at each tilt, in detector pixels (n, ny, nx) float32.

    Geometry of :mod:`emlive.tomo.geometry` (volume in the specimen frame, voxel = pixel);
    ``shifts_px`` (n, 2) displaces each projection's content (x, y); ``image_shape`` defaults to
    the volume's ``(ny, nx)``; the image centre is the volume's centre. Parts of the detector
    that see no volume get 0.
    """
    angles = np.asarray(tilt_angles_deg, dtype=np.float64)
    n = angles.size
    shifts = np.zeros((n, 2)) if shifts_px is None else np.asarray(shifts_px, dtype=np.float64)
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts_px must be ({n}, 2) for {n} tilts, got {shifts.shape}")
    if np.any(np.abs(angles) >= 89.0):
        raise ValueError("tilt angles must be within ±89°")
    nz, ly, lx = volume_zyx.shape
    ny, nx = image_shape or (ly, lx)
    pad = int(math.ceil(0.5 * nz * np.max(np.abs(np.tan(np.deg2rad(angles)))))) + 2
    lxp = lx + 2 * pad
    # (nk, ly, nz) half-spectra along x of the zero-padded z-slices
    spectra = scipy.fft.rfft(np.pad(volume_zyx.astype(np.float32), ((0, 0), (0, 0), (pad, pad))), axis=2)
    spectra = np.ascontiguousarray(spectra.transpose(2, 1, 0))
    k = np.fft.rfftfreq(lxp)
    z = np.arange(nz) - (nz - 1) / 2.0
    rot = rotation_matrix(tilt_axis_deg)
    ry = (np.arange(ny) - (ny - 1) / 2.0)[:, None]
    rx = (np.arange(nx) - (nx - 1) / 2.0)[None, :]
    # Σ_z V_z(w - z tan θ) for every tilt at once: per frequency a (ly, nz) @ (nz, n) product
    tan = np.tan(np.deg2rad(angles))
    ramps = np.exp(-2j * np.pi * k[:, None, None] * z[None, :, None] * tan[None, None, :]).astype(np.complex64)
    sheared = np.matmul(spectra, ramps)  # (nk, ly, n)
    del spectra, ramps
    out = np.empty((n, ny, nx), dtype=np.float32)
    for i, theta in enumerate(np.deg2rad(angles)):
        summed = scipy.fft.irfft(sheared[:, :, i].T, n=lxp, axis=1)
        # detector pixel r -> axis frame q = R^T (r - s) -> w = u / cos θ
        dx, dy = rx - shifts[i, 0], ry - shifts[i, 1]
        u = rot[0, 0] * dx + rot[1, 0] * dy
        v = rot[0, 1] * dx + rot[1, 1] * dy
        coords = [v + (ly - 1) / 2.0, u / np.cos(theta) + (lxp - 1) / 2.0]
        out[i] = scipy.ndimage.map_coordinates(summed, coords, order=3, mode="constant", cval=0.0)
        out[i] /= np.cos(theta)
    return out


def tilt_series(
    seed: int,
    *,
    shape_zyx: tuple[int, int, int] = (64, 256, 256),
    pixel_size_a: float = 10.0,
    tilt_angles_deg: tuple[float, ...] = DEFAULT_ANGLES_DEG,
    tilt_axis_deg: float = 85.0,
    shift_sigma_px: float = 6.0,
    defocus_a: tuple[float, float] = (35000.0, 45000.0),
    dark: tuple[int, ...] = (5, 33),
    dose_per_tilt_e_per_a2: float = 3.0,
    group_size: int = 2,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_per_density: float = 0.006,
    absorption_per_density2: float = 0.0008,
    ice_mean_free_path_px: float | None = None,
    dark_fraction: float = 0.04,
) -> tuple[np.ndarray, TiltSeriesTruth]:
    """A tilt series of counts (n, ny, nx) float32 in angle order, and its truth.

    ``shape_zyx`` is the imaged slab: ``nz`` its thickness, ``(ny, nx)`` the images' size (the
    phantom itself is made larger so the detector sees specimen everywhere at every tilt);
    ``pixel_size_a`` the images' pixel size. Tilts are acquired dose-symmetrically
    (:func:`dose_symmetric_order`); each gets ``dose_per_tilt_e_per_a2``. Shifts are Gaussian
    with ``shift_sigma_px`` per axis (zero for the tilt nearest 0°); defocus is uniform in
    ``defocus_a`` per tilt; each image is the weak-phase image ``1 + 2 CTF ⊛ φ`` of the phase
    ``φ = phase_per_density × projection``, times the ice's transmission
    ``exp(-nz / (λ cos θ))`` (``λ`` = ``ice_mean_free_path_px``, default 3500 Å), times the dose
    per pixel, times the amplitude contrast ``exp(-absorption_per_density2 × ∫ρ²)`` (scattering
    out of the aperture grows with the atomic number: 10 nm gold beads lose ~40 %, protein
    ~2 %), with Poisson noise. The ``dark`` tilts get ``dark_fraction`` of the dose.
    """
    rng = np.random.default_rng(seed)
    angles = np.asarray(tilt_angles_deg, dtype=np.float64)
    n = angles.size
    if any(not 0 <= d < n for d in dark):
        raise ValueError(f"dark tilt indices {dark} out of range for {n} tilts")
    nz, ny, nx = shape_zyx
    zero = int(np.argmin(np.abs(angles)))
    shifts = rng.normal(0.0, shift_sigma_px, (n, 2))
    shifts[zero] = 0.0
    # the specimen area every detector pixel sees at every tilt: the rotated field, widened by
    # 1/cos θ across the axis, plus the slab's sideways reach z tan θ and the shifts
    half_diag = 0.5 * math.hypot(ny, nx)
    max_shift = float(np.max(np.abs(shifts))) + 2.0
    max_tan = float(np.max(np.abs(np.tan(np.deg2rad(angles)))))
    min_cos = float(np.min(np.cos(np.deg2rad(angles))))
    ly = 2 * int(math.ceil(half_diag + max_shift)) + 4
    lx = 2 * int(math.ceil((half_diag + max_shift) / min_cos + 0.5 * nz * max_tan)) + 4
    volume = phantom((nz, ly, lx), pixel_size_a=pixel_size_a, seed=int(rng.integers(2**31)))
    projections = project(volume, angles, tilt_axis_deg=tilt_axis_deg, shifts_px=shifts, image_shape=(ny, nx))
    # scattering outside the objective aperture grows with the atomic number: gold is dark
    absorption = project(volume**2, angles, tilt_axis_deg=tilt_axis_deg, shifts_px=shifts, image_shape=(ny, nx))

    defocus = rng.uniform(defocus_a[0], defocus_a[1], n)
    mean_free_path_px = ice_mean_free_path_px or 3500.0 / pixel_size_a
    dose_px = dose_per_tilt_e_per_a2 * pixel_size_a**2
    counts = np.empty_like(projections)
    for i in range(n):
        ctf = ctf_2d(
            (ny, nx),
            pixel_size_a=pixel_size_a,
            voltage_kv=voltage_kv,
            cs_mm=cs_mm,
            defocus_u_a=defocus[i],
            defocus_v_a=defocus[i],
            azimuth_deg=0.0,
            amplitude_contrast=amplitude_contrast,
        )
        phase_ft = scipy.fft.rfft2(projections[i] * phase_per_density)
        contrast = scipy.fft.irfft2(phase_ft * (2.0 * ctf), s=(ny, nx))
        transmission = math.exp(-nz / (mean_free_path_px * math.cos(math.radians(angles[i]))))
        transmission *= np.exp(-absorption_per_density2 * np.clip(absorption[i], 0.0, None))
        expected = dose_px * transmission * (dark_fraction if i in dark else 1.0) * (1.0 + contrast)
        counts[i] = rng.poisson(np.clip(expected, 0.0, None)).astype(np.float32)
    truth = TiltSeriesTruth(
        tilt_angles_deg=angles,
        order=dose_symmetric_order(angles, group_size=group_size),
        tilt_axis_deg=float(tilt_axis_deg),
        shifts_px=shifts,
        defocus_a=defocus,
        dark=tuple(sorted(dark)),
        dose_per_tilt_e_per_a2=float(dose_per_tilt_e_per_a2),
        pixel_size_a=float(pixel_size_a),
        volume=volume,
    )
    return counts, truth
