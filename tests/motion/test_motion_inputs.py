"""The native engine on detector problems and bad input: defects, hot pixels, gain, EER, float16."""

from __future__ import annotations

import os
import struct

import mrcfile
import numpy as np
import pytest
import starfile
import tifffile

from emlive import synth
from emlive.acquisition import Acquisition
from emlive.io.errors import GainError, MovieFormatError
from emlive.io.mrc import write_mrc_atomic
from emlive.motion.native import motion_correct
from emlive.motion.types import MotionParams

GLOBAL = MotionParams(patches=(1, 1))


def _acq(**extra) -> Acquisition:
    return Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0, **extra)


def _rmsd(a, b) -> float:
    return float(np.sqrt(np.mean(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=1))))


@pytest.mark.parametrize("patches", [(1, 1), (5, 5)], ids=["global", "local"])
def test_defects_and_hot_pixels_are_replaced(tmp_path, drifting_movie, patches):
    """Both paths: global (float32 frames) and local (frames kept as stored, the repair
    applied per tile and per alignment frame)."""
    movie = drifting_movie(8, shape=(512, 512), n_frames=10, path_length_px=6.0)
    frames = movie.frames.copy()
    frames[:, 40, 60] = 60.0  # a hot pixel: 60 counts in every frame
    frames[:, :, 100] = 0.0  # a dead column, listed in the defect file
    path = tmp_path / "m.mrc"
    write_mrc_atomic(path, frames.astype(np.uint16), pixel_size_a=1.0)
    defects = tmp_path / "defects.txt"
    defects.write_text("100 0 1 512\n")
    params = MotionParams(patches=patches)
    result = motion_correct(path, tmp_path / "out", _acq(defects_path=defects), params, workers=1)
    assert (result.local_model is not None) == (patches != (1, 1))
    assert _rmsd(-np.array(result.shifts_px), movie.truth_px) < 0.3
    with mrcfile.open(result.micrograph_path) as mrc:
        total = mrc.data.astype(np.float64)
    mean = total.mean()
    assert abs(total[40, 60] - mean) < 0.5 * mean  # not 600 counts
    assert abs(total[:, 100].mean() - mean) < 0.2 * mean  # not a dark line

    kept = motion_correct(path, tmp_path / "raw", _acq(), params.model_copy(update={"detect_hot_pixels": False}), workers=1)
    with mrcfile.open(kept.micrograph_path) as mrc:
        assert mrc.data[40, 60] > 5 * mean  # without detection the hot pixel stays


def test_zeros_of_an_eer_gain_are_dead_pixels_and_float16_output(tmp_path, drifting_movie):
    movie = drifting_movie(9, shape=(256, 256), n_frames=6, path_length_px=4.0)
    path = tmp_path / "m.mrc"
    write_mrc_atomic(path, movie.frames.astype(np.uint16), pixel_size_a=1.0)
    gain = np.ones((256, 256), np.float32)
    gain[10:12, :] = 0.0
    gain_path = tmp_path / "eer.gain"
    tifffile.imwrite(gain_path, gain)
    params = GLOBAL.model_copy(update={"float16": True})
    result = motion_correct(path, tmp_path / "out", _acq(gain_path=gain_path), params, workers=1)
    with mrcfile.open(result.dose_weighted_path) as mrc:
        assert mrc.header.mode == 12 and mrc.data.dtype == np.float16
        data = mrc.data.astype(np.float64)
    assert abs(data[10:12].mean() - data.mean()) < 0.2 * data.mean()


def test_eer_fractionated_by_dose_is_weighted_with_the_fractions_dose(tmp_path):
    rng = np.random.default_rng(1)
    shape = (128, 128)
    frames = []
    for _ in range(23):
        pixel = np.sort(rng.choice(shape[0] * shape[1], size=3000, replace=False)).astype(np.int64)
        frames.append(synth.RawFrame(pixel, rng.integers(0, 4, (pixel.size, 2), dtype=np.uint8)))
    path = tmp_path / "d.eer"
    synth.write_eer(path, frames, shape=shape, metadata={"totalDose": (4.6, "e/A^2")})
    acq = _acq(eer_dose_per_fraction_e_a2=0.8)
    result = motion_correct(path, tmp_path / "out", acq, GLOBAL, workers=1)
    assert result.n_frames == 5  # 4 raw frames (0.8 e/Å²) each, the last 3 raw frames unused
    star = starfile.read(result.star_path, always_dict=True)
    assert star["general"]["rlnMicrographDoseRate"] == pytest.approx(0.8)
    assert star["general"]["rlnImageSizeZ"] == 5


def test_a_gain_of_the_wrong_shape_says_both_shapes(tmp_path):
    path = tmp_path / "m.mrc"
    write_mrc_atomic(path, np.ones((3, 64, 96), np.int8), pixel_size_a=1.0)
    gain = tmp_path / "gain.mrc"
    write_mrc_atomic(gain, np.ones((96, 64), np.float32), pixel_size_a=1.0)
    with pytest.raises(GainError, match=r"gain\.mrc.*\(96, 64\).*\(64, 96\).*transposed.*rotate"):
        motion_correct(path, tmp_path / "out", _acq(gain_path=gain), GLOBAL, workers=1)
    # the rotation option is the fix the message suggests
    motion_correct(path, tmp_path / "out", _acq(gain_path=gain, gain_rotation=1), GLOBAL, workers=1)


def test_an_eer_with_a_broken_ifd_chain_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(2)
    frames = [synth.RawFrame(np.sort(rng.choice(64 * 64, 100, replace=False)).astype(np.int64),
                             rng.integers(0, 4, (100, 2), dtype=np.uint8)) for _ in range(4)]
    path = tmp_path / "broken.eer"
    synth.write_eer(path, frames, shape=(64, 64))
    data = bytearray(path.read_bytes())
    first_ifd = struct.unpack_from("<Q", data, 8)[0]
    n_entries = struct.unpack_from("<Q", data, first_ifd)[0]
    next_field = first_ifd + 8 + 20 * n_entries
    struct.pack_into("<Q", data, next_field, len(data) + 4096)  # the next IFD lies beyond the end
    path.write_bytes(bytes(data))
    with pytest.raises(MovieFormatError, match=r"broken\.eer") as err:
        motion_correct(path, tmp_path / "out", _acq(eer_fractions=1), GLOBAL, workers=1)
    assert any(word in str(err.value) for word in ("truncated", "corrupt", "damaged"))


def test_a_tiff_with_a_bad_lzw_stream_is_a_clear_error(tmp_path):
    frames = np.random.default_rng(1).integers(0, 4, (4, 128, 128), dtype=np.uint8)
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, frames, compression="lzw", photometric="minisblack")
    data = bytearray(path.read_bytes())
    data[200:4000] = os.urandom(3800)  # scramble the first LZW strip
    path.write_bytes(bytes(data))
    with pytest.raises(MovieFormatError, match=r"bad\.tif.*(damaged|corrupt).*(copy|remove)"):
        motion_correct(path, tmp_path / "out", _acq(), GLOBAL, workers=1)
