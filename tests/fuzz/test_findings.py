"""What the fuzzing found, one regression test each (the shrunk example, made readable).

Every case runs under the fuzz property (tests/fuzz/guard.py): the typed error, with a message
naming the file, in under two seconds and without a large allocation.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from emlive.ctf import gctf
from emlive.io.defects import read_defects
from emlive.io.errors import GainError, MovieFormatError
from emlive.io.gain import read_gain
from emlive.io.movie import check_movie_complete, read_movie
from emlive.io.mrc import read_mrc
from emlive.motion import motioncor
from emlive.synth.eer import write_eer
from emlive.tools.spec import Version
from tests.fuzz.guard import check_call
from tests.fuzz.seeds import _mrc_bytes, distinct_events
from tests.io.conftest import random_raw_frames, write_eer_file


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


# --------------------------------------------------------------------------------- TIFF and EER


def _patch_tags(path: Path, code: int, *, value: int | None = None, kind: int | None = None,
                new_code: int | None = None, pages: slice = slice(None)) -> Path:
    """Rewrite tag ``code``'s IFD entry on the chosen pages (value inline; little-endian)."""
    with tifffile.TiffFile(path) as tif:
        big = tif.is_bigtiff
        entries = [(page.tags[code].offset, page.tags[code].dtype) for page in list(tif.pages)[pages]]
    data = bytearray(path.read_bytes())
    for at, old_kind in entries:
        if new_code is not None:
            data[at : at + 2] = struct.pack("<H", new_code)
        if kind is not None:
            data[at + 2 : at + 4] = struct.pack("<H", kind)
        if value is not None:
            width = 8 if big else {3: 2, 4: 4}[kind or old_kind]
            start = at + (12 if big else 8)
            data[start : start + width] = value.to_bytes(width, "little")
    path.write_bytes(bytes(data))
    return path


def _movie_error(path: Path, *fragments: str) -> None:
    for call in (lambda: check_movie_complete(path), lambda: read_movie(path, eer_fractions=1)):
        error = check_call(call, allowed=(MovieFormatError,), path=path)
        assert isinstance(error, MovieFormatError), f"{path.name} was read"
        for fragment in fragments:
            assert fragment in str(error)


@pytest.fixture
def lzw_tif(tmp_path) -> Path:
    path = tmp_path / "movie.tif"
    frames = np.random.default_rng(5).poisson(1.5, size=(3, 16, 24)).astype(np.uint8)
    tifffile.imwrite(path, frames, compression="zlib", rowsperstrip=4, photometric="minisblack")
    return path


def test_tiff_tag_of_the_wrong_type_is_refused(lzw_tif):
    """RowsPerStrip as ASCII text: tifffile compared bytes with an int (TypeError)."""
    _movie_error(_patch_tags(lzw_tif, 278, kind=2), "tag 278", "field type 2")


def test_tiff_page_without_image_width_is_refused(lzw_tif):
    """ImageWidth renamed on a later page: tifffile looked it up on the keyframe (KeyError)."""
    _movie_error(_patch_tags(lzw_tif, 256, new_code=255, pages=slice(1, None)), "page 1", "tag 256")


def test_tiff_float_pages_without_bits_per_sample_are_refused(tmp_path):
    """No BitsPerSample (1 bit by default) in sample format 3: tifffile has no dtype for it and
    asserted while decoding (AssertionError)."""
    path = tmp_path / "nobits.tif"
    tifffile.imwrite(path, np.ones((2, 16, 24), np.float32), bigtiff=True, photometric="minisblack")
    _movie_error(_patch_tags(path, 258, new_code=0), "1-bit samples in sample format 3")


@pytest.mark.parametrize("rows", [2**31 - 1, 2**32 - 1])
def test_tiff_image_taller_than_its_strips_is_refused_before_allocating(lzw_tif, rows):
    """ImageLength of 2³¹ rows on 4 strips: the reader allocated 3 × 2³¹ × 24 float32 (MemoryError)."""
    _movie_error(_patch_tags(lzw_tif, 257, value=rows), f"{rows}×24 image needs")


def test_tiff_image_taller_than_its_strips_is_refused_quickly(lzw_tif):
    """65535 rows on 4 strips of 4 rows: decoding the missing strips took seconds."""
    _movie_error(_patch_tags(lzw_tif, 257, value=65535), "4 strips or tiles", "needs 16384")


@pytest.mark.parametrize("width", [65535, 2**31 - 1])
def test_tiff_image_wider_than_its_bytes_can_decode_to_is_refused(lzw_tif, width):
    _movie_error(_patch_tags(lzw_tif, 256, value=width), "more than compression 8 can expand to")


def test_tiff_image_with_no_rows_is_refused(lzw_tif):
    """ImageLength 0: the movie read as frames of 0 × 24 pixels."""
    _movie_error(_patch_tags(lzw_tif, 257, value=0), "empty image")


@pytest.mark.parametrize("code, value", [(256, 2**31 - 1), (257, 2**31 - 1), (256, 0)])
def test_eer_frame_size_beyond_its_event_stream_is_refused(tmp_path, code, value):
    """An EER page claiming 2³¹ columns over a 20-byte event stream: the 7-bit run codes cover
    at most 146 pixels per byte, so no allocation for such a frame is attempted."""
    path = tmp_path / "movie.eer"
    write_eer(path, [distinct_events(np.random.default_rng(6), 12, (16, 16)) for _ in range(2)], shape=(16, 16))
    _movie_error(_patch_tags(path, code, value=value))


# ------------------------------------------------------------------------------- tool outputs

_LONG = 20_000  # characters on one garbage line: the old patterns took 10 s to minutes


@pytest.mark.parametrize(
    "text",
    [
        "Full-frame alignment shift\nFrame" + " " * _LONG + "\n",
        "Full-frame alignment shift\nFrame 1 shift: " + "1" * _LONG + "x\n",
        "Full-frame alignment shift\nFrame (1" + " " * _LONG + "x\n",
    ],
    ids=["spaces", "digits", "paren"],
)
def test_motioncor_frame_pattern_is_linear_on_long_lines(text):
    """`Frame\\s*\\(?\\s*` and `\\d+\\.?\\d*` backtracked over every split of a long line."""
    error = check_call(lambda: motioncor.parse_output(text, Version(1, 6, 4)), allowed=(ValueError,))
    assert "no 'Full-frame alignment shift' section" in str(error)


def test_gctf_number_pattern_is_linear_on_long_fields():
    """`\\d+\\.?\\d*` in a fullmatch of a 20 000-digit field that ends in a letter."""
    text = ("1 1 1 1 " + "1" * _LONG + "x\n") * 2
    error = check_call(lambda: gctf.parse_epa(text), allowed=(ValueError,))
    assert "fewer than 2 rows" in str(error)


@pytest.mark.parametrize("text", ["Gctf" + " " * _LONG + "x", "Gctf version" + " " * _LONG + "x"])
def test_gctf_version_pattern_is_linear_on_long_lines(text):
    assert check_call(lambda: gctf.parse_version(text), allowed=()) is None


# ------------------------------------------------------------------------------- defect lists


@pytest.mark.parametrize("line", ["0 0 inf 1", "-inf 0 1 1", "0 0 1 1e999"])
def test_defect_line_with_an_infinite_number_is_refused(tmp_path, line):
    """int(float("inf")) raised OverflowError, not the GainError naming the line."""
    path = tmp_path / "defects.txt"
    path.write_text(f"# x y w h\n{line}\n")
    error = check_call(lambda: read_defects(path, (16, 24)), allowed=(GainError,), path=path)
    assert "line 2" in str(error) and "four integers" in str(error)


@pytest.mark.parametrize("tag, kind, value", [(65008, 3, None), (65009, 2, 2), (65007, 3, 99)])
def test_eer_code_bits_that_are_not_small_whole_numbers_are_refused(tmp_path, tag, kind, value):
    """Compression 65002 with tag 65008 holding two values (a tuple) or 65009 as text: the
    reader's int() raised TypeError or ValueError."""
    path = tmp_path / "variable.eer"
    write_eer_file(path, random_raw_frames(np.random.default_rng(7), 2, (16, 24)), compression=65002, bits=(7, 2, 2))
    if value is None:  # a second value: the count, not the value, changes
        with tifffile.TiffFile(path) as tif:
            entries = [page.tags[tag].offset for page in tif.pages]
        data = bytearray(path.read_bytes())
        for at in entries:
            data[at + 4 : at + 12] = (2).to_bytes(8, "little")
        path.write_bytes(bytes(data))
    else:
        _patch_tags(path, tag, kind=kind, value=value)
    _movie_error(path, f"EER tag {tag}")


def test_float64_tiff_beyond_float32_range(tmp_path):
    """1e300 in a float64 TIFF: the cast to float32 warned (RuntimeWarning, an error under
    pytest and in any caller that treats warnings as errors). A movie's frames read as inf, as
    any cast makes them; a gain reference is refused for its non-finite pixels."""
    path = tmp_path / "float64.tif"
    tifffile.imwrite(path, np.full((2, 8, 8), 1e300), photometric="minisblack")
    frames = check_call(lambda: read_movie(path), allowed=())
    assert np.isposinf(frames).all()
    error = check_call(lambda: read_gain(path), allowed=(GainError,), path=path)
    assert "64 NaN or infinite pixels" in str(error)


def test_tiff_tiles_without_a_tile_length_are_refused(tmp_path):
    """BitsPerSample's tag number turned into TileWidth's (258 → 322): a tiled page with no tile
    length, and tifffile divided by zero counting its tiles (ZeroDivisionError)."""
    path = tmp_path / "tiles.tif"
    tifffile.imwrite(path, np.ones((2, 16, 24), np.float32), bigtiff=True, photometric="minisblack")
    _movie_error(_patch_tags(path, 258, new_code=322), "ZeroDivisionError")
    gain_error = check_call(lambda: read_gain(path), allowed=(GainError,), path=path)
    assert "ZeroDivisionError" in str(gain_error)


@pytest.mark.parametrize("kind, count", [(12, 2**61), (4, 2**62), (2, 2**64 - 1)])
def test_bigtiff_tag_count_that_wraps_around_is_refused(tmp_path, kind, count):
    """StripByteCounts with 2⁶¹ doubles (2⁶⁴ bytes, 0 after wrapping in uint64): the chain walk's
    bounds check passed it, tifffile dropped the tag with a log line and read the movie anyway."""
    path = tmp_path / "wrap.tif"
    tifffile.imwrite(path, np.ones((2, 8, 8), np.uint16), bigtiff=True, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        entries = [page.tags[279].offset for page in tif.pages]
    data = bytearray(path.read_bytes())
    for at in entries:
        data[at + 2 : at + 12] = struct.pack("<HQ", kind, count)
    path.write_bytes(bytes(data))
    _movie_error(path, "tag 279 has its value up to byte")


def test_a_version_with_a_long_run_of_digits_is_refused_at_once():
    """Version.parse (reached from a ToolSpec's configured version) took about 45 s to refuse
    '1.' + 20,000 digits + spaces + 'x': its pattern backtracked over the digits."""
    import time

    from emlive.tools.spec import Version

    started = time.process_time()
    with pytest.raises(ValueError, match="not a version number"):
        Version.parse("1." + "1" * 20_000 + "   x")
    assert time.process_time() - started < 0.5
    assert Version.parse(" v4.1.14 ") == Version(4, 1, 14)
