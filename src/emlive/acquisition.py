"""Instrument and acquisition parameters: what the microscope did, not how we process it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat


class Optics(BaseModel):
    """The instrument side of a micrograph: what a CTF fit needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pixel_size_a: PositiveFloat = Field(description="Pixel size of the movie in Å")
    voltage_kv: float = Field(300.0, ge=60.0, le=400.0, description="Accelerating voltage in kV")
    cs_mm: float = Field(2.7, ge=0.0, le=10.0, description="Spherical aberration in mm")
    amplitude_contrast: float = Field(0.07, ge=0.0, lt=1.0, description="Amplitude contrast fraction")


class Acquisition(Optics):
    """Optics plus how the movie was exposed and recorded: what motion correction needs."""

    dose_per_frame_e_a2: PositiveFloat = Field(
        description="Exposure per movie frame in e/Å² (for EER: per rendered fraction)"
    )
    pre_exposure_e_a2: float = Field(0.0, ge=0.0, description="Exposure before the first frame, e/Å²")
    gain_path: Path | None = Field(None, description="Gain reference (MRC or TIFF), multiplied into frames")
    eer_fractions: int = Field(40, ge=1, description="EER: number of fractions the raw frames are summed into")
    gain_rotation: int = Field(
        0,
        ge=0,
        le=3,
        description="Quarter turns clockwise (as displayed with row 0 at the top) applied to the gain reference "
        "before use: RELION's --gain_rot, MotionCor2's -RotGain",
    )
    gain_flip: Literal["x", "y"] | None = Field(
        None,
        description="Flip of the gain reference after the rotation: 'y' upside down (RELION --gain_flip 1), "
        "'x' left to right (RELION --gain_flip 2)",
    )
    defects_path: Path | None = Field(
        None, description="Detector defects: MotionCor2/RELION 'x y w h' text file, or a mask image (non-zero = bad)"
    )
    eer_upsampling: Literal[1, 2] = Field(1, description="EER: render at the native size (1) or twice it (2, 8K)")
    eer_dose_per_fraction_e_a2: PositiveFloat | None = Field(
        None, description="EER: fractionate by exposure per fraction instead of eer_fractions, e/Å²"
    )
    eer_total_dose_e_a2: PositiveFloat | None = Field(
        None, description="EER: total exposure of a movie, e/Å² (default: the EER's totalDose metadata)"
    )
