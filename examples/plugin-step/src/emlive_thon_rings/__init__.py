"""thon_rings: how many Thon rings the CTF fit of a micrograph reaches (an emlive plugin step).

A step is a plain function ``run(inputs, out_dir, params) -> Result`` plus one declaration
(:class:`emlive.pipeline.step.Step`). emlive runs it after the steps it needs, checkpoints it,
stores its result and metrics, and shows them in the API and the dashboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from emlive.io.atomic import atomic_write_text
from emlive.metric import Metric
from emlive.optics import electron_wavelength_a
from emlive.pipeline.step import Engine, Inputs, Step

__version__ = "2026.12.3"


class ThonRingsParams(BaseModel):
    """Options, set in emlive's config as ``[steps.thon_rings]``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str = "native"
    box_px: int = Field(512, ge=64, le=4096, description="Spectrum box the ring spacing is given in, px")


class ThonRings(BaseModel):
    """The result: one output file and two metrics."""

    rings_path: Path = Field(description="Resolution of each CTF zero out to the fit resolution, Å, one a line")
    n_thon_rings: Annotated[int, Metric(unit="", better="high", label="Thon rings")]
    ring_spacing_px: Annotated[float, Metric(unit="px", better="high", label="ring spacing at fit resolution")]


def ctf_zeros_a_inv(
    *, defocus_a: float, voltage_kv: float, cs_mm: float, amplitude_contrast: float, max_k_a_inv: float
) -> np.ndarray:
    """Spatial frequencies (1/Å) of the CTF's zeros (χ = nπ, n ≥ 1) up to ``max_k_a_inv``, for
    a defocus in Å (positive = underfocus). Pure."""
    wavelength_a = electron_wavelength_a(voltage_kv)
    k = np.linspace(0.0, max_k_a_inv, 20_001)
    chi = (np.pi * wavelength_a * defocus_a * k**2 - 0.5 * np.pi * cs_mm * 1e7 * wavelength_a**3 * k**4
           + np.arcsin(amplitude_contrast))
    order = np.floor(chi / np.pi)
    crossings = np.flatnonzero(np.diff(order) != 0)
    return k[crossings + 1]


def count_rings(inputs: Inputs, out_dir: Path, params: ThonRingsParams) -> ThonRings:
    """The engine: reads the CTF fit (and the micrograph's pixel size), writes the ring list."""
    ctf, motion = inputs["ctf"], inputs["motion"]
    optics = inputs.acquisition
    max_k = 1.0 / ctf.fit_resolution_a
    zeros = ctf_zeros_a_inv(
        defocus_a=(ctf.defocus_u_a + ctf.defocus_v_a) / 2, voltage_kv=optics.voltage_kv, cs_mm=optics.cs_mm,
        amplitude_contrast=optics.amplitude_contrast, max_k_a_inv=max_k,
    )
    spacing_a_inv = float(np.diff(zeros[-2:])[0]) if len(zeros) >= 2 else max_k
    spacing_px = spacing_a_inv * params.box_px * motion.pixel_size_a
    path = out_dir / f"{inputs.stem}_thon_rings.txt"
    atomic_write_text(path, "".join(f"{1.0 / k:.3f}\n" for k in zeros))
    return ThonRings(rings_path=path, n_thon_rings=len(zeros), ring_spacing_px=round(spacing_px, 4))


THON_RINGS = Step(
    name="thon_rings",
    params=ThonRingsParams,
    result=ThonRings,
    needs={"ctf": ("defocus_u_a", "defocus_v_a", "fit_resolution_a"), "motion": ("pixel_size_a",)},
    engines={"native": Engine(count_rings, __version__)},
    description="Count the Thon rings the CTF fit reaches, and their spacing there (example plugin)",
)
