"""Typed parameters and results of a motion-correction step, shared by every engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from emlive.metric import Metric


class MotionParams(BaseModel):
    """Processing options of motion correction (acquisition values live in ``Acquisition``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str = Field("native", description="Engine that runs the step")
    bfactor_px2: PositiveFloat = Field(150.0, description="B-factor applied before cross-correlation, px²")
    max_shift_px: PositiveFloat = Field(40.0, description="Largest frame shift searched, unbinned px")
    tolerance_px: PositiveFloat = Field(0.01, description="Stop iterating when shifts change less, px")
    max_iterations: int = Field(10, ge=1, le=100)
    bin_factor: float = Field(1.0, ge=1.0, description="Output binning (Fourier cropping)")
    patches: tuple[Annotated[int, Field(ge=1, le=20)], Annotated[int, Field(ge=1, le=20)]] = Field(
        (5, 5), description="Patches (x, y) for local motion; (1, 1) = global alignment only"
    )
    local_max_shift_px: PositiveFloat = Field(
        10.0, description="Largest local (per-patch) correction beyond the global one, unbinned px"
    )
    detect_hot_pixels: bool = Field(True, description="Find and replace pixels far above their neighbourhood")
    float16: bool = Field(False, description="Write the micrographs as float16 (MRC mode 12)")


class MotionResult(BaseModel):
    """What one motion-correction run found and wrote. Shifts are in unbinned movie pixels."""

    model_config = ConfigDict(frozen=True)

    shifts_px: list[tuple[float, float]] = Field(
        description="Per-frame (x, y) correction applied, RELION's rlnMicrographShiftX/Y convention"
    )
    total_drift_a: Annotated[float, Metric("Å", "low", "total drift")] = Field(
        description="Accumulated motion over all frames, Å"
    )
    early_drift_a: Annotated[float, Metric("Å", "low", "early drift")] = Field(
        description="Accumulated motion in the first 4 e/Å², Å"
    )
    late_drift_a: Annotated[float, Metric("Å", "low", "late drift")] = Field(
        description="Accumulated motion after the first 4 e/Å², Å"
    )
    micrograph_path: Path
    dose_weighted_path: Path
    star_path: Path
    pixel_size_a: float = Field(description="Pixel size of the written micrographs, Å")
    n_frames: int
    local_model: list[float] | None = Field(
        None,
        description="RELION 3.1 third-order polynomial coefficients (36: x then y), or None (global only)",
    )
    drift_plot_path: Path | None = Field(None, description="PNG of the trajectory (global, and local at the patches)")
