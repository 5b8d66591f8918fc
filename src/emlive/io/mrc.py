"""MRC images and stacks: atomic writes with the pixel size in the header, and reads."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from emlive.io.atomic import atomic_path
from emlive.io.errors import INCOMPLETE_ADVICE, MovieFormatError, human_bytes

__all__ = ["read_mrc", "read_mrc_data", "read_mrc_header", "write_mrc_atomic"]

_DAMAGED = "it is damaged or was not fully written — write or copy it again"

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


def read_mrc_header(path: Path, file_size: int) -> tuple[np.recarray, int]:
    """The MRC header (a 1024-byte record in the file's byte order) and the data block's offset.

    Checks what mrcfile checks when opening (the map ID, the machine stamp) and, before
    anything more is read, that the extended header it declares lies inside the file: mrcfile
    would allocate it (up to 2 GB) before finding that out. Raises :class:`MovieFormatError`.
    """
    with open(path, "rb") as fh:
        raw = fh.read(HEADER_DTYPE.itemsize)
    if len(raw) < HEADER_DTYPE.itemsize:
        raise MovieFormatError(
            f"{path}: not a valid MRC header ({file_size} bytes, less than the 1024-byte header); "
            f"{INCOMPLETE_ADVICE}"
        )
    header = np.frombuffer(raw, dtype=HEADER_DTYPE).reshape(()).view(np.recarray)
    if bytes(header.map)[:3] != b"MAP":
        raise MovieFormatError(
            f"{path}: not a valid MRC header (no 'MAP' ID at byte 208); "
            "the file is corrupt or not an MRC file"
        )
    try:
        byte_order = mrcfile.utils.byte_order_from_machine_stamp(header.machst)
    except ValueError as err:
        raise MovieFormatError(f"{path}: not a valid MRC header ({err}); {_DAMAGED}") from err
    header = header.view(HEADER_DTYPE.newbyteorder(byte_order)).view(np.recarray)
    n_extended = int(header.nsymbt)
    data_offset = HEADER_DTYPE.itemsize + n_extended
    if n_extended < 0 or data_offset > file_size:
        raise MovieFormatError(
            f"{path}: the MRC header declares an extended header of {n_extended} bytes but the file "
            f"has {file_size} bytes; {INCOMPLETE_ADVICE if n_extended >= 0 else _DAMAGED}"
        )
    return header, data_offset


def read_mrc_data(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.recarray]:
    """An MRC file's data block (the file's dtype, shaped as mrcfile shapes it) and its header.

    The header's sizes are checked against the file before anything is allocated, so a damaged
    header (a size of terabytes, a negative size, a volume stack of 0 volumes) raises
    :class:`MovieFormatError` instead of exhausting memory.
    """
    p = Path(path)
    file_size = os.stat(p).st_size
    header, data_offset = read_mrc_header(p, file_size)
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as err:
        raise MovieFormatError(f"{p}: MRC mode {int(header.mode)} is not a known MRC mode ({err}); {_DAMAGED}") from err
    nx, ny, nz, mz = (int(header.nx), int(header.ny), int(header.nz), int(header.mz))
    if min(nx, ny, nz) < 0 or (mrcfile.utils.spacegroup_is_volume_stack(header.ispg) and (mz < 1 or nz % mz)):
        raise MovieFormatError(
            f"{p}: the MRC header declares impossible sizes (nx, ny, nz, mz = {nx}, {ny}, {nz}, {mz}, "
            f"space group {int(header.ispg)}); {_DAMAGED}"
        )
    shape = mrcfile.utils.data_shape_from_header(header)
    n_bytes = nx * ny * nz * dtype.itemsize
    if data_offset + n_bytes > file_size:
        raise MovieFormatError(
            f"{p}: the MRC header says {nz}×{ny}×{nx} {dtype.name} ({human_bytes(data_offset + n_bytes)} "
            f"with the headers) but the file has {file_size} bytes ({human_bytes(file_size)}); "
            f"{INCOMPLETE_ADVICE}"
        )
    data = np.fromfile(p, dtype=dtype, count=nx * ny * nz, offset=data_offset).reshape(shape)
    return data, header


def read_mrc(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Read an MRC image or stack: ``(data, pixel_size_a)``.

    ``data`` keeps the file's dtype ([y, x] or [z, y, x]); ``pixel_size_a`` is the x voxel size
    from the header to 6 significant digits, or ``None`` when the header holds none (0).
    A damaged file raises :class:`MovieFormatError`.
    """
    data, header = read_mrc_data(path)
    mx = int(header.mx)  # voxel_size divides by mx, which is 0 in an empty file
    size = float(header.cella.x) / mx if mx > 0 else 0.0
    # the header holds float32: keep 6 significant digits (1.1, not 1.0999999841)
    return data, (float(f"{size:.6g}") if size > 0 else None)
