"""The thumbnail step: a small PNG of the dose-weighted micrograph for people to look at."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from emlive.io.mrc import read_mrc
from emlive.io.png import write_png_atomic
from emlive.motion.step import micrograph_of
from emlive.pipeline.step import Engine, Inputs, Step

ENGINE_VERSION = "1"


class ThumbnailParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str = Field("native", description="Engine that runs the step")
    max_size_px: int = Field(512, ge=16, le=4096, description="Longest side of the picture, px")


class Thumbnail(BaseModel):
    png_path: Path


def make_thumbnail(micrograph: Path, png_path: Path, *, max_size_px: int = 512) -> Thumbnail:
    image, _ = read_mrc(micrograph)
    write_png_atomic(png_path, image, max_size_px=max_size_px)
    return Thumbnail(png_path=png_path)


def _thumbnail_step(inputs: Inputs, out_dir: Path, params: ThumbnailParams) -> Thumbnail:
    micrograph, _ = micrograph_of(inputs, "dose_weighted_path")
    return make_thumbnail(micrograph, out_dir / f"{inputs.stem}.png", max_size_px=params.max_size_px)


THUMBNAIL = Step(
    name="thumbnail",
    params=ThumbnailParams,
    result=Thumbnail,
    needs={"motion": ("dose_weighted_path",)},
    engines={"native": Engine(_thumbnail_step, ENGINE_VERSION)},
    description="A small PNG of the dose-weighted micrograph for the dashboard",
)
