"""What the fuzzing found, one regression test each (the shrunk example, made readable).

Every case runs under the fuzz property (tests/fuzz/guard.py): the typed error, with a message
naming the file, in under two seconds and without a large allocation.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from emlive.io.errors import GainError, MovieFormatError
from emlive.io.gain import read_gain
from emlive.io.movie import check_movie_complete, read_movie
from emlive.io.mrc import read_mrc
from tests.fuzz.guard import check_call
from tests.fuzz.seeds import _mrc_bytes


def _patched(data: bytes, fields: dict[int, int], fmt: str = "<i") -> bytes:
    out = bytearray(data)
    for offset, value in fields.items():
        out[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(out)


def _mrc(tmp_path: Path, name: str, fields: dict[int, int], *, extra: bytes = b"") -> Path:
    frames = np.arange(2 * 16 * 24, dtype=np.float32).reshape(2, 16, 24)
    path = tmp_path / name
    path.write_bytes(_patched(_mrc_bytes(frames), fields) + extra)
    return path


def _all_mrc_readers(path: Path, *fragments: str) -> None:
    for call, allowed in [
        (lambda: check_movie_complete(path), MovieFormatError),
        (lambda: read_movie(path), MovieFormatError),
        (lambda: read_mrc(path), MovieFormatError),
        (lambda: read_gain(path), GainError),
    ]:
        error = check_call(call, allowed=(allowed,), path=path)
        assert isinstance(error, allowed), f"{call} read {path.name}"
        for fragment in fragments:
            assert fragment in str(error)


# ---------------------------------------------------------------------------------------- MRC


def test_mrc_extended_header_of_2_gb_is_refused_before_allocating(tmp_path):
    """nsymbt = 2³¹ - 1: mrcfile allocated the 2 GB extended header before reading it."""
    path = _mrc(tmp_path, "huge_ext.mrc", {92: 2**31 - 1})
    _all_mrc_readers(path, "extended header of 2147483647 bytes", "still being written")


def test_mrc_negative_extended_header_is_refused(tmp_path):
    _all_mrc_readers(_mrc(tmp_path, "negative_ext.mrc", {92: -1024}), "extended header of -1024 bytes")


def test_mrc_header_claiming_terabytes_is_refused_before_allocating(tmp_path):
    """A header-only file whose sizes claim 2³⁰ × 2³⁰ × 2³⁰ float32: read_mrc and read_gain let
    mrcfile allocate the whole data block (no limit when the file ends at the headers)."""
    path = tmp_path / "terabytes.mrc"
    path.write_bytes(_patched(_mrc_bytes(np.zeros((2, 4, 4), np.float32)), {0: 2**30, 4: 2**30, 8: 2**30})[:1024])
    _all_mrc_readers(path, "but the file has 1024 bytes")


def test_mrc_volume_stack_without_volumes_is_refused(tmp_path):
    """Space group 401 (volume stack) with mz = 0: mrcfile divided by zero."""
    path = _mrc(tmp_path, "volstack.mrc", {88: 401, 36: 0})
    for call in (lambda: read_mrc(path), lambda: read_gain(path)):
        error = check_call(call, allowed=(MovieFormatError, GainError), path=path)
        assert isinstance(error, ValueError) and "24, 16, 2, 0, space group 401" in str(error)
    check_movie_complete(path)  # a movie's frames are nz whatever the space group


def test_mrc_with_bytes_beyond_its_data_reads_without_a_warning(tmp_path):
    """mrcfile warned (RuntimeWarning) about the extra bytes; the movie reader reads the frames
    the header declares, and read_mrc/read_gain now do the same."""
    path = _mrc(tmp_path, "longer.mrc", {8: 1}, extra=b"\0" * 100)  # nz = 1: a 2D image
    image, pixel_size_a = check_call(lambda: read_mrc(path), allowed=())
    assert image.shape == (1, 16, 24) and pixel_size_a is not None
    gain = check_call(lambda: read_gain(path), allowed=())
    np.testing.assert_array_equal(gain, np.arange(16 * 24, dtype=np.float32).reshape(16, 24))


@pytest.mark.parametrize("order", ["<", ">"])
def test_read_mrc_keeps_values_and_byte_order(tmp_path, order):
    """The data block is read directly now: values, shape and byte order as mrcfile gave them."""
    import mrcfile

    frames = np.arange(2 * 3 * 4, dtype=order + "i2").reshape(2, 3, 4)
    path = tmp_path / "order.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(frames)
        mrc.voxel_size = 1.5
    data, pixel_size_a = read_mrc(path)
    with mrcfile.open(path, permissive=False) as mrc:
        assert data.dtype == mrc.data.dtype and data.shape == mrc.data.shape
    np.testing.assert_array_equal(data, frames)
    assert pixel_size_a == 1.5
