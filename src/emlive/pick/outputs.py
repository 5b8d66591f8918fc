"""The files every picking engine writes: RELION's coordinate STAR file and the picks picture.

Coordinates are ``(x, y)`` in pixels of the micrograph's array as stored (x = column, y = row,
row 0 first), as RELION reads them from ``<stem>_autopick.star``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import scipy.ndimage
from PIL import Image, ImageDraw

from emlive.io.atomic import atomic_path
from emlive.io.png import to_uint8
from emlive.io.star import write_star_atomic

__all__ = ["NO_ANGLE_DEG", "autopick_table", "write_autopick_star", "write_picks_png"]

# rlnAnglePsi of a pick without an in-plane angle, as RELION's reference-free picker writes it
NO_ANGLE_DEG = -999.0
PICK_COLOUR = (40, 220, 90)


def autopick_table(coordinates_px: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """RELION's autopick loop: rlnCoordinateX/Y (px), rlnClassNumber 0, the score as
    rlnAutopickFigureOfMerit and rlnAnglePsi -999 (no angle)."""
    xy = np.asarray(coordinates_px, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(xy):
        raise ValueError(f"{len(xy)} coordinates but {len(scores)} scores")
    return pd.DataFrame(
        {
            "rlnCoordinateX": xy[:, 0],
            "rlnCoordinateY": xy[:, 1],
            "rlnClassNumber": np.zeros(len(xy), dtype=np.int64),
            "rlnAutopickFigureOfMerit": scores,
            "rlnAnglePsi": np.full(len(xy), NO_ANGLE_DEG),
        }
    )


def write_autopick_star(path: str | os.PathLike[str], coordinates_px: np.ndarray, scores: np.ndarray) -> None:
    """Write ``<stem>_autopick.star`` atomically: one data block (``data_``) with the autopick loop."""
    write_star_atomic(path, {"": autopick_table(coordinates_px, scores)})


def write_picks_png(
    path: str | os.PathLike[str],
    image: np.ndarray,
    coordinates_px: np.ndarray,
    *,
    diameter_px: float,
    max_size_px: int = 1024,
) -> None:
    """Write the micrograph ``image`` [y, x], low-passed, with a circle of ``diameter_px`` around
    each pick, as an RGB PNG at most ``max_size_px`` on its long side (atomically).

    The image is box-averaged to fit, then Gaussian-filtered with σ an eighth of the diameter,
    so particles stand out from the shot noise; contrast is stretched between the 0.5th and
    99.5th percentiles.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"{path}: a picks picture needs a 2D image, got shape {img.shape}")
    factor = max(1, math.ceil(max(img.shape) / max_size_px))
    finite = np.isfinite(img)
    if not finite.all():
        img = np.where(finite, img, np.float32(img[finite].mean() if finite.any() else 0.0))
    if factor > 1:
        size = (max(1, round(img.shape[1] / factor)), max(1, round(img.shape[0] / factor)))
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(size, Image.Resampling.BOX))
    radius = max(diameter_px, 0.0) / 2 / factor
    img = scipy.ndimage.gaussian_filter(img, sigma=max(radius / 4, 0.5))
    picture = Image.fromarray(to_uint8(img)).convert("RGB")
    draw = ImageDraw.Draw(picture)
    width = max(1, round(radius / 12))
    for x, y in np.asarray(coordinates_px, dtype=np.float64).reshape(-1, 2) / factor:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=PICK_COLOUR, width=width)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
