"""PNG pictures for people: downsampled, robustly contrast-stretched, written atomically."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from emlive.io.atomic import atomic_path

__all__ = ["to_uint8", "write_png_atomic"]


def to_uint8(image: np.ndarray, *, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
    """Map an image to 0..255, clipping at the given percentiles of its finite values.

    Non-finite pixels become 0. A constant image maps to mid-grey (128).
    """
    img = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros(img.shape, np.uint8)
    lo, hi = np.percentile(img[finite], [low_percentile, high_percentile])
    if not hi > lo:
        out = np.full(img.shape, 128, np.uint8)
        out[~finite] = 0
        return out
    scaled = (np.where(finite, img, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0.0, 255.0).round().astype(np.uint8)


def write_png_atomic(
    path: str | os.PathLike[str],
    image2d: np.ndarray,
    *,
    max_size_px: int = 512,
) -> None:
    """Write a 2D image [y, x] as an 8-bit greyscale PNG at most ``max_size_px`` on its long side.

    The image is box-averaged by the smallest integer factor that fits (averaging keeps the
    noise down, unlike decimation; non-finite pixels count as the mean), then stretched between
    its 0.5th and 99.5th percentiles.
    """
    img = np.asarray(image2d)
    if img.ndim != 2:
        raise ValueError(f"{path}: a PNG picture needs a 2D image, got shape {img.shape}")
    if max_size_px < 1:
        raise ValueError(f"{path}: max_size_px must be >= 1, got {max_size_px}")
    factor = max(1, math.ceil(max(img.shape) / max_size_px))
    small = np.asarray(img, dtype=np.float32)
    if factor > 1:
        finite = np.isfinite(small)
        if not finite.all():
            fill = small[finite].mean() if finite.any() else 0.0
            small = np.where(finite, small, np.float32(fill))
        size = (max(1, round(img.shape[1] / factor)), max(1, round(img.shape[0] / factor)))
        resized = Image.fromarray(np.ascontiguousarray(small)).resize(size, Image.Resampling.BOX)
        small = np.asarray(resized)
    pixels = to_uint8(small)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
