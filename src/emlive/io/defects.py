"""Detector defects: defect files, hot pixels, and replacing bad pixels in frames.

A defect list is read from either

- a text file as MotionCor2 (``-DefectFile``) and RELION (``--defect_file``) read it: one
  rectangle per line, ``x y w h`` in pixels (0-based column and row of the top-left corner,
  width, height; a bad column is ``x 0 1 ny``); blank lines and ``#`` comments are skipped; or
- a mask image (MRC or TIFF, the frames' size; non-zero = bad), RELION's "defect map".

Bad pixels also come from the gain reference (a zero gain is a dead pixel, as in EER ``.gain``
files) and from hot-pixel detection on the sum of the first frames (:func:`hot_pixel_mask`).
They are replaced in every frame by the expected count there: the mean of the good pixels
around them in the sum of the first frames, divided by the number of frames
(:func:`defect_fill_values`), so they carry no signal and no outlier into the alignment.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.ndimage

from emlive.io.errors import GainError

__all__ = ["defect_fill_values", "hot_pixel_mask", "read_defects", "upsample_mask"]

_IMAGE_SUFFIXES = {".mrc", ".mrcs", ".tif", ".tiff"}
# A pixel is hot when its count in the sum exceeds the local mean by this many Poisson sigmas
# (and by this many counts): far beyond anything shot noise makes in a 4K frame.
_HOT_SIGMAS = 10.0
_HOT_MIN_EXCESS = 10.0
_NEIGHBOURHOOD_PX = 7


def read_defects(path: str | os.PathLike[str], shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask (True = bad) of ``shape`` from a defect text file or a mask image.

    Raises :class:`GainError` (a detector-calibration error) naming the file and line when a
    line is not four integers, a rectangle lies outside the frame, or a mask image has another
    shape than the frames.
    """
    p = Path(path)
    if not p.exists():
        raise GainError(f"{p}: defect file not found; check the --defects path")
    ny, nx = shape
    if p.suffix.lower() in _IMAGE_SUFFIXES:
        from emlive.io.gain import read_gain  # the same strict MRC/TIFF reading

        try:
            image = read_gain(p)
        except GainError as err:
            raise GainError(str(err).replace("gain reference", "defect map")) from err
        if image.shape != (ny, nx):
            raise GainError(
                f"{p}: the defect map is {image.shape[1]}x{image.shape[0]} but the frames are {nx}x{ny}; "
                "give the map recorded for this camera mode"
            )
        return image != 0
    mask = np.zeros((ny, nx), dtype=bool)
    for number, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.split()
        try:
            x, y, w, h = (int(float(f)) for f in fields)
        except (ValueError, OverflowError):  # OverflowError: int(float("inf"))
            raise GainError(
                f"{p}, line {number}: {line.strip()!r} is not 'x y w h' (four integers, pixels); "
                "fix the defect file"
            ) from None
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > nx or y + h > ny:
            raise GainError(
                f"{p}, line {number}: rectangle x={x} y={y} w={w} h={h} is not inside the {nx}x{ny} frames; "
                "is the file for this camera (and rotation)?"
            )
        mask[y : y + h, x : x + w] = True
    return mask


def upsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """A mask on a grid ``factor`` times finer (each pixel becomes factor × factor)."""
    return np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)


def hot_pixel_mask(frame_sum: np.ndarray, *, exclude: np.ndarray | None = None) -> np.ndarray:
    """Pixels far above their neighbourhood in a sum of frames (counts): True = hot.

    The local mean ``m`` is taken over the 7×7 neighbourhood without the pixel itself (and
    without ``exclude``d pixels); a pixel is hot when its value exceeds ``m + 10 √(m + 1) + 10``.
    """
    # float32 throughout: counts in a sum of a few frames are exact, and a 4K frame's filters
    # cost a third of what they cost in float64.
    values = np.asarray(frame_sum, dtype=np.float32)
    size = _NEIGHBOURHOOD_PX
    area = float(size * size)
    if exclude is None:
        total = scipy.ndimage.uniform_filter(values, size, mode="reflect")
        total *= area
        total -= values
        local = total
        local *= 1.0 / (area - 1.0)  # reflected borders keep all area - 1 neighbours
    else:
        good = (~exclude).astype(np.float32)
        masked = values * good
        total = scipy.ndimage.uniform_filter(masked, size, mode="reflect")
        total *= area
        total -= masked
        count = scipy.ndimage.uniform_filter(good, size, mode="reflect")
        count *= area
        count -= good
        local = total / np.maximum(count, 1.0)
    threshold = np.maximum(local, 0.0)
    threshold += 1.0
    np.sqrt(threshold, out=threshold)
    threshold *= _HOT_SIGMAS
    threshold += local
    threshold += _HOT_MIN_EXCESS
    hot = values > threshold
    if exclude is not None:
        hot &= ~exclude
    return hot


def defect_fill_values(frame_sum: np.ndarray, bad: np.ndarray, *, n_frames: int) -> np.ndarray:
    """Per-frame replacement values for the ``bad`` pixels (float32, in ``np.flatnonzero(bad)``
    order): the mean of the good pixels around each, in ``frame_sum``, divided by ``n_frames``.

    The neighbourhood grows (7, 15, 31 … px) until it holds good pixels, so whole bad columns
    and rows get values from beside them.
    """
    values = np.asarray(frame_sum, dtype=np.float64)
    good = (~bad).astype(np.float64)
    index = np.flatnonzero(bad)
    out = np.zeros(index.size)
    todo = np.ones(index.size, dtype=bool)
    size = _NEIGHBOURHOOD_PX
    while todo.any() and size <= 2 * max(values.shape) + 1:
        total = scipy.ndimage.uniform_filter(values * good, size, mode="reflect").ravel()[index]
        count = scipy.ndimage.uniform_filter(good, size, mode="reflect").ravel()[index]
        found = todo & (count > 1e-9)
        out[found] = total[found] / count[found]
        todo &= ~found
        size = 2 * size + 1
    if todo.any():  # nothing good anywhere: the frame mean
        out[todo] = float(values.mean())
    return (out / max(n_frames, 1)).astype(np.float32)
