"""Synthetic micrographs with a known CTF for the CTF tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from emlive.acquisition import Optics
from emlive.synth import specimen_image


def noisy_micrograph(
    seed: int,
    *,
    shape: tuple[int, int] = (1024, 1024),
    pixel_size_a: float,
    defocus_u_a: float,
    defocus_v_a: float,
    azimuth_deg: float,
    phase_shift_rad: float = 0.0,
    dose_e_per_px: float = 30.0,
    contrast: float = 0.05,
    bfactor_a2: float = 100.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
) -> np.ndarray:
    """Counted micrograph: Poisson(dose × specimen image) with a weak-phase CTF-modulated specimen
    (RMS ``contrast``, B-factor envelope) and a low-frequency texture (synth's defaults).

    ``contrast=0`` gives the same micrograph without Thon rings (texture and shot noise only).
    """
    rng = np.random.default_rng(seed)
    optics = Optics(pixel_size_a=pixel_size_a, voltage_kv=voltage_kv, cs_mm=cs_mm)
    image = specimen_image(
        rng,
        shape,
        optics=optics,
        defocus_u_a=defocus_u_a,
        defocus_v_a=defocus_v_a,
        azimuth_deg=azimuth_deg,
        phase_shift_rad=phase_shift_rad,
        contrast=contrast,
        bfactor_a2=bfactor_a2,
    )
    return rng.poisson(dose_e_per_px * np.maximum(image, 0.0)).astype(np.float32)


def azimuth_error_deg(found_deg: float, true_deg: float) -> float:
    """Difference of two astigmatism azimuths (period 180°), in [0, 90]."""
    return abs((found_deg - true_deg + 90.0) % 180.0 - 90.0)


@pytest.fixture(scope="session")
def micrograph() -> Callable[..., np.ndarray]:
    """Factory of :func:`noisy_micrograph` micrographs."""
    return noisy_micrograph


@pytest.fixture(scope="session")
def azimuth_error() -> Callable[[float, float], float]:
    return azimuth_error_deg
