"""Synthetic drifting movies with known trajectories for the motion tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from emlive import synth
from emlive.acquisition import Optics

PIXEL_SIZE_A = 1.0
OPTICS = Optics(pixel_size_a=PIXEL_SIZE_A)


@dataclass(frozen=True)
class DriftingMovie:
    frames: np.ndarray  # (n, ny, nx) float32 counts
    truth_px: np.ndarray  # (n, 2) content displacement (x, y) of each frame, d_0 = 0
    dose_e_a2_per_frame: float
    pixel_size_a: float = PIXEL_SIZE_A


def make_drifting_movie(
    seed: int,
    *,
    shape: tuple[int, int] = (512, 512),
    n_frames: int = 24,
    dose_e_a2_per_frame: float = 1.0,
    path_length_px: float = 20.0,
    margin_px: int = 48,
) -> DriftingMovie:
    """A counted movie of a CTF-modulated specimen drifting along a known trajectory.

    The specimen is simulated on a larger field and each frame is cropped from it, so content
    enters and leaves at the frame edges as in a real movie (no periodic wrap-around).
    """
    rng = np.random.default_rng(seed)
    truth = synth.trajectory(rng, n_frames=n_frames, amplitude_px=path_length_px)
    field = (shape[0] + 2 * margin_px, shape[1] + 2 * margin_px)
    image = synth.specimen_image(
        rng, field, optics=OPTICS, defocus_u_a=16000.0, defocus_v_a=14500.0, azimuth_deg=35.0
    )
    counts = synth.movie_frames(
        rng, image, truth, dose_e_per_px_per_frame=dose_e_a2_per_frame * PIXEL_SIZE_A**2
    )
    frames = counts[:, margin_px : margin_px + shape[0], margin_px : margin_px + shape[1]]
    return DriftingMovie(frames.astype(np.float32), truth, dose_e_a2_per_frame)


@pytest.fixture
def drifting_movie() -> Callable[..., DriftingMovie]:
    return make_drifting_movie


@pytest.fixture(scope="session")
def movie_1k() -> DriftingMovie:
    """1024² × 24 frames at 0.8 e/Å²/frame, 25 px of drift (shared: it takes seconds to make)."""
    return make_drifting_movie(
        2026, shape=(1024, 1024), n_frames=24, dose_e_a2_per_frame=0.8, path_length_px=25.0
    )
