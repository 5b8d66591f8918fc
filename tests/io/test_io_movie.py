"""Movie readers: MRC/MRCS and TIFF round trips, header-only reads, slicing, gain."""

from __future__ import annotations

import time

import imagecodecs
import mrcfile
import numpy as np
import pytest
import tifffile

from emlive.io import movie as movie_module
from emlive.io.errors import GainError
from emlive.io.gain import orient_gain, read_gain
from emlive.io.movie import (
    check_movie_complete,
    movie_format,
    open_movie,
    read_movie,
    read_movie_header,
)
from emlive.io.errors import MovieFormatError


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.float32, np.uint16, np.float16])
@pytest.mark.parametrize("suffix", [".mrc", ".mrcs"])
def test_mrc_movie_round_trip_every_mode(tmp_path, rng, mrc_writer, dtype, suffix):
    frames = (rng.normal(3, 2, size=(5, 24, 40)) * 10).astype(dtype)
    path = mrc_writer(tmp_path / f"m{suffix}", frames, pixel_size_a=0.83)
    header = read_movie_header(path)
    assert header.format == "mrc"
    assert (header.n_frames, header.shape, header.n_raw_frames) == (5, (24, 40), 5)
    assert header.dtype == np.dtype(dtype)
    assert header.fraction_sizes == (1,) * 5
    assert header.pixel_size_a == pytest.approx(0.83)
    data = read_movie(path)
    assert data.dtype == np.float32 and data.flags.c_contiguous
    np.testing.assert_array_equal(data, frames.astype(np.float32))


def test_mrc_mode0_imod_unsigned_flag(tmp_path, mrc_writer):
    """IMOD/SerialEM mark mode-0 bytes unsigned (stamp 'IMOD', flag bit 0 clear)."""
    frames = np.array([[[0, 100, 200, 255]]], dtype=np.uint8).repeat(2, axis=0)
    path = mrc_writer(tmp_path / "u.mrc", frames.view(np.int8))
    np.testing.assert_array_equal(read_movie(path)[0, 0], [0, 100, -56, -1])  # MRC2014: signed
    with open(path, "r+b") as fh:
        fh.seek(152)
        fh.write(np.array([1146047817, 0], "<i4").tobytes())
    assert read_movie_header(path).dtype == np.uint8
    np.testing.assert_array_equal(read_movie(path)[0, 0], [0, 100, 200, 255])


def test_mrc_without_pixel_size_and_2d_image(tmp_path, mrc_writer):
    path = mrc_writer(tmp_path / "one.mrc", np.arange(12, dtype=np.float32).reshape(3, 4))
    header = read_movie_header(path)
    assert header.pixel_size_a is None
    assert (header.n_frames, header.shape) == (1, (3, 4))
    np.testing.assert_array_equal(read_movie(path)[0], np.arange(12).reshape(3, 4))


def test_mrc_larger_than_header_reads_declared_frames(tmp_path, mrc_writer, counts_movie, caplog):
    path = mrc_writer(tmp_path / "big.mrc", counts_movie.view(np.int8))
    with open(path, "ab") as fh:
        fh.write(b"\x7f" * 100)
    with caplog.at_level("WARNING", logger="emlive.io.movie"):
        data = read_movie(path)
    np.testing.assert_array_equal(data, counts_movie.astype(np.float32))
    assert "100 bytes beyond" in caplog.text


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.float32])
def test_lzw_tiff_round_trip_is_exact(tmp_path, rng, dtype):
    frames = (rng.poisson(2.0, size=(7, 40, 56)) * (1 if dtype != np.float32 else 0.25)).astype(dtype)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, frames, compression="lzw", photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression == 5 and len(tif.pages) == 7  # LZW, one page per frame
    header = read_movie_header(path)
    assert header.format == "tiff"
    assert (header.n_frames, header.shape, header.dtype) == (7, (40, 56), np.dtype(dtype))
    assert header.pixel_size_a is None
    # rows bottom-up, as RELION and MotionCor2 read TIFF movies
    np.testing.assert_array_equal(read_movie(path), frames[:, ::-1].astype(np.float32))


def test_uncompressed_and_deflate_tiff(tmp_path, counts_movie):
    for compression in (None, "zlib"):
        path = tmp_path / f"m_{compression}.tiff"
        tifffile.imwrite(path, counts_movie, compression=compression, photometric="minisblack")
        np.testing.assert_array_equal(read_movie(path), counts_movie[:, ::-1].astype(np.float32))


@pytest.mark.parametrize("suffix", [".mrc", ".tif"])
def test_frame_slices_and_iteration(tmp_path, counts_movie, mrc_writer, suffix):
    path = tmp_path / f"m{suffix}"
    if suffix == ".mrc":
        mrc_writer(path, counts_movie.view(np.int8))
    else:
        tifffile.imwrite(path, counts_movie[:, ::-1], compression="lzw", photometric="minisblack")  # bottom-up
    expected = counts_movie.astype(np.float32)
    with open_movie(path) as movie:
        assert len(movie) == 6
        np.testing.assert_array_equal(movie.frames(2, 5), expected[2:5])
        np.testing.assert_array_equal(movie.frames(-2), expected[-2:])
        assert movie.frames(4, 2).shape == (0, 48, 64)
        blocks = list(movie.iter_frames(chunk=4))
        assert [len(b) for b in blocks] == [4, 2]
        np.testing.assert_array_equal(np.concatenate(blocks), expected)
        assert "m" + suffix in repr(movie)
    with pytest.raises(ValueError, match="closed"):
        movie.frames()


def test_movie_format_by_suffix(tmp_path):
    assert movie_format("a/B.MRCS") == "mrc"
    assert movie_format("x.TIFF") == "tiff"
    assert movie_format("x.eer") == "eer"
    with pytest.raises(MovieFormatError, match=r"notes\.txt.*unknown movie suffix"):
        movie_format(tmp_path / "notes.txt")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_movie_header(tmp_path / "gone.mrc")


def test_bad_eer_fractions_argument(tmp_path, mrc_writer, counts_movie):
    path = mrc_writer(tmp_path / "m.mrc", counts_movie.view(np.int8))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="eer_fractions"):
            read_movie_header(path, eer_fractions=bad)


# ---------------------------------------------------------------- header-only reads decode nothing


@pytest.fixture
def no_decoding(monkeypatch):
    """Make every pixel-reading path fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("pixels were decoded during a header-only read")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", refuse)
    monkeypatch.setattr(tifffile.TiffFrame, "asarray", refuse)
    monkeypatch.setattr(imagecodecs, "eer_decode", refuse)
    monkeypatch.setattr(imagecodecs, "lzw_decode", refuse)
    monkeypatch.setattr(movie_module, "_read_full", refuse)


def test_header_only_reads_decode_nothing(tmp_path, counts_movie, mrc_writer, eer_writer, raw_frame_maker, rng, no_decoding):
    mrc = mrc_writer(tmp_path / "m.mrc", counts_movie.view(np.int8))
    tif = tmp_path / "m.tif"
    tifffile.imwrite(tif, counts_movie, compression="lzw", photometric="minisblack")
    eer = eer_writer(tmp_path / "m.eer", raw_frame_maker(rng, 6, (32, 32)))
    for path, n in ((mrc, 6), (tif, 6), (eer, 3)):
        assert read_movie_header(path, eer_fractions=3).n_frames == n
        check_movie_complete(path)
        with open_movie(path, eer_fractions=3) as movie:
            assert len(movie) == n
        with pytest.raises(AssertionError, match="decoded"):
            read_movie(path, eer_fractions=3)


def test_header_of_a_4k_movie_is_instant(tmp_path):
    """40 × 4096² float32 (2.7 GB, sparse on disk): the header read touches none of it."""
    path = tmp_path / "huge.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((1, 4, 4), np.float32))
        mrc.header.nx, mrc.header.ny, mrc.header.nz = 4096, 4096, 40
        mrc.header.mx, mrc.header.my, mrc.header.mz = 4096, 4096, 40
        mrc.header.cella = (4096 * 0.5, 4096 * 0.5, 40 * 0.5)
    with open(path, "r+b") as fh:
        fh.truncate(1024 + 40 * 4096 * 4096 * 4)
    t0 = time.perf_counter()
    header = read_movie_header(path)
    assert time.perf_counter() - t0 < 0.5
    assert (header.n_frames, header.shape, header.pixel_size_a) == (40, (4096, 4096), 0.5)
    with open_movie(path) as movie:
        assert movie.frames(39).shape == (1, 4096, 4096)  # one frame read on demand


# ---------------------------------------------------------------------------------------- gain


def test_gain_multiplies_frames(tmp_path, rng, counts_movie, mrc_writer):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, counts_movie[:, ::-1], compression="lzw", photometric="minisblack")  # bottom-up
    gain = rng.uniform(0.8, 1.25, size=(48, 64)).astype(np.float32)
    expected = counts_movie.astype(np.float32) * gain
    np.testing.assert_array_equal(read_movie(path, gain=gain), expected)
    mrc_gain = mrc_writer(tmp_path / "gain.mrc", gain)
    tif_gain = tmp_path / "gain.tiff"
    tifffile.imwrite(tif_gain, gain[::-1])  # TIFF gains are read bottom-up too, like RELION
    for source in (mrc_gain, tif_gain, str(tif_gain)):
        np.testing.assert_array_equal(read_movie(path, gain=source), expected)
    with open_movie(path, gain=gain) as movie:
        np.testing.assert_array_equal(movie.frames(3, 4), expected[3:4])


def test_gain_shape_mismatch_names_both_shapes_and_files(tmp_path, counts_movie, mrc_writer):
    movie_path = mrc_writer(tmp_path / "movie_01.mrc", counts_movie.view(np.int8))
    gain_path = mrc_writer(tmp_path / "gain_k3.mrc", np.ones((64, 48), np.float32))
    with pytest.raises(GainError) as info:
        read_movie(movie_path, gain=gain_path)
    message = str(info.value)
    for part in ("(64, 48)", "(48, 64)", "gain_k3.mrc", "movie_01.mrc", "transposed"):
        assert part in message
    with pytest.raises(GainError, match=r"\(array\).*\(96, 128\).*\(48, 64\).*super-resolution"):
        read_movie(movie_path, gain=np.ones((96, 128)))


def test_read_gain_errors(tmp_path, mrc_writer):
    with pytest.raises(GainError, match="not found"):
        read_gain(tmp_path / "nope.mrc")
    (tmp_path / "g.dm4").write_bytes(b"x")
    with pytest.raises(GainError, match=r"g\.dm4.*suffix"):
        read_gain(tmp_path / "g.dm4")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 50)
    with pytest.raises(GainError, match=r"bad\.tif"):
        read_gain(tmp_path / "bad.tif")
    nan_gain = np.ones((4, 4), np.float32)
    nan_gain[1, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan_gain)
    with pytest.raises(GainError, match="1 NaN"):
        read_gain(tmp_path / "nan.tif")
    with pytest.raises(GainError, match="one real 2D image"):
        read_gain(mrc_writer(tmp_path / "stack.mrc", np.ones((2, 4, 4), np.float32)))


def test_orient_gain():
    gain = np.arange(6, dtype=np.float32).reshape(2, 3)  # [[0 1 2], [3 4 5]]
    np.testing.assert_array_equal(orient_gain(gain), gain)
    np.testing.assert_array_equal(orient_gain(gain, rotate_90=1), [[2, 5], [1, 4], [0, 3]])
    np.testing.assert_array_equal(orient_gain(gain, flip="x"), [[2, 1, 0], [5, 4, 3]])
    np.testing.assert_array_equal(orient_gain(gain, flip="y"), [[3, 4, 5], [0, 1, 2]])
    # rotation first, then the flip
    np.testing.assert_array_equal(orient_gain(gain, rotate_90=1, flip="y"), [[0, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(orient_gain(gain, rotate_90=4), gain)
    with pytest.raises(ValueError, match="flip"):
        orient_gain(gain, flip="z")  # type: ignore[arg-type]


def test_frames_into_a_reused_output(tmp_path, counts_movie, mrc_writer):
    path = mrc_writer(tmp_path / "m.mrc", counts_movie.view(np.int8))
    gain = np.full((48, 64), 2.0, np.float32)
    buffer = np.full((2, 48, 64), np.nan, np.float32)
    with open_movie(path, gain=gain) as movie:
        result = movie.frames(1, 3, out=buffer)
        assert result is buffer
        np.testing.assert_array_equal(buffer, counts_movie[1:3].astype(np.float32) * 2)
        with pytest.raises(ValueError, match="out must be"):
            movie.frames(0, 3, out=buffer)
        with pytest.raises(ValueError, match="out must be"):
            movie.frames(0, 2, out=buffer.astype(np.float64))


def test_stored_frames_mrc_mapped_and_tiff_bottom_up(tmp_path, counts_movie, mrc_writer):
    """Frames as stored (no gain, no cast): an MRC mapped from the file, a TIFF decoded rows
    bottom-up like every other TIFF read."""
    mrc = mrc_writer(tmp_path / "m.mrc", counts_movie.view(np.int8))
    with open_movie(mrc, gain=np.full((48, 64), 2.0, np.float32)) as movie:
        assert movie.stored_dtype == np.int8
        mapped = movie.memmap()
        np.testing.assert_array_equal(mapped, counts_movie.view(np.int8))
        out = np.empty((2, 48, 64), np.int8)
        np.testing.assert_array_equal(movie.read_stored(3, 5, out), counts_movie.view(np.int8)[3:5])
    np.testing.assert_array_equal(mapped[2], counts_movie.view(np.int8)[2])  # outlives the file handle
    tif = tmp_path / "m.tif"
    tifffile.imwrite(tif, counts_movie, compression="lzw", photometric="minisblack")
    with open_movie(tif) as movie:
        assert movie.stored_dtype == counts_movie.dtype and movie.memmap() is None
        out = np.empty((4, 48, 64), counts_movie.dtype)
        np.testing.assert_array_equal(movie.read_stored(1, 5, out), counts_movie[1:5, ::-1])
