"""Typed parameters and results of the particle-picking step, shared by every engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from emlive.metric import Metric


class PickParams(BaseModel):
    """Processing options of particle picking (the micrograph's pixel size comes with it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str = Field("native", description="Engine that runs the step")
    diameter_a: PositiveFloat | None = Field(
        None, description="Particle diameter, Å (required: picking is off until it is given)"
    )
    min_distance_a: PositiveFloat | None = Field(
        None, description="Closest two picks may be, Å (default: the engine's choice from the diameter)"
    )
    threshold: float | None = Field(
        None,
        description="Score a pick must reach (engine units); None: chosen per micrograph from its own statistics",
    )


class PickResult(BaseModel):
    """What one picking run found and wrote."""

    model_config = ConfigDict(frozen=True)

    coordinates_path: Path = Field(description="RELION coordinate STAR file (<stem>_autopick.star)")
    picks_png_path: Path = Field(description="The low-passed micrograph with the picks circled")
    n_particles: Annotated[int, Metric(unit="", better="high", label="particles")] = Field(
        description="Number of particles picked"
    )
    masked_fraction: Annotated[float, Metric(unit="", better="low", label="masked fraction")] = Field(
        0.0, description="Fraction of the micrograph excluded from picking (edges, carbon, contamination, ice gradients)"
    )
