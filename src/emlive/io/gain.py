"""Gain references: read from MRC or TIFF, orient, and check against a movie's frame shape.

A gain reference here is a multiplicative image [y, x]: corrected frame = raw frame × gain
(the convention of MotionCor2, RELION and EPU's ``*gain*.tiff``/``.mrc`` files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from emlive.io._tiff import TIFFFILE_ERRORS, open_tiff_checked
from emlive.io.errors import GainError, MovieFormatError
from emlive.io.mrc import read_mrc_data

__all__ = ["check_gain_shape", "orient_gain", "read_gain"]

_MRC_SUFFIXES = {".mrc", ".mrcs"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".gain"}


def read_gain(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a gain reference as float32 [y, x] from an MRC or TIFF file (first image).

    ``.tif``/``.tiff`` images are read rows bottom-up, like TIFF movies and as RELION reads
    them, so a TIFF gain matches a TIFF movie taken with it; EER ``.gain`` files are read
    top-down, as EER frames are (RELION does the same).

    Raises :class:`GainError` naming the file when it cannot be read, is not one 2D image, or
    holds non-finite values.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _MRC_SUFFIXES | _TIFF_SUFFIXES:
        raise GainError(
            f"{p}: unsupported gain reference suffix {p.suffix!r}; "
            "give an MRC (.mrc) or TIFF (.tif/.tiff/.gain) file"
        )
    try:
        if suffix in _MRC_SUFFIXES:
            data, _ = read_mrc_data(p)  # sizes checked before anything is allocated
        else:
            tif, _ = open_tiff_checked(p, os.stat(p).st_size)  # chain and strips inside the file
            with tif:
                data = tif.pages.first.asarray()
            if suffix != ".gain" and data.ndim == 2:
                # TIFF rows bottom-up, as the movies (emlive.io.movie) and as RELION reads any
                # TIFF image; EER .gain files are not flipped (RELION reverts its flip for them)
                data = data[::-1]
    except FileNotFoundError as err:
        raise GainError(f"{p}: gain reference not found; check the --gain path") from err
    except MovieFormatError as err:
        raise GainError(f"gain reference {err}") from err
    except TIFFFILE_ERRORS as err:
        # mrcfile's header/size errors and tifffile.TiffFileError are ValueErrors,
        # imagecodecs' decoder errors (LzwError, ZlibError, ...) RuntimeErrors.
        raise GainError(
            f"{p}: cannot read the gain reference ({type(err).__name__}: {err}); "
            "the file is damaged or not fully copied — copy it again"
        ) from err
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2 or np.iscomplexobj(data):
        raise GainError(
            f"{p}: a gain reference must be one real 2D image, got shape {data.shape} "
            f"dtype {data.dtype}"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # out of float32's range: refused below
        gain = np.array(data, dtype=np.float32, order="C")  # a writeable copy, detached from the file
    if not np.isfinite(gain).all():
        raise GainError(
            f"{p}: the gain reference holds {np.count_nonzero(~np.isfinite(gain))} NaN or infinite "
            "pixels; fix or regenerate it"
        )
    return gain


def orient_gain(
    gain: np.ndarray,
    *,
    rotate_90: int = 0,
    flip: Literal["x", "y"] | None = None,
) -> np.ndarray:
    """Rotate then flip a gain reference so that it matches the movie's frames.

    ``rotate_90=k`` is ``np.rot90(gain, k)``: k quarter turns from the +x axis towards the +y
    axis of the array [y, x] (counter-clockwise when row 0 is drawn at the top). ``flip="x"``
    reverses the x axis (columns, left-right), ``flip="y"`` the y axis (rows, upside down).
    Rotation is applied before the flip, as MotionCor2 does for ``-RotGain``/``-FlipGain``.
    """
    if flip not in (None, "x", "y"):
        raise ValueError(f"flip must be None, 'x' or 'y', got {flip!r}")
    out = np.rot90(np.asarray(gain), int(rotate_90) % 4)
    if flip == "x":
        out = out[:, ::-1]
    elif flip == "y":
        out = out[::-1, :]
    return np.ascontiguousarray(out, dtype=np.float32)


def check_gain_shape(
    gain: np.ndarray,
    frame_shape: tuple[int, int],
    *,
    gain_source: str,
    movie: str | os.PathLike[str],
) -> None:
    """Raise :class:`GainError` naming both shapes and files unless gain.shape == frame_shape."""
    if tuple(gain.shape) != tuple(frame_shape):
        hint = ""
        if tuple(gain.shape) == tuple(frame_shape)[::-1]:
            hint = " (the gain looks transposed: rotate it by 90°)"
        elif all(g == 2 * f for g, f in zip(gain.shape, frame_shape, strict=False)):
            hint = " (the gain is at twice the movie's size: super-resolution gain, binned movie)"
        elif all(2 * g == f for g, f in zip(gain.shape, frame_shape, strict=False)):
            hint = " (the movie is at twice the gain's size: super-resolution movie)"
        raise GainError(
            f"gain reference {gain_source} has shape (y, x) = {tuple(gain.shape)} but the frames "
            f"of movie {movie} have shape {tuple(frame_shape)}{hint}; give the gain reference "
            "recorded for this camera mode"
        )

