"""Synthetic particle micrographs: particles at known positions in ice, imaged with a known CTF.

What is in a micrograph made by :func:`particle_micrograph`:

- **Particles.** One to a few random 3D objects per micrograph (the "classes"): a globular
  cluster of 3D Gaussian blobs filling a sphere of the given diameter, its mass centred on the
  sphere's centre. Each particle is one class turned by a uniformly random 3D rotation and
  projected along z (the projection of a 3D Gaussian is a 2D Gaussian, so this is exact). The
  projected phase of a particle integrates to ``σ_e · Δv · 0.7 · V_sphere`` (``σ_e`` the
  interaction constant at the voltage, ``Δv = protein_contrast_v`` volts between protein and ice,
  0.7 of the sphere's volume filled).
- **Positions.** Particle centres lie at least ``min_separation_d`` diameters apart (no two
  particles overlap) and at least one diameter from the image edges; ``"crowded"`` packs
  them until no more fit (random sequential adsorption, about half of the area covered).
- **Ice, carbon, contamination.** The expected image is
  ``dose · T(r) · (1 + 2 · CTF ⊛ φ(r))`` (weak-phase approximation; ``CTF = -sin χ`` of
  :func:`emlive.optics.ctf_2d` with a B-factor envelope, so particles are dark at low
  resolution in underfocus), where ``T`` is the transmission: 1 in ice; ``carbon_transmission``
  on the carbon film (which also adds its own random phase texture); a linear ramp for an ice
  gradient; about 0.25 inside a contamination blob (a dark disc several diameters across).
- **Noise.** Poisson counts of the expected image (``dose_e_per_a2 · pixel_size_a²`` electrons
  per pixel in clear ice), returned as float32.

Ground truth: ``positions_px`` holds only the particles a picker should find — whole in ice:
centres at least a particle radius from the carbon film and from any contamination.
Particles placed on carbon (a few, at a third of the ice density, as happens on real grids),
across the film's edge, or touching contamination are in ``rejected_positions_px``; a pick on
one of them counts as a false positive.

Conventions: arrays ``[y, x]`` (row 0 first, as stored in an MRC file); positions ``(x, y)`` in
pixels of the image (x = column, y = row, the centre of pixel ``[j, i]`` is ``(i, j)``). Defocus
in Å, positive underfocus, ``defocus_u_a >= defocus_v_a``, azimuth in degrees from +x
(as :mod:`emlive.optics`).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import scipy.fft
from scipy.spatial.transform import Rotation

from emlive.acquisition import Optics
from emlive.io.mrc import write_mrc_atomic
from emlive.optics import ctf_2d, electron_wavelength_a, frequency_grid

__all__ = [
    "MicrographKind",
    "ParticleMicrograph",
    "interaction_constant_rad_per_v_a",
    "particle_micrograph",
    "particle_positions",
    "random_particle",
    "write_particle_micrograph",
]

MicrographKind = Literal["normal", "crowded", "empty", "carbon", "gradient", "contamination"]
MICROGRAPH_KINDS: tuple[str, ...] = get_args(MicrographKind)

# Fraction of the particle sphere's volume filled with protein.
_FILL = 0.7
# Fraction of the image area covered by particle discs in a "normal" micrograph.
_NORMAL_COVERAGE = 0.2
# Density of particles on carbon relative to the ice.
_CARBON_DENSITY = 0.33
# Transmission inside a contamination blob (thick ice or ethane: very dark).
_CONTAMINATION_TRANSMISSION = 0.25


@dataclass(frozen=True, eq=False)
class ParticleMicrograph:
    """A synthetic micrograph and what was put into it (see the module docstring).

    ``image`` is float32 ``(ny, nx)`` electron counts per pixel. ``positions_px`` is ``(n, 2)``
    float64 ``(x, y)`` in pixels: the particles in ice, the ground truth of picking.
    ``rejected_positions_px`` ``(m, 2)``: particles on carbon (not to be picked).
    ``carbon_mask`` and ``contamination_mask`` are bool ``(ny, nx)``, True where the film or the
    contamination is.
    """

    image: np.ndarray
    positions_px: np.ndarray
    rejected_positions_px: np.ndarray
    diameter_a: float
    pixel_size_a: float
    dose_e_per_a2: float
    defocus_u_a: float
    defocus_v_a: float
    azimuth_deg: float
    carbon_mask: np.ndarray
    contamination_mask: np.ndarray
    kind: str
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07

    @property
    def diameter_px(self) -> float:
        return self.diameter_a / self.pixel_size_a

    @property
    def n_particles(self) -> int:
        """Number of ground-truth particles (in ice)."""
        return len(self.positions_px)

    def optics(self) -> Optics:
        return Optics(
            pixel_size_a=self.pixel_size_a,
            voltage_kv=self.voltage_kv,
            cs_mm=self.cs_mm,
            amplitude_contrast=self.amplitude_contrast,
        )


def interaction_constant_rad_per_v_a(voltage_kv: float) -> float:
    """Electron interaction constant σ_e in rad/(V·Å) (relativistic; 6.5e-4 at 300 kV)."""
    rest_energy_ev = 510998.95
    volts = voltage_kv * 1e3
    wavelength_a = electron_wavelength_a(voltage_kv)
    return float(
        2.0 * math.pi / (wavelength_a * volts) * (rest_energy_ev + volts) / (2.0 * rest_energy_ev + volts)
    )


def random_particle(
    rng: np.random.Generator,
    *,
    diameter_a: float,
    n_blobs: int = 48,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random globular 3D object: Gaussian blobs inside a sphere of ``diameter_a``.

    Returns ``(centres_a, sigmas_a, weights)``: ``(n, 3)`` blob centres (x, y, z) in Å about the
    object's centre of mass (weighted centroid exactly 0), ``(n,)`` blob widths in Å (two
    sizes: a tenth and a twentieth of the diameter), ``(n,)`` positive weights summing to 1.
    """
    radius_a = 0.5 * diameter_a
    sigmas_a = np.where(np.arange(n_blobs) % 3 == 0, diameter_a / 20.0, diameter_a / 10.0)
    # uniform in the sphere shrunk by 1.5 sigma, so the blobs stay (mostly) within the diameter
    direction = rng.standard_normal((n_blobs, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    reach = np.maximum(radius_a - 1.5 * sigmas_a, 0.0) * rng.random(n_blobs) ** (1.0 / 3.0)
    centres = direction * reach[:, None]
    weights = rng.uniform(0.5, 1.5, n_blobs)
    weights /= weights.sum()
    centres -= (weights[:, None] * centres).sum(axis=0)
    return centres, sigmas_a, weights


def particle_positions(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    min_separation_px: float,
    margin_px: float,
    n_max: int | None = None,
    max_failures: int = 2000,
) -> np.ndarray:
    """Random positions ``(n, 2)`` ``(x, y)`` px at least ``min_separation_px`` apart.

    Random sequential adsorption: candidates uniform in the image less ``margin_px`` on every
    side, each kept if no kept position is closer than ``min_separation_px``; stops after
    ``n_max`` positions or ``max_failures`` rejected candidates in a row (the area is then
    jammed: about 55 % of it is covered by discs of diameter ``min_separation_px``).
    """
    ny, nx = shape
    lo_x, hi_x = margin_px, nx - 1 - margin_px
    lo_y, hi_y = margin_px, ny - 1 - margin_px
    if hi_x <= lo_x or hi_y <= lo_y or (n_max is not None and n_max <= 0):
        return np.zeros((0, 2))
    cell = min_separation_px / math.sqrt(2.0)  # at most one position per cell
    grid_shape = (int((hi_y - lo_y) / cell) + 1, int((hi_x - lo_x) / cell) + 1)
    grid = np.full(grid_shape, -1, dtype=np.int64)
    kept: list[tuple[float, float]] = []
    failures = 0
    sep2 = min_separation_px**2
    batch = 4096
    while failures < max_failures and (n_max is None or len(kept) < n_max):
        xs = rng.uniform(lo_x, hi_x, batch)
        ys = rng.uniform(lo_y, hi_y, batch)
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            gi, gj = int((y - lo_y) / cell), int((x - lo_x) / cell)
            near = grid[max(gi - 2, 0) : gi + 3, max(gj - 2, 0) : gj + 3]
            ok = True
            for k in near[near >= 0].tolist():
                px, py = kept[k]
                if (px - x) ** 2 + (py - y) ** 2 < sep2:
                    ok = False
                    break
            if ok:
                grid[gi, gj] = len(kept)
                kept.append((x, y))
                failures = 0
                if n_max is not None and len(kept) >= n_max:
                    break
            else:
                failures += 1
                if failures >= max_failures:
                    break
    return np.asarray(kept, dtype=np.float64).reshape(-1, 2)


def _splat(image: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
    """Add weights ``w`` at sub-pixel points ``(x, y)`` by bilinear splatting (periodic)."""
    ny, nx = image.shape
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    index = np.concatenate(
        [((y0 + dy) % ny) * nx + (x0 + dx) % nx for dy in (0, 1) for dx in (0, 1)]
    )
    weight = np.concatenate(
        [w * wy * wx for wy in (1.0 - fy, fy) for wx in (1.0 - fx, fx)]
    )
    image.reshape(-1)[:] += np.bincount(index, weights=weight, minlength=ny * nx).astype(image.dtype)


def _carbon_film(
    rng: np.random.Generator, shape: tuple[int, int], fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Carbon outside a large circular hole whose edge crosses the image, ``fraction`` of it.

    Returns the mask (True on carbon) and the signed distance in px from the hole's edge
    (positive in the hole, i.e. in the ice)."""
    ny, nx = shape
    size = max(ny, nx)
    hole_radius = rng.uniform(1.0, 2.0) * size
    angle = rng.uniform(0.0, 2.0 * math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    centre = np.array([nx / 2.0, ny / 2.0])
    y = np.arange(ny, dtype=np.float32)[:, None]
    x = np.arange(nx, dtype=np.float32)[None, :]

    def outside_fraction(offset: float) -> float:
        c = centre - direction * (hole_radius - offset)
        return float(((x[:, ::8] - c[0]) ** 2 + (y[::8] - c[1]) ** 2 > hole_radius**2).mean())

    # the hole's centre lies along ``direction`` from the image centre: bisect on its offset
    lo, hi = -2.0 * size, 2.0 * size
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if outside_fraction(mid) > fraction:
            lo = mid
        else:
            hi = mid
    c = centre - direction * (hole_radius - 0.5 * (lo + hi))
    inside_by = np.float32(hole_radius) - np.sqrt((x - np.float32(c[0])) ** 2 + (y - np.float32(c[1])) ** 2)
    return inside_by < 0, inside_by


def _contamination(
    rng: np.random.Generator, shape: tuple[int, int], *, diameter_px: float, n_blobs: int
) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """Transmission (float32) of ``n_blobs`` dark discs 4–8 particle diameters across, and the
    discs ``(x, y, radius)`` in px."""
    ny, nx = shape
    y = np.arange(ny, dtype=np.float32)[:, None]
    x = np.arange(nx, dtype=np.float32)[None, :]
    transmission = np.ones(shape, dtype=np.float32)
    discs = []
    for _ in range(n_blobs):
        radius = rng.uniform(2.0, 4.0) * diameter_px
        cx, cy = rng.uniform(radius, nx - radius), rng.uniform(radius, ny - radius)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        edge = np.clip((radius - r) / (0.1 * radius) + 0.5, 0.0, 1.0)  # soft edge, 10 % of the radius
        transmission *= 1.0 - (1.0 - _CONTAMINATION_TRANSMISSION) * edge
        discs.append((float(cx), float(cy), float(radius)))
    return transmission, discs


def _poisson(rng: np.random.Generator, expected: np.ndarray, *, workers: int) -> np.ndarray:
    """Poisson counts of ``expected`` as float32, drawn in row blocks in threads (one generator each)."""
    out = np.empty(expected.shape, dtype=np.float32)
    blocks = np.array_split(np.arange(expected.shape[0]), max(1, workers))
    generators = rng.spawn(len(blocks))

    def draw(i: int) -> None:
        rows = blocks[i]
        if rows.size:
            sl = slice(int(rows[0]), int(rows[-1]) + 1)
            out[sl] = generators[i].poisson(np.maximum(expected[sl], 0.0))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(draw, range(len(blocks))))
    return out


def particle_micrograph(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (4096, 4096),
    pixel_size_a: float = 1.0,
    diameter_a: float = 150.0,
    kind: MicrographKind = "normal",
    dose_e_per_a2: float = 40.0,
    defocus_u_a: float | None = None,
    defocus_v_a: float | None = None,
    azimuth_deg: float | None = None,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    bfactor_a2: float = 100.0,
    protein_contrast_v: float = 2.0,
    n_classes: int = 2,
    coverage: float | None = None,
    min_separation_d: float = 1.05,
    carbon_fraction: float = 0.35,
    carbon_transmission: float = 0.85,
    carbon_texture_rad: float = 0.1,
    workers: int | None = None,
) -> ParticleMicrograph:
    """A micrograph of ``kind`` with particles of ``diameter_a`` at known positions.

    ``kind``: ``"normal"`` (``coverage`` of the area in particle discs, default 0.2),
    ``"crowded"`` (as many as fit ``min_separation_d`` diameters apart), ``"empty"`` (ice
    only), ``"carbon"`` (a carbon film covers ``carbon_fraction`` of the image beyond the
    curved edge of a hole), ``"gradient"`` (normal, plus an ice-thickness ramp: transmission
    from 1 to 0.7 across the image in a random direction), ``"contamination"`` (normal, plus
    one or two dark blobs 4–8 diameters across).

    Defocus U/V (Å, underfocus positive) default to a random mean in 8000–30000 Å with up to
    500 Å astigmatism; ``azimuth_deg`` to a random angle. ``protein_contrast_v`` is the mean
    potential difference between protein and ice (V). Noise: Poisson at ``dose_e_per_a2``.
    A 4096² image takes a few seconds (FFTs and Poisson draws with ``workers`` threads,
    default all CPUs).
    """
    if kind not in MICROGRAPH_KINDS:
        raise ValueError(f"kind must be one of {MICROGRAPH_KINDS}, got {kind!r}")
    if not (diameter_a > 0 and pixel_size_a > 0 and dose_e_per_a2 > 0):
        raise ValueError("diameter_a, pixel_size_a and dose_e_per_a2 must be positive")
    workers = workers or os.cpu_count() or 1
    ny, nx = shape
    diameter_px = diameter_a / pixel_size_a
    if defocus_u_a is None:
        mean_a = rng.uniform(8000.0, 30000.0)
        astig_a = rng.uniform(0.0, 500.0)
        defocus_u_a, defocus_v_a = mean_a + 0.5 * astig_a, mean_a - 0.5 * astig_a
    if defocus_v_a is None:
        defocus_v_a = defocus_u_a
    if azimuth_deg is None:
        azimuth_deg = float(rng.uniform(0.0, 180.0))

    # where the particles go
    margin_px = diameter_px
    if kind == "empty":
        positions = np.zeros((0, 2))
    else:
        n_max = None
        if kind != "crowded":
            area = (ny - 2 * margin_px) * (nx - 2 * margin_px)
            n_max = int(round((coverage or _NORMAL_COVERAGE) * area / (math.pi * (0.5 * diameter_px) ** 2)))
        positions = particle_positions(
            rng, shape, min_separation_px=min_separation_d * diameter_px, margin_px=margin_px, n_max=n_max
        )
    carbon = np.zeros(shape, dtype=bool)
    contamination = np.zeros(shape, dtype=bool)
    transmission = np.ones(shape, dtype=np.float32)
    rejected = np.zeros((0, 2))
    if kind == "carbon":
        carbon, hole_depth = _carbon_film(rng, shape, carbon_fraction)
        # a particle counts as in ice when its whole disc is: centre at least a radius from the film
        yi, xi = positions[:, 1].round().astype(int), positions[:, 0].round().astype(int)
        in_ice = hole_depth[yi, xi] >= 0.5 * diameter_px
        on_carbon = carbon[yi, xi]
        keep_rejected = (on_carbon & (rng.random(len(positions)) < _CARBON_DENSITY)) | (~on_carbon & ~in_ice)
        rejected = positions[keep_rejected]
        positions = positions[in_ice]
        transmission[carbon] = carbon_transmission
    elif kind == "gradient":
        angle = rng.uniform(0.0, 2.0 * math.pi)
        y = np.arange(ny, dtype=np.float32)[:, None] - np.float32(ny / 2)
        x = np.arange(nx, dtype=np.float32)[None, :] - np.float32(nx / 2)
        half_diagonal = np.float32(0.5 * math.hypot(nx, ny))
        ramp = (np.float32(math.cos(angle)) * x + np.float32(math.sin(angle)) * y) / half_diagonal
        transmission = (0.85 - 0.15 * ramp).astype(np.float32)
    elif kind == "contamination":
        transmission, discs = _contamination(rng, shape, diameter_px=diameter_px, n_blobs=int(rng.integers(1, 3)))
        contamination = transmission < 0.5 * (1.0 + _CONTAMINATION_TRANSMISSION)
        # particles whose disc touches a contamination are rendered, but not to be picked
        clear = np.ones(len(positions), dtype=bool)
        for cx, cy, radius in discs:
            distance = np.hypot(positions[:, 0] - cx, positions[:, 1] - cy)
            clear &= distance - radius >= 0.5 * diameter_px
        rejected = positions[~clear]
        positions = positions[clear]

    # the projected phase: blobs splatted per width class, each class blurred by its Gaussian
    placed = np.concatenate([positions, rejected])
    classes = [random_particle(rng, diameter_a=diameter_a) for _ in range(max(1, n_classes))]
    sigma_e = interaction_constant_rad_per_v_a(voltage_kv)
    phase_integral_rad_px2 = (
        sigma_e * protein_contrast_v * _FILL * (math.pi / 6.0) * diameter_a**3 / pixel_size_a**2
    )
    widths_px = sorted({float(s) / pixel_size_a for s in classes[0][1]})
    deposits = {w: np.zeros(shape, dtype=np.float32) for w in widths_px}
    if len(placed):
        which = rng.integers(0, len(classes), len(placed))
        rotations = Rotation.random(len(placed), random_state=rng).as_matrix()
        for c, (centres_a, sigmas_a, weights) in enumerate(classes):
            members = np.flatnonzero(which == c)
            if not members.size:
                continue
            # (m, n, 3): each member's blobs turned by its rotation, then projected along z
            turned = np.einsum("mij,nj->mni", rotations[members], centres_a) / pixel_size_a
            xs = turned[..., 0] + placed[members, 0, None]
            ys = turned[..., 1] + placed[members, 1, None]
            w = np.broadcast_to(weights * phase_integral_rad_px2, xs.shape)
            for width in widths_px:
                blobs = np.isclose(sigmas_a / pixel_size_a, width)
                _splat(deposits[width], xs[:, blobs].ravel(), ys[:, blobs].ravel(), w[:, blobs].ravel())
    ky, kx = frequency_grid(shape, pixel_size_a=pixel_size_a)
    k2_a2 = kx * kx + ky * ky
    phase_ft = np.zeros((ny, nx // 2 + 1), dtype=np.complex64)
    for width_px, deposit in deposits.items():
        if deposit.any():
            gaussian = np.exp(np.float32(-2.0 * math.pi**2 * (width_px * pixel_size_a) ** 2) * k2_a2)
            phase_ft += scipy.fft.rfft2(deposit, workers=workers) * gaussian
    if carbon.any():
        # the film's own structure: white phase noise (about 4 Å grain) on the carbon only
        texture = rng.standard_normal(shape, dtype=np.float32) * np.float32(carbon_texture_rad)
        texture *= carbon
        grain = np.exp(np.float32(-2.0 * math.pi**2 * 2.0**2) * k2_a2)
        phase_ft += scipy.fft.rfft2(texture, workers=workers) * grain
    ctf = ctf_2d(
        shape,
        pixel_size_a=pixel_size_a,
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        defocus_u_a=defocus_u_a,
        defocus_v_a=defocus_v_a,
        azimuth_deg=azimuth_deg,
        amplitude_contrast=amplitude_contrast,
    )
    phase_ft *= ctf * np.exp(np.float32(-0.25 * bfactor_a2) * k2_a2)
    contrast = scipy.fft.irfft2(phase_ft, s=shape, workers=workers)
    expected = contrast
    expected *= np.float32(2.0)
    expected += np.float32(1.0)
    expected *= transmission
    expected *= np.float32(dose_e_per_a2 * pixel_size_a**2)
    image = _poisson(rng, expected, workers=workers)
    return ParticleMicrograph(
        image=image,
        positions_px=positions,
        rejected_positions_px=rejected,
        diameter_a=float(diameter_a),
        pixel_size_a=float(pixel_size_a),
        dose_e_per_a2=float(dose_e_per_a2),
        defocus_u_a=float(defocus_u_a),
        defocus_v_a=float(defocus_v_a),
        azimuth_deg=float(azimuth_deg),
        carbon_mask=carbon,
        contamination_mask=contamination,
        kind=kind,
        voltage_kv=float(voltage_kv),
        cs_mm=float(cs_mm),
        amplitude_contrast=float(amplitude_contrast),
    )


def write_particle_micrograph(path: str | os.PathLike[str], micrograph: ParticleMicrograph) -> Path:
    """Write the image as a float32 MRC (pixel size in the header), atomically; return its path.

    The folder is made if it does not exist."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_mrc_atomic(dest, micrograph.image, pixel_size_a=micrograph.pixel_size_a)
    return dest
