"""The example step on its own: its kernel against the CTF's closed form, and its engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emlive.acquisition import Acquisition
from emlive.ctf.types import CtfResult
from emlive.motion.types import MotionResult
from emlive.optics import electron_wavelength_a
from emlive.pipeline.step import Inputs
from emlive_thon_rings import THON_RINGS, ThonRingsParams, ctf_zeros_a_inv


@pytest.mark.parametrize("defocus_a", [8000.0, 15000.0, 30000.0])
def test_zeros_match_the_closed_form_without_spherical_aberration(defocus_a):
    wavelength_a = electron_wavelength_a(300.0)
    zeros = ctf_zeros_a_inv(defocus_a=defocus_a, voltage_kv=300.0, cs_mm=0.0, amplitude_contrast=0.0, max_k_a_inv=1 / 4)
    n = np.arange(1, len(zeros) + 1)
    expected = np.sqrt(n / (wavelength_a * defocus_a))  # χ = π λ Δf k² = n π
    assert np.allclose(zeros, expected, atol=2e-5)
    assert len(zeros) == int(wavelength_a * defocus_a / 16)  # every zero up to 4 Å


def test_the_engine_counts_more_rings_for_more_defocus_and_writes_them(tmp_path: Path):
    def run(defocus_a: float):
        ctf = CtfResult(
            defocus_u_a=defocus_a, defocus_v_a=defocus_a, azimuth_deg=0.0, cross_correlation=0.3,
            fit_resolution_a=4.0, fit_ok=True, ice_ring_ratio=None, output_txt_path=tmp_path / "c.txt",
            avrot_path=tmp_path / "a.txt", diagnostic_png_path=tmp_path / "c.png",
        )
        motion = MotionResult(
            shifts_px=[(0, 0)], total_drift_a=0, early_drift_a=0, late_drift_a=0, micrograph_path=tmp_path / "m.mrc",
            dose_weighted_path=tmp_path / "m_DW.mrc", star_path=tmp_path / "m.star", pixel_size_a=1.0, n_frames=1,
        )
        inputs = Inputs(
            source_path=tmp_path / "m.tif", stem=f"m{int(defocus_a)}",
            acquisition=Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0), results={"ctf": ctf, "motion": motion},
        )
        return THON_RINGS.engine("native").run(inputs, tmp_path, ThonRingsParams())

    near, far = run(10000.0), run(25000.0)
    assert far.n_thon_rings > near.n_thon_rings > 5
    assert far.ring_spacing_px < near.ring_spacing_px
    lines = far.rings_path.read_text().split()
    assert len(lines) == far.n_thon_rings and float(lines[-1]) >= 4.0
