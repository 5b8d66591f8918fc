"""Instrument and acquisition parameters: what the microscope did, not how we process it."""

from __future__ import annotations

from pathlib import Path

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
