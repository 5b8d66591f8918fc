"""EER: raw frames decoded at native size and summed into fractions."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from emlive.io import movie as movie_module
from emlive.io.movie import eer_fraction_bounds, open_movie, read_movie, read_movie_header


def expected_fractions(raw: np.ndarray, n_fractions: int) -> np.ndarray:
    per, extra = divmod(len(raw), n_fractions)
    sizes = [per + (i >= n_fractions - extra) for i in range(n_fractions)]  # the remainder spread at the end
    stops = np.cumsum(sizes)
    return np.stack([raw[stop - size : stop].sum(axis=0) for size, stop in zip(sizes, stops)]).astype(np.float32)


def test_fraction_bounds_spread_the_remainder_over_the_last_fractions():
    assert eer_fraction_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert eer_fraction_bounds(11, 3) == [(0, 3), (3, 7), (7, 11)]
    assert eer_fraction_bounds(9, 3) == [(0, 3), (3, 6), (6, 9)]
    assert eer_fraction_bounds(5, 5) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert eer_fraction_bounds(7, 1) == [(0, 7)]
    sizes = [b - a for a, b in eer_fraction_bounds(403, 40)]
    assert sizes == [10] * 37 + [11] * 3


@pytest.mark.parametrize(
    ("compression", "bits"), [(65001, None), (65000, None), (65002, (9, 2, 2)), (65002, (6, 1, 3))]
)
def test_fractions_are_sums_of_raw_frames(tmp_path, rng, eer_writer, raw_frame_maker, compression, bits):
    raw = raw_frame_maker(rng, 11, (40, 56))
    path = eer_writer(tmp_path / "m.eer", raw, compression=compression, bits=bits)
    # oracle 1: tifffile's own EER decoder reads back the raw frames we wrote
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.series[0].asarray().astype(bool), raw)
    # fractions: 11 raw frames into 4 fractions of 2, 3, 3 and 3 (the remainder spread at the end)
    header = read_movie_header(path, eer_fractions=4)
    assert header.format == "eer"
    assert (header.n_frames, header.n_raw_frames, header.shape) == (4, 11, (40, 56))
    assert header.fraction_sizes == (2, 3, 3, 3)
    assert header.dtype == np.dtype(bool)
    fractions = read_movie(path, eer_fractions=4)
    assert fractions.dtype == np.float32 and fractions.shape == (4, 40, 56)
    np.testing.assert_array_equal(fractions, expected_fractions(raw, 4))
    assert fractions.sum() == raw.sum()  # every event counted once


def test_fraction_slices_gain_and_one_fraction_per_raw_frame(tmp_path, rng, eer_writer, raw_frame_maker):
    raw = raw_frame_maker(rng, 9, (32, 48))
    path = eer_writer(tmp_path / "m.eer", raw)
    gain = rng.uniform(0.5, 2.0, size=(32, 48)).astype(np.float32)
    expected = expected_fractions(raw, 3) * gain
    with open_movie(path, gain=gain, eer_fractions=3) as movie:
        assert len(movie) == 3
        np.testing.assert_array_equal(movie.frames(1, 3), expected[1:3])
        np.testing.assert_array_equal(movie.frames(), expected)
    np.testing.assert_array_equal(read_movie(path, eer_fractions=9), raw.astype(np.float32))


def test_multi_strip_pages_and_integrated_first_page(tmp_path, rng, eer_writer, raw_frame_maker):
    raw = raw_frame_maker(rng, 6, (30, 40))
    striped = eer_writer(tmp_path / "striped.eer", raw, rows_per_strip=7)
    np.testing.assert_array_equal(read_movie(striped, eer_fractions=2), expected_fractions(raw, 2))
    integrated = eer_writer(tmp_path / "integrated.eer", raw, integrated_page=True)
    header = read_movie_header(integrated, eer_fractions=2)
    assert header.n_raw_frames == 6  # the integrated image is not a frame
    np.testing.assert_array_equal(read_movie(integrated, eer_fractions=2), expected_fractions(raw, 2))


def test_pixel_size_from_eer_metadata(tmp_path, rng, eer_writer, raw_frame_maker):
    raw = raw_frame_maker(rng, 2, (16, 16))
    assert read_movie_header(eer_writer(tmp_path / "a.eer", raw, pixel_size_a=0.73), eer_fractions=1).pixel_size_a == 0.73
    assert read_movie_header(eer_writer(tmp_path / "b.eer", raw), eer_fractions=1).pixel_size_a is None


def test_more_fractions_than_raw_frames_is_an_error(tmp_path, rng, eer_writer, raw_frame_maker):
    path = eer_writer(tmp_path / "short.eer", raw_frame_maker(rng, 5, (16, 16)))
    with pytest.raises(ValueError, match=r"short\.eer.*5 raw frames.*6 fractions"):
        read_movie_header(path, eer_fractions=6)


def test_decode_without_accumulating_decoder(tmp_path, rng, eer_writer, raw_frame_maker, monkeypatch):
    """The fallback for an imagecodecs whose eer_decode overwrites ``out`` gives the same sums."""
    raw = raw_frame_maker(rng, 7, (24, 24))
    path = eer_writer(tmp_path / "m.eer", raw)
    monkeypatch.setattr(movie_module, "_eer_decode_accumulates", lambda: False)
    np.testing.assert_array_equal(read_movie(path, eer_fractions=2), expected_fractions(raw, 2))


def test_installed_imagecodecs_accumulates():
    """The fast path (decoding straight into the fraction sum) is the one in use."""
    assert movie_module._eer_decode_accumulates()


def test_synth_encoder_round_trip_if_present(tmp_path, rng):
    """emlive.synth's EER writer (owned by synth) is read back exactly, fraction by fraction."""
    synth_eer = pytest.importorskip("emlive.synth.eer")
    raw = rng.random((6, 32, 40)) < 0.1
    events = [np.column_stack([np.nonzero(f)[1], np.nonzero(f)[0]]) + 0.5 for f in raw]
    path = tmp_path / "synth.eer"
    synth_eer.write_eer(path, iter(events), shape=(32, 40), pixel_size_a=1.1)
    header = read_movie_header(path, eer_fractions=3)
    assert (header.n_raw_frames, header.pixel_size_a) == (6, 1.1)
    np.testing.assert_array_equal(read_movie(path, eer_fractions=3), expected_fractions(raw, 3))


def test_fractions_as_stored_are_uint8_counts_without_the_gain(tmp_path, rng, eer_writer, raw_frame_maker):
    raw = raw_frame_maker(rng, 9, (32, 48))
    path = eer_writer(tmp_path / "m.eer", raw)
    gain = rng.uniform(0.5, 2.0, size=(32, 48)).astype(np.float32)
    with open_movie(path, gain=gain, eer_fractions=3) as movie:
        assert movie.stored_dtype == np.uint8
        assert movie.memmap() is None
        out = np.empty((2, 32, 48), np.uint8)
        assert movie.read_stored(1, 3, out) is out
        np.testing.assert_array_equal(out, expected_fractions(raw, 3)[1:3])
        with pytest.raises(ValueError, match="uint8"):
            movie.read_stored(0, 2, np.empty((2, 32, 48), np.float32))
