"""Synthetic particle micrographs on disk, with their truth, for the engine tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emlive.ctf.types import CtfResult
from emlive.synth.particles import ParticleMicrograph, particle_micrograph, write_particle_micrograph


def truth_ctf(m: ParticleMicrograph) -> CtfResult:
    """The CTF a CTF step would have found: the synthetic micrograph's own."""
    return CtfResult(
        defocus_u_a=m.defocus_u_a,
        defocus_v_a=m.defocus_v_a,
        azimuth_deg=m.azimuth_deg,
        cross_correlation=0.2,
        fit_resolution_a=4.0,
        fit_ok=True,
        ice_ring_ratio=1.0,
        output_txt_path=Path("ctf.txt"),
        avrot_path=Path("ctf_avrot.txt"),
        diagnostic_png_path=Path("ctf.png"),
    )


def synthetic(
    tmp_path: Path,
    *,
    seed: int,
    kind: str = "normal",
    diameter_a: float = 150.0,
    shape: tuple[int, int] = (1024, 1024),
    pixel_size_a: float = 2.0,
    **options: object,
) -> tuple[ParticleMicrograph, Path]:
    """A synthetic micrograph written as ``tmp_path/<kind>_<seed>.mrc``, and its truth."""
    m = particle_micrograph(
        np.random.default_rng(seed),
        kind=kind,  # type: ignore[arg-type]
        diameter_a=diameter_a,
        shape=shape,
        pixel_size_a=pixel_size_a,
        **options,  # type: ignore[arg-type]
    )
    return m, write_particle_micrograph(tmp_path / f"{kind}_{seed}.mrc", m)
