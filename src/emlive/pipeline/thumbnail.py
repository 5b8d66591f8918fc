"""The thumbnail step: a small PNG of the dose-weighted micrograph for people to look at."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from emlive.io.mrc import read_mrc
from emlive.io.png import write_png_atomic

ENGINE_VERSION = "1"


class Thumbnail(BaseModel):
    png_path: Path


def make_thumbnail(micrograph: Path, png_path: Path, *, max_size_px: int = 512) -> Thumbnail:
    image, _ = read_mrc(micrograph)
    write_png_atomic(png_path, image, max_size_px=max_size_px)
    return Thumbnail(png_path=png_path)
