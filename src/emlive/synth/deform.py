"""Local (non-uniform) motion with a known displacement field, for movies with ground truth.

Real movies do not move as one piece: the beam makes the ice dome and buckle, so the content
moves differently across the field. :class:`LocalMotion` is a smooth, known field
``D_local(x, y, t)`` on top of the global drift ``d(t)`` of :func:`emlive.synth.trajectory`:
frame ``t`` of a movie shows ``frame_t(r) = image(r - d(t) - D_local(r, t))``
(:func:`warped_images`). Positions ``(x, y)`` are in pixels of the image the field is defined
on; ``t`` is the 0-based frame index; ``D_local(·, 0) = 0`` (frame 0 is the reference).

The field is a sum of a few long-wavelength sine modes (at most half a period across the
image, as beam-induced doming is), each with its own direction, scaled in time by
``h(t) = (1 - exp(-t/τ)) / (1 - exp(-(n-1)/τ))``: fast at first, then slowing, as beam-induced
motion does. It is not a polynomial, so a polynomial model fitted to it is tested for real.

A motion-correction result (RELION's convention) should be ``-(d(t) + D_local(r, t))`` at each
position ``r`` of the reference frame.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.ndimage
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LocalMode", "LocalMotion", "local_motion", "warped_images"]

# Rows of a frame interpolated per task: bounds the coordinate arrays to a few MB.
_ROW_BLOCK = 256


class LocalMode(BaseModel):
    """One sine mode of a local field: ``amplitude · sin(2π (fx x / nx + fy y / ny) + phase)``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fx_cycles: float = Field(description="Cycles across the image width")
    fy_cycles: float = Field(description="Cycles across the image height")
    phase_rad: float
    amplitude_x_px: float
    amplitude_y_px: float


class LocalMotion(BaseModel):
    """A known, smooth, non-uniform displacement field (content displacement, px)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: tuple[int, int] = Field(description="(ny, nx) of the image the field is defined on")
    n_frames: int = Field(ge=1)
    time_constant_frames: float = Field(gt=0)
    modes: list[LocalMode]

    def time_course(self, frame: np.ndarray | float) -> np.ndarray:
        """``h(t)``: 0 at frame 0, 1 at the last frame, fast at first."""
        t = np.asarray(frame, dtype=np.float64)
        last = max(self.n_frames - 1, 1)
        return np.expm1(-t / self.time_constant_frames) / np.expm1(-last / self.time_constant_frames)

    def displacement(
        self, x_px: np.ndarray | float, y_px: np.ndarray | float, frame: np.ndarray | float
    ) -> np.ndarray:
        """``D_local(x, y, t)`` as an array of shape ``broadcast(x, y, t) + (2,)``, (x, y) px."""
        x, y, t = np.broadcast_arrays(
            np.asarray(x_px, dtype=np.float64),
            np.asarray(y_px, dtype=np.float64),
            np.asarray(frame, dtype=np.float64),
        )
        ny, nx = self.shape
        out = np.zeros(x.shape + (2,))
        for mode in self.modes:
            wave = np.sin(2.0 * np.pi * (mode.fx_cycles * x / nx + mode.fy_cycles * y / ny) + mode.phase_rad)
            out[..., 0] += mode.amplitude_x_px * wave
            out[..., 1] += mode.amplitude_y_px * wave
        out *= self.time_course(t)[..., None]
        return out


def local_motion(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int],
    n_frames: int,
    amplitude_px: float,
    n_modes: int = 3,
) -> LocalMotion:
    """A random smooth local field whose largest displacement over the image, at the last
    frame, is ``amplitude_px``.

    ``n_modes`` sine modes with spatial frequencies of 0.15–0.5 cycles across the image in a
    random direction, random phases and random displacement directions; time constant 20–40 %
    of the movie.
    """
    if amplitude_px < 0:
        raise ValueError(f"amplitude_px must be non-negative, got {amplitude_px}")
    modes = []
    for _ in range(n_modes):
        frequency = rng.uniform(0.15, 0.5)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        direction = rng.uniform(0.0, 2.0 * np.pi)
        strength = rng.uniform(0.5, 1.0)
        modes.append(
            LocalMode(
                fx_cycles=frequency * np.cos(angle),
                fy_cycles=frequency * np.sin(angle),
                phase_rad=rng.uniform(0.0, 2.0 * np.pi),
                amplitude_x_px=strength * np.cos(direction),
                amplitude_y_px=strength * np.sin(direction),
            )
        )
    field = LocalMotion(
        shape=shape,
        n_frames=n_frames,
        time_constant_frames=rng.uniform(0.2, 0.4) * max(n_frames, 2),
        modes=modes,
    )
    ny, nx = shape
    gy, gx = np.meshgrid(np.linspace(0, ny - 1, 33), np.linspace(0, nx - 1, 33), indexing="ij")
    largest = float(np.max(np.hypot(*np.moveaxis(field.displacement(gx, gy, n_frames - 1), -1, 0))))
    scale = amplitude_px / largest if largest > 0 else 0.0
    return field.model_copy(
        update={
            "modes": [
                m.model_copy(update={"amplitude_x_px": m.amplitude_x_px * scale, "amplitude_y_px": m.amplitude_y_px * scale})
                for m in modes
            ]
        }
    )


def warped_images(
    image: np.ndarray,
    trajectory_px: np.ndarray,
    field: LocalMotion,
    *,
    first_frame: int = 0,
    workers: int | None = None,
) -> np.ndarray:
    """``out[i](r) = image(r - d_i - D_local(r, first_frame + i))`` (float32 (n, ny, nx)).

    ``trajectory_px`` holds the global displacements ``d_i`` of frames ``first_frame`` onwards.
    ``image`` is taken as periodic and interpolated with cubic B-splines (prefiltered once);
    ``field.shape`` must be ``image.shape``. Rows are interpolated in blocks, in threads.
    """
    image = np.asarray(image, dtype=np.float32)
    if tuple(field.shape) != image.shape:
        raise ValueError(f"the local field is defined on {field.shape}, the image is {image.shape}")
    trajectory_px = np.asarray(trajectory_px, dtype=np.float64).reshape(-1, 2)
    ny, nx = image.shape
    coefficients = scipy.ndimage.spline_filter(image, order=3, mode="grid-wrap", output=np.float64)
    out = np.empty((len(trajectory_px), ny, nx), dtype=np.float32)
    x = np.arange(nx, dtype=np.float64)

    def block(task: tuple[int, int]) -> None:
        t, row0 = task
        rows = np.arange(row0, min(row0 + _ROW_BLOCK, ny), dtype=np.float64)
        gy, gx = np.meshgrid(rows, x, indexing="ij")
        d = field.displacement(gx, gy, first_frame + t)
        d += trajectory_px[t]
        coords = np.stack([gy - d[..., 1], gx - d[..., 0]])
        out[t, row0 : row0 + rows.size] = scipy.ndimage.map_coordinates(
            coefficients, coords, order=3, mode="grid-wrap", prefilter=False
        )

    tasks = [(t, row0) for t in range(len(trajectory_px)) for row0 in range(0, ny, _ROW_BLOCK)]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(pool.map(block, tasks))
    return out
