"""Weighted back-projection of an aligned tilt series (pure kernel).

Geometry and sign conventions are those of :mod:`emlive.tomo.geometry`: each tilt is first
resampled into the axis frame (its shift undone, rotated by ``-α`` so the tilt axis runs along
the rows' ``y``), R-weighted along ``u`` (the ramp ``|k|`` of the Ram-Lak kernel, times each
tilt's share of the angular range, with a Gaussian roll-off near Nyquist as IMOD's ``RADIAL``),
then smeared back along its rays: voxel ``(x, y, z)`` takes the filtered value at
``u = x cos θ + z sin θ`` of row ``y``, linearly interpolated.

The back-projection is the same linear map for every ``y`` (the tilt axis), so it is built once
as a sparse matrix ``(nz·nx) × (n_tilts·nu)`` and applied to all rows in one sparse × dense
product: no Python loop over voxels or rows; a 41-tilt 400² stack into 150 slices takes about
a second on one core. The volume keeps the stack's contrast (dense matter dark in a
defocused cryo-EM image stays low-valued).
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.sparse

from emlive.tomo.geometry import axis_frame_images

__all__ = ["back_project", "back_projection_matrix", "interval_weights", "radial_filter"]


def interval_weights(tilt_angles_deg: np.ndarray) -> np.ndarray:
    """Each tilt's share of the angular range, radians: half the gap to each neighbour.

    The end tilts get their one inner half-gap plus the same outside; an uneven series (tilts
    left out) is weighted correctly (IMOD's ``exact``-free "tilt interval" weighting).
    """
    angles = np.asarray(tilt_angles_deg, dtype=np.float64)
    order = np.argsort(angles)
    sorted_rad = np.deg2rad(angles[order])
    if sorted_rad.size == 1:
        return np.array([np.pi])
    gaps = np.diff(sorted_rad)
    weights = np.empty_like(sorted_rad)
    weights[1:-1] = 0.5 * (gaps[:-1] + gaps[1:])
    weights[0], weights[-1] = gaps[0], gaps[-1]
    out = np.empty_like(weights)
    out[order] = weights
    return out


def radial_filter(n_u: int, *, cutoff: float = 0.45, falloff: float = 0.05) -> np.ndarray:
    """R-weighting along ``u`` for rows zero-padded to ``2 n_u``: rfft-grid weights (n_u + 1,).

    The discrete ramp is the spectrum of the Ram-Lak kernel (``1/4`` at 0, ``-1/(π m)²`` at odd
    ``m``), so the mean is kept right; above ``cutoff`` cycles/px a Gaussian of ``falloff``
    rolls it off (IMOD's ``RADIAL 0.45 0.05``-like).
    """
    size = 2 * n_u
    m = np.fft.fftfreq(size, d=1.0 / size)
    kernel = np.zeros(size)
    kernel[0] = 0.25
    odd = (np.abs(m) % 2) == 1
    kernel[odd] = -1.0 / (np.pi * m[odd]) ** 2
    ramp = np.abs(scipy.fft.rfft(kernel))
    k = np.fft.rfftfreq(size)
    roll = np.where(k > cutoff, np.exp(-0.5 * ((k - cutoff) / falloff) ** 2), 1.0)
    return ramp * roll


def back_projection_matrix(
    tilt_angles_deg: np.ndarray, *, n_u: int, nx: int, nz: int, weights: np.ndarray | None = None
) -> scipy.sparse.csr_matrix:
    """Sparse ``(nz·nx) × (n·n_u)`` float32 map from filtered axis-frame rows to a volume slice.

    Row ``z·nx + x`` sums, over tilts ``i``, ``weights[i]`` × the linear interpolation of tilt
    ``i``'s row at ``u = x cos θ_i + z sin θ_i`` (centres at ``(n - 1) / 2``). Its transpose is
    the matching forward projector.
    """
    angles = np.deg2rad(np.asarray(tilt_angles_deg, dtype=np.float64))
    n = angles.size
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    x = np.arange(nx) - (nx - 1) / 2.0
    z = np.arange(nz) - (nz - 1) / 2.0
    voxel = np.arange(nz * nx).reshape(nz, nx)
    rows, cols, data = [], [], []
    for i, theta in enumerate(angles):
        u = z[:, None] * np.sin(theta) + x[None, :] * np.cos(theta) + (n_u - 1) / 2.0
        i0 = np.floor(u).astype(np.int64)
        frac = u - i0
        for offset, value in ((0, 1.0 - frac), (1, frac)):
            index = i0 + offset
            keep = (index >= 0) & (index < n_u) & (value > 0)
            rows.append(voxel[keep])
            cols.append(i * n_u + index[keep])
            data.append((w[i] * value[keep]).astype(np.float32))
    matrix = scipy.sparse.coo_matrix(
        (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(nz * nx, n * n_u)
    )
    return matrix.tocsr()


def back_project(
    stack: np.ndarray,
    tilt_angles_deg: np.ndarray,
    *,
    tilt_axis_deg: float,
    shifts_px: np.ndarray,
    thickness_px: int,
    exclude: tuple[int, ...] | list[int] = (),
    shape_yx: tuple[int, int] | None = None,
    cutoff: float = 0.45,
    falloff: float = 0.05,
    interpolation_order: int = 3,
    workers: int | None = None,
) -> np.ndarray:
    """Weighted back-projection: volume ``(thickness_px, ny, nx)`` float32 in the specimen frame.

    ``stack`` (n, ny, nx) images in any order with ``tilt_angles_deg`` (n,); ``shifts_px``
    (n, 2) and ``tilt_axis_deg`` as :func:`emlive.tomo.align.align_tilt_series` returns them
    (:mod:`emlive.tomo.geometry`); ``exclude`` indices left out (their shifts may be NaN).
    ``shape_yx`` is the volume's ``(ny, nx)`` (default the images'): ``y`` along the tilt axis.
    Each tilt's mean is removed and the area outside its image is filled with that mean before
    filtering, so image edges do not streak.
    """
    stack = np.asarray(stack)
    angles = np.asarray(tilt_angles_deg, dtype=np.float64)
    n = stack.shape[0]
    if angles.shape != (n,):
        raise ValueError(f"{n} images but {angles.size} tilt angles")
    shifts = np.asarray(shifts_px, dtype=np.float64)
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts_px must be ({n}, 2) for {n} tilts, got {shifts.shape}")
    if thickness_px < 1:
        raise ValueError(f"thickness_px must be at least 1, got {thickness_px}")
    keep = np.array([i for i in range(n) if i not in set(exclude)], dtype=np.int64)
    if keep.size == 0:
        raise ValueError("every tilt is excluded: nothing to reconstruct")
    if not np.all(np.isfinite(shifts[keep])):
        raise ValueError("shifts_px has NaN for tilts that are not excluded")
    ny, nx = shape_yx or stack.shape[1:]
    images = stack[keep].astype(np.float32)
    means = images.reshape(keep.size, -1).mean(axis=1)
    images -= means[:, None, None]
    aligned = axis_frame_images(
        images, tilt_axis_deg=tilt_axis_deg, shifts_px=shifts[keep], out_shape=(ny, nx), order=interpolation_order
    )
    spectra = scipy.fft.rfft(aligned, n=2 * nx, axis=2, workers=workers)
    spectra *= radial_filter(nx, cutoff=cutoff, falloff=falloff).astype(np.float32)
    filtered = scipy.fft.irfft(spectra, n=2 * nx, axis=2, workers=workers)[:, :, :nx].astype(np.float32)
    del spectra, aligned
    matrix = back_projection_matrix(
        angles[keep], n_u=nx, nx=nx, nz=int(thickness_px), weights=interval_weights(angles[keep]) / 2.0
    )
    # rows of every tilt stacked as (n·nu, ny): one sparse × dense product for all y
    columns = np.ascontiguousarray(filtered.transpose(0, 2, 1)).reshape(keep.size * nx, ny)
    volume = matrix @ columns  # (nz·nx, ny)
    return np.ascontiguousarray(volume.reshape(int(thickness_px), nx, ny).transpose(0, 2, 1), dtype=np.float32)
