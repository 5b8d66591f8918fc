"""MRC images and stacks: atomic writes with the pixel size in the header, and reads."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np

from emlive.io.atomic import atomic_path
from emlive.io.errors import MovieFormatError

__all__ = ["read_mrc", "write_mrc_atomic"]

# dtypes MRC can store as they are (mrcfile modes 0, 1, 2, 4, 6, 12)
_NATIVE = {np.dtype(t) for t in (np.int8, np.int16, np.float32, np.complex64, np.uint16, np.float16)}


def write_mrc_atomic(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    pixel_size_a: float,
) -> None:
    """Write a 2D image or a 3D stack to ``path`` atomically, pixel size (Å) in the header.

    ``data`` is [y, x] or [z, y, x]. dtypes MRC cannot hold are converted: float64 and integer
    types other than int8/int16/uint16 to float32, complex128 to complex64. A 3D array written to
    a ``.mrcs`` file is marked as an image stack (ispg 0), otherwise as a volume.
    """
    if not pixel_size_a > 0:
        raise ValueError(f"{path}: pixel_size_a must be > 0 Å, got {pixel_size_a!r}")
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: MRC data must be 2D or 3D, got shape {arr.shape}")
    if arr.dtype not in _NATIVE:
        arr = arr.astype(np.complex64 if np.iscomplexobj(arr) else np.float32)
    arr = np.ascontiguousarray(arr)
    dest = Path(path)
    with atomic_path(dest) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(arr)
        if arr.ndim == 3 and dest.suffix.lower() == ".mrcs":
            mrc.set_image_stack()
        mrc.voxel_size = float(pixel_size_a)
        mrc.update_header_stats()


def read_mrc(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Read an MRC image or stack: ``(data, pixel_size_a)``.

    ``data`` keeps the file's dtype ([y, x] or [z, y, x]); ``pixel_size_a`` is the x voxel size
    from the header to 6 significant digits, or ``None`` when the header holds none (0).
    A damaged file raises :class:`MovieFormatError`.
    """
    try:
        with mrcfile.open(path, mode="r", permissive=False) as mrc:
            data = np.array(mrc.data)
            mx = int(mrc.header.mx)  # voxel_size divides by mx, which is 0 in an empty file
            size = float(mrc.header.cella.x) / mx if mx > 0 else 0.0
    except (ValueError, EOFError) as err:
        raise MovieFormatError(
            f"{path}: not a readable MRC file ({err}); it is damaged or was not fully written — "
            "write it again"
        ) from err
    # the header holds float32: keep 6 significant digits (1.1, not 1.0999999841)
    return data, (float(f"{size:.6g}") if size > 0 else None)
