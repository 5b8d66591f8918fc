"""Tilt-series geometry shared by the phantom, the alignment and the reconstruction (pure).

Conventions (the same in :mod:`emlive.synth.tomo`, :mod:`emlive.tomo.align` and
:mod:`emlive.tomo.reconstruct`):

- Images are ``[y, x]`` (rows, columns); positions and shifts are ``(x, y)`` in pixels of the
  array given, measured from the image centre ``((nx - 1) / 2, (ny - 1) / 2)``.
- Volumes are ``[z, y, x]`` in the *specimen frame*: the tilt axis runs along the volume's
  ``y``; ``z`` is the beam direction at 0° tilt; the centre is ``((n - 1) / 2)`` on each axis.
- Tilting by ``θ`` (degrees) about the axis sends a specimen point ``(x, y, z)`` to
  ``u = x cos θ + z sin θ``, ``v = y`` in the *axis frame* of the image (tilt axis along ``v``).
- The tilt axis angle ``α`` (degrees) is the in-plane angle of the tilt axis from the image's
  ``+y`` axis (rows), counter-clockwise positive when the image is shown with ``+y`` up (row 0 at
  the bottom, as IMOD shows it) — SerialEM's "Tilt axis angle" / RotationAngle, IMOD's and
  RELION's rotation. In the image the axis points along ``(x, y) = (-sin α, cos α)``; an
  axis-frame position ``q = (u, v)`` appears at ``R(α) q`` with
  ``R(α) = [[cos α, -sin α], [sin α, cos α]]``.
- A tilt's shift ``s = (sx, sy)`` is where its content has moved in the image: a specimen
  point appears at ``R(α) (u, v) + s``. :func:`emlive.tomo.align.align_tilt_series` returns
  these shifts and :func:`emlive.tomo.reconstruct.back_project` undoes them. (IMOD's ``.xf``
  holds the correction, i.e. the opposite displacement followed by the rotation by ``-α``.)
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

__all__ = ["axis_frame_images", "rotation_matrix"]


def rotation_matrix(tilt_axis_deg: float) -> np.ndarray:
    """``R(α)`` (2×2, acting on ``(x, y)`` column vectors): axis frame → image."""
    a = np.deg2rad(tilt_axis_deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def axis_frame_images(
    stack: np.ndarray,
    *,
    tilt_axis_deg: float,
    shifts_px: np.ndarray,
    out_shape: tuple[int, int],
    stretch_u: np.ndarray | None = None,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample images into the axis frame: ``out[i](u, v) = stack[i](R(α) (σ_i u, v) + s_i)``.

    ``stack`` (n, ny, nx); ``shifts_px`` (n, 2) the tilts' shifts ``s_i`` (x, y);
    ``stretch_u`` (n,) optional factors ``σ_i`` applied to ``u`` (cosine stretching);
    ``out_shape`` (ny', nx') the axis-frame grid, centred like the images. Points outside an
    image get ``cval``. Interpolation of ``order`` (1 linear, 3 cubic spline). float32.
    """
    n, ny, nx = stack.shape
    shifts = np.asarray(shifts_px, dtype=np.float64).reshape(n, 2)
    stretch = np.ones(n) if stretch_u is None else np.asarray(stretch_u, dtype=np.float64)
    rot = rotation_matrix(tilt_axis_deg)
    oy, ox = out_shape
    v = (np.arange(oy) - (oy - 1) / 2.0)[:, None]
    u = (np.arange(ox) - (ox - 1) / 2.0)[None, :]
    out = np.empty((n, oy, ox), dtype=np.float32)
    for i in range(n):
        us = u * stretch[i]
        x = rot[0, 0] * us + rot[0, 1] * v + shifts[i, 0] + (nx - 1) / 2.0
        y = rot[1, 0] * us + rot[1, 1] * v + shifts[i, 1] + (ny - 1) / 2.0
        out[i] = scipy.ndimage.map_coordinates(
            stack[i], [y, x], order=order, mode="constant", cval=cval, prefilter=order > 1
        )
    return out
