"""Our EER writer: tifffile/imagecodecs decode exactly the events that were written."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from emlive.acquisition import Optics
from emlive.synth import (
    RawFrame,
    encode_eer_frame,
    movie_events,
    split_into_raw_frames,
    specimen_image,
    trajectory,
    write_eer,
)
from emlive.synth.eer import EER_COMPRESSION_7BIT, EER_COMPRESSION_8BIT


def _render(events_xy: np.ndarray, shape: tuple[int, int], upsampling: int) -> np.ndarray:
    image = np.zeros((shape[0] * upsampling, shape[1] * upsampling), dtype=np.int64)
    q = np.floor(events_xy * upsampling).astype(np.int64)
    np.add.at(image, (q[:, 1], q[:, 0]), 1)
    return image


def _events(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    yx = np.argwhere(mask)
    return yx[:, ::-1] + rng.random(yx.shape)


def _edge_case_frames(rng: np.random.Generator, shape: tuple[int, int]) -> list[np.ndarray]:
    ny, nx = shape
    n = ny * nx
    frames = [_events(rng, rng.random(shape) < p) for p in (0.02, 0.3, 0.95)]
    frames.append(np.empty((0, 2)))  # an empty frame
    frames.append(_events(rng, np.ones(shape, bool)))  # every pixel, including the last one
    # runs of exactly one and two full-length codes (7-bit: 127, 8-bit: 255), and longer
    for pixels in ([127, 254, 255, 510, 511, n - 1], [0, 300, 1000], [n - 128], [n - 256]):
        frames.append(np.column_stack([np.array(pixels) % nx, np.array(pixels) // nx]) + rng.random((len(pixels), 2)))
    frames.append(np.array([[nx - 0.01, ny - 0.01], [0.0, 0.0]]))  # unsorted, sub-pixel extremes
    return frames


@pytest.mark.parametrize("compression", [EER_COMPRESSION_7BIT, EER_COMPRESSION_8BIT])
def test_eer_round_trip_is_exact_at_native_and_super_resolution(tmp_path, compression):
    rng = np.random.default_rng(11)
    shape = (40, 56)
    frames = _edge_case_frames(rng, shape)
    path = tmp_path / "movie.eer"
    assert write_eer(path, iter(frames), shape=shape, compression=compression, pixel_size_a=0.8) == len(frames)
    for superres, upsampling in [(0, 1), (1, 2), (2, 4)]:
        with tifffile.TiffFile(path, superres=superres) as tif:
            assert tif.is_eer
            assert len(tif.pages) == len(frames)
            assert tif.pages.first.compression == compression
            decoded = tif.series[0].asarray()
        assert decoded.shape == (len(frames), shape[0] * upsampling, shape[1] * upsampling)
        for i, events in enumerate(frames):
            assert np.array_equal(decoded[i].astype(np.int64), _render(events, shape, upsampling)), (superres, i)


def test_raw_frames_round_trip_with_their_quarter_pixel_positions(tmp_path):
    rng = np.random.default_rng(2)
    shape = (32, 48)
    counts = rng.poisson(1.5, size=shape).clip(max=6)
    frames = list(split_into_raw_frames(rng, counts, n_raw_frames=6))
    path = tmp_path / "raw.eer"
    write_eer(path, frames, shape=shape)
    for superres, upsampling in [(0, 1), (1, 2), (2, 4)]:
        with tifffile.TiffFile(path, superres=superres) as tif:
            decoded = tif.series[0].asarray()
        for frame, image in zip(frames, decoded, strict=True):
            assert np.array_equal(image, frame.render(shape, upsampling=upsampling).astype(bool))
    assert np.array_equal(decoded.reshape(6, 32, 4, 48, 4).sum(axis=(0, 2, 4)), counts)
    # a RawFrame made from positions encodes like the positions themselves
    xy = np.array([[5.9, 1.1], [0.3, 0.7], [47.99, 31.99]])
    assert encode_eer_frame(RawFrame.from_positions(xy, shape), shape) == encode_eer_frame(xy, shape)


def test_eer_metadata_is_readable(tmp_path):
    path = tmp_path / "m.eer"
    write_eer(path, [np.array([[1.5, 2.5]])] * 3, shape=(8, 16), pixel_size_a=0.83, metadata={"totalDose": (40.0, "e/A2")})
    with tifffile.TiffFile(path) as tif:
        meta = tif.eer_metadata
    assert meta["numberOfFrames"] == 3
    assert meta["sensorImageWidth"] == 16
    assert meta["sensorImageHeight"] == 8
    assert meta["sensorPixelSize.width"] == pytest.approx(0.83e-10)
    assert meta["totalDose"] == 40.0
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_encoder_rejects_what_a_detector_cannot_record(tmp_path):
    with pytest.raises(ValueError, match="one pixel"):
        encode_eer_frame(np.array([[3.1, 2.0], [3.9, 2.5]]), (8, 8))
    with pytest.raises(ValueError, match="must lie in"):
        encode_eer_frame(np.array([[8.0, 1.0]]), (8, 8))
    with pytest.raises(ValueError, match="compression"):
        encode_eer_frame(np.array([[1.0, 1.0]]), (8, 8), compression=65002)
    with pytest.raises(ValueError, match="at least one"):
        write_eer(tmp_path / "empty.eer", [], shape=(8, 8))
    assert not list(tmp_path.iterdir())  # the failed write left nothing


def test_split_into_raw_frames_sums_back_with_one_event_per_pixel():
    rng = np.random.default_rng(4)
    counts = rng.poisson(2.0, size=(64, 64)).clip(max=10).astype(np.uint16)
    raw = list(split_into_raw_frames(rng, counts, n_raw_frames=10))
    assert len(raw) == 10
    total = np.zeros((64, 64), np.int64)
    for frame in raw:
        assert np.all(np.diff(frame.pixel) > 0)  # sorted, at most one event per pixel
        total += frame.render((64, 64))
    assert np.array_equal(total, counts)
    # events spread over the raw frames and over the quarter-pixel positions
    per_frame = [len(frame.pixel) for frame in raw]
    assert min(per_frame) > 0.8 * counts.sum() / 10
    quarters = np.concatenate([frame.quarter_xy for frame in raw])
    assert set(np.unique(quarters)) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="raw frames"):
        list(split_into_raw_frames(rng, counts, n_raw_frames=5))


def test_eer_movie_fractions_match_truth(tmp_path):
    rng = np.random.default_rng(8)
    optics = Optics(pixel_size_a=1.0)
    image = specimen_image(rng, (128, 128), optics=optics, defocus_u_a=15000, defocus_v_a=14000, azimuth_deg=20)
    path_px = trajectory(rng, n_frames=6, amplitude_px=5.0)
    counts, raw = movie_events(rng, image, path_px, dose_e_per_px_per_fraction=1.0, raw_frames_per_fraction=25)
    assert counts.shape == (6, 128, 128)
    assert counts.mean() == pytest.approx(1.0, rel=0.02)
    path = tmp_path / "movie.eer"
    assert write_eer(path, raw, shape=(128, 128)) == 150
    with tifffile.TiffFile(path) as tif:
        decoded = tif.series[0].asarray()
    fractions = decoded.reshape(6, 25, 128, 128).sum(axis=1)
    assert np.array_equal(fractions, counts)
