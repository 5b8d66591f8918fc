"""Typed parameters and results of a CTF-estimation step, shared by every engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from emlive.metric import Metric


class CtfParams(BaseModel):
    """Processing options of CTF estimation (optics live in ``Optics``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str = Field("native", description="Engine that runs the step")
    tile_size_px: int = Field(512, ge=64, le=4096, description="Box of the averaged spectrum, px")
    min_res_a: PositiveFloat = Field(30.0, description="Lowest resolution fitted, Å")
    max_res_a: PositiveFloat = Field(5.0, description="Highest resolution fitted, Å")
    min_defocus_a: PositiveFloat = Field(5000.0, description="Search range start, Å (underfocus > 0)")
    max_defocus_a: PositiveFloat = Field(50000.0, description="Search range end, Å")
    fit_phase_shift: bool = Field(False, description="Fit a phase-plate phase shift")
    expected_astigmatism_a: PositiveFloat | None = Field(
        None,
        description="Astigmatism restraint (ctffind's expected astigmatism), Å: |U - V| much larger "
        "than this is penalised where the Thon rings cannot tell; None = unrestrained",
    )

    @model_validator(mode="after")
    def _ranges(self) -> CtfParams:
        if self.max_res_a >= self.min_res_a:
            raise ValueError(f"max_res_a ({self.max_res_a} Å) must be finer (smaller) than min_res_a ({self.min_res_a} Å)")
        if self.max_defocus_a <= self.min_defocus_a:
            raise ValueError("max_defocus_a must be larger than min_defocus_a")
        return self


class CtfResult(BaseModel):
    """What one CTF estimation found and wrote (ctffind's seven numbers plus outputs)."""

    model_config = ConfigDict(frozen=True)

    defocus_u_a: Annotated[float, Metric("Å", None, "defocus U")] = Field(
        description="Defocus along the azimuth, Å, positive = underfocus"
    )
    defocus_v_a: Annotated[float, Metric("Å", None, "defocus V")] = Field(
        description="Defocus perpendicular to the azimuth, Å"
    )
    azimuth_deg: float = Field(description="Angle of the defocus-U axis from +x, degrees")
    phase_shift_rad: float = 0.0
    cross_correlation: Annotated[float, Metric("", "high", "CTF fit score")] = Field(
        description="Score of the fit over the fitting band"
    )
    fit_resolution_a: Annotated[float, Metric("Å", "low", "fit resolution")] = Field(
        description="Resolution to which the Thon rings are fitted, Å (the lowest fitted resolution when not fit_ok)"
    )
    fit_ok: bool = Field(
        description="False when no Thon rings were found (the score is not significant above noise): "
        "the defocus is then a guess and the micrograph should be rejected"
    )
    ice_ring_ratio: Annotated[float | None, Metric("", "low", "ice-ring ratio")] = Field(
        description="Power in the 3.9–3.6 Å ice band over the bands beside it (~1: vitreous; higher: "
        "crystalline ice); None when the band lies beyond Nyquist"
    )
    output_txt_path: Path
    avrot_path: Path
    diagnostic_png_path: Path
