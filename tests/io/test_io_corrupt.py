"""Empty, truncated, half-written and corrupt movies raise MovieFormatError naming the file.

Every case is checked three ways where it applies: the watcher's cheap check_movie_complete,
the header read, and a full read (which must never raise another exception type).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from emlive.io.errors import MovieFormatError
from emlive.io.movie import check_movie_complete, open_movie, read_movie, read_movie_header


def assert_rejected(path: Path, *fragments: str, eer_fractions: int = 2) -> None:
    """All three entry points raise MovieFormatError whose message names the file."""
    for call in (
        lambda: check_movie_complete(path),
        lambda: read_movie_header(path, eer_fractions=eer_fractions),
        lambda: read_movie(path, eer_fractions=eer_fractions),
    ):
        with pytest.raises(MovieFormatError) as info:
            call()
        message = str(info.value)
        assert path.name in message
        for fragment in fragments:
            assert fragment in message


def cut(path: Path, size: int, name: str) -> Path:
    out = path.with_name(name + path.suffix)
    out.write_bytes(path.read_bytes()[:size])
    return out


@pytest.fixture
def good_mrc(tmp_path, counts_movie, mrc_writer) -> Path:
    return mrc_writer(tmp_path / "good.mrc", counts_movie.view(np.int8))  # 6 × 48 × 64 int8


@pytest.fixture
def good_tif(tmp_path, counts_movie) -> Path:
    path = tmp_path / "good.tif"
    tifffile.imwrite(path, counts_movie, compression="lzw", photometric="minisblack")
    return path


@pytest.fixture
def good_eer(tmp_path, rng, eer_writer, raw_frame_maker) -> Path:
    return eer_writer(tmp_path / "good.eer", raw_frame_maker(rng, 4, (48, 64)))


def strips(path: Path) -> list[tuple[int, int, int]]:
    """(page offset, strip offset, strip byte count) of each page."""
    with tifffile.TiffFile(path) as tif:
        return [(p.offset, p.dataoffsets[0], p.databytecounts[0]) for p in tif.pages]


def test_good_files_pass(good_mrc, good_tif, good_eer):
    for path in (good_mrc, good_tif, good_eer):
        check_movie_complete(path)
        assert read_movie(path, eer_fractions=2).shape[1:] == (48, 64)


@pytest.mark.parametrize("suffix", [".mrc", ".mrcs", ".tif", ".tiff", ".eer"])
def test_zero_byte_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.touch()
    assert_rejected(path, "empty (0 bytes)", "still being written")


# ---------------------------------------------------------------------------------------- MRC


def test_truncated_mrc_says_expected_and_actual_bytes(good_mrc):
    full = 1024 + 6 * 48 * 64
    path = cut(good_mrc, full - 5000, "cut")
    assert_rejected(path, "6 frames of 48×64 int8", f"{full} bytes", f"{full - 5000} bytes", "still being written")


def test_mrc_cut_inside_the_header(good_mrc):
    assert_rejected(cut(good_mrc, 700, "stub"), "MRC header", "still being written")


def test_mrc_garbage(tmp_path):
    path = tmp_path / "noise.mrc"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert_rejected(path, "MRC")


def test_mrc_unsupported_modes(tmp_path, mrc_writer):
    complex_movie = mrc_writer(tmp_path / "complex.mrc", np.ones((2, 4, 4), np.complex64))
    assert_rejected(complex_movie, "mode 4")
    bad_mode = mrc_writer(tmp_path / "mode3.mrc", np.ones((2, 4, 4), np.int16))
    with open(bad_mode, "r+b") as fh:
        fh.seek(12)
        fh.write(np.int32(3).tobytes())
    assert_rejected(bad_mode, "mode")


def test_mrc_that_shrinks_after_opening(good_mrc):
    """The size check happens at open; a file cut afterwards still gives MovieFormatError."""
    path = cut(good_mrc, good_mrc.stat().st_size, "shrinks")
    with open_movie(path) as movie:
        os.truncate(path, 1024 + 48 * 64 * 2)
        np.testing.assert_array_equal(movie.frames(0, 1).shape, (1, 48, 64))
        with pytest.raises(MovieFormatError, match=r"shrinks\.mrc.*ended .* early"):
            movie.frames()


def test_still_growing_mrc_becomes_complete(good_mrc):
    path = cut(good_mrc, 1024 + 3 * 48 * 64, "growing")
    with pytest.raises(MovieFormatError):
        check_movie_complete(path)
    path.write_bytes(good_mrc.read_bytes())
    check_movie_complete(path)


# --------------------------------------------------------------------------------- TIFF and EER


def cut_points(path: Path) -> dict[str, int]:
    pages = strips(path)
    last_page, last_strip, last_count = pages[-1]
    return {
        "mid_header": 5,
        "mid_first_ifd": pages[0][0] + 11,
        "mid_last_ifd": last_page + 11,
        "mid_last_strip": last_strip + last_count // 2,
        "last_byte_missing": path.stat().st_size - 1,
    }


@pytest.mark.parametrize("where", ["mid_header", "mid_first_ifd", "mid_last_ifd", "mid_last_strip", "last_byte_missing"])
@pytest.mark.parametrize("fmt", ["tif", "eer"])
def test_truncated_tiff_and_eer(request, fmt, where):
    good = request.getfixturevalue(f"good_{fmt}")
    size = cut_points(good)[where]
    path = cut(good, size, f"cut_{where}")
    assert_rejected(path, "still being written")


def test_tiff_garbage_and_wrong_magic(tmp_path):
    noise = np.random.default_rng(4).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"\x13\x37" + noise)
    assert_rejected(garbage, "not a TIFF")
    header_then_garbage = tmp_path / "headerjunk.tif"
    header_then_garbage.write_bytes(b"II*\x00" + noise)
    assert_rejected(header_then_garbage)
    bad_version = tmp_path / "version.tif"
    bad_version.write_bytes(b"II\x07\x00" + noise)
    assert_rejected(bad_version, "version 7")


def test_tiff_page_chain_loop(good_tif):
    """The last page's next-IFD pointer sent back to the first page."""
    pages = strips(good_tif)
    data = bytearray(good_tif.read_bytes())
    with tifffile.TiffFile(good_tif) as tif:
        n_tags = len(tif.pages[-1].tags)
    next_field = pages[-1][0] + 2 + 12 * n_tags
    assert int.from_bytes(data[next_field : next_field + 4], "little") == 0
    data[next_field : next_field + 4] = pages[0][0].to_bytes(4, "little")
    path = good_tif.with_name("loop.tif")
    path.write_bytes(bytes(data))
    assert_rejected(path, "loops")


def overwrite_strip(path: Path, page: int, payload: bytes, name: str) -> Path:
    _, offset, count = strips(path)[page]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = (payload * count)[:count]
    out = path.with_name(name + path.suffix)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("payload", [b"\xff\x13\x88", b"\x00"])
def test_bad_lzw_strip_fails_on_full_read_only(good_tif, payload):
    path = overwrite_strip(good_tif, 3, payload, "badlzw")
    check_movie_complete(path)  # structure intact: the damage shows only when decoding
    with open_movie(path) as movie:
        movie.frames(0, 3)  # frames before the damage decode
        with pytest.raises(MovieFormatError, match=r"badlzw\.tif.*TIFF frame 3"):
            movie.frames()


def test_bad_eer_stream_fails_on_full_read(good_eer):
    path = overwrite_strip(good_eer, 2, b"\xff", "badstream")  # runs overshoot the frame
    check_movie_complete(path)
    with pytest.raises(MovieFormatError, match=r"badstream\.eer.*EER frame 2.*corrupt"):
        read_movie(path, eer_fractions=2)


def test_odd_length_eer_strip(tmp_path, good_eer):
    """imagecodecs refuses odd-length EER streams: still a MovieFormatError."""
    _, offset, count = strips(good_eer)[0]
    data = bytearray(good_eer.read_bytes())
    with tifffile.TiffFile(good_eer) as tif:
        where = tif.pages[0].tags[279].valueoffset
    data[where : where + 8] = (count - 1).to_bytes(8, "little")
    path = tmp_path / "odd.eer"
    path.write_bytes(bytes(data))
    with pytest.raises(MovieFormatError, match=r"odd\.eer.*EER frame 0"):
        read_movie(path, eer_fractions=2)


def test_suffix_does_not_match_content(tmp_path, good_tif, good_eer):
    tif_as_eer = tmp_path / "plain.eer"
    tif_as_eer.write_bytes(good_tif.read_bytes())
    assert_rejected(tif_as_eer, "not an EER movie", ".tif suffix")
    eer_as_tif = tmp_path / "events.tif"
    eer_as_tif.write_bytes(good_eer.read_bytes())
    assert_rejected(eer_as_tif, "EER frames", ".eer suffix")
    mrc_as_tif = tmp_path / "really_mrc.tif"
    mrc_as_tif.write_bytes(b"\x00" * 2048)
    assert_rejected(mrc_as_tif, "not a TIFF")


def test_rgb_tiff_is_not_a_movie(tmp_path):
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    assert_rejected(path, "samples per pixel")


@pytest.mark.parametrize("fmt", ["mrc", "tif", "eer"])
def test_no_cut_loses_data_silently(tmp_path, rng, fmt, mrc_writer, eer_writer, raw_frame_maker):
    """Cut a small movie at many bytes: each prefix is refused, or reads back identical."""
    frames = rng.poisson(1.0, size=(3, 12, 16)).astype(np.uint8)
    if fmt == "mrc":
        good = mrc_writer(tmp_path / "small.mrc", frames.view(np.int8))
    elif fmt == "tif":
        good = tmp_path / "small.tif"
        tifffile.imwrite(good, frames, compression="lzw", photometric="minisblack")
    else:
        good = eer_writer(tmp_path / "small.eer", raw_frame_maker(rng, 3, (12, 16)))
    data = good.read_bytes()
    expected = read_movie(good, eer_fractions=3)
    prefix = tmp_path / f"prefix.{fmt}"
    silently_complete = []
    for size in sorted({*range(0, len(data), 7), *range(max(0, len(data) - 40), len(data))}):
        prefix.write_bytes(data[:size])
        try:
            check_movie_complete(prefix)
        except MovieFormatError as err:
            assert "prefix" in str(err)
            continue
        np.testing.assert_array_equal(read_movie(prefix, eer_fractions=3), expected)
        silently_complete.append(size)
    # only trailing padding may go missing unnoticed
    assert all(data[size:].strip(b"\0") == b"" for size in silently_complete)
