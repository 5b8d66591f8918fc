"""EER rendered at 4K and 8K from the events' sub-pixel bits, and fractionated by exposure."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from emlive.io.movie import eer_grouping_for_dose, open_movie, read_movie, read_movie_header
from emlive.synth import RawFrame, write_eer

SHAPE = (64, 96)


def _raw_frames(rng: np.random.Generator, n: int, shape: tuple[int, int] = SHAPE) -> list[RawFrame]:
    frames = []
    for _ in range(n):
        pixel = np.sort(rng.choice(shape[0] * shape[1], size=rng.integers(50, 400), replace=False))
        frames.append(RawFrame(pixel.astype(np.int64), rng.integers(0, 4, (pixel.size, 2), dtype=np.uint8)))
    return frames


@pytest.mark.parametrize("upsampling", [1, 2])
def test_rendering_reproduces_the_encoded_events_exactly(tmp_path, upsampling):
    rng = np.random.default_rng(upsampling)
    raw = _raw_frames(rng, 12)
    path = tmp_path / "m.eer"
    write_eer(path, raw, shape=SHAPE, pixel_size_a=0.8)
    expected = np.stack(
        [sum(f.render(SHAPE, upsampling=upsampling).astype(np.float32) for f in raw[i : i + 4]) for i in (0, 4, 8)]
    )
    header = read_movie_header(path, eer_fractions=3, eer_upsampling=upsampling)
    assert header.shape == (SHAPE[0] * upsampling, SHAPE[1] * upsampling)
    assert header.pixel_size_a == pytest.approx(0.8 / upsampling)
    fractions = read_movie(path, eer_fractions=3, eer_upsampling=upsampling)
    np.testing.assert_array_equal(fractions, expected)
    assert fractions.sum() == sum(f.pixel.size for f in raw)  # every event once, in its sub-pixel


def test_8k_rendering_uses_a_native_gain_on_each_subpixel(tmp_path):
    rng = np.random.default_rng(7)
    raw = _raw_frames(rng, 4)
    path = tmp_path / "g.eer"
    write_eer(path, raw, shape=SHAPE)
    gain = rng.uniform(0.5, 2.0, SHAPE).astype(np.float32)
    with open_movie(path, gain=gain, eer_fractions=1, eer_upsampling=2) as movie:
        frame = movie.frames()[0]
    plain = read_movie(path, eer_fractions=1, eer_upsampling=2)[0]
    np.testing.assert_allclose(frame, plain * np.repeat(np.repeat(gain, 2, 0), 2, 1))


def test_grouping_for_a_dose_per_fraction():
    assert eer_grouping_for_dose(400, total_dose_e_a2=40.0, dose_per_fraction_e_a2=1.0) == (10, 40, 0)
    assert eer_grouping_for_dose(403, total_dose_e_a2=40.3, dose_per_fraction_e_a2=1.0) == (10, 40, 3)
    assert eer_grouping_for_dose(23, total_dose_e_a2=2.3, dose_per_fraction_e_a2=0.52) == (5, 4, 3)
    assert eer_grouping_for_dose(10, total_dose_e_a2=1.0, dose_per_fraction_e_a2=0.01) == (1, 10, 0)


def test_fractionation_by_dose_drops_and_reports_the_remainder(tmp_path, caplog):
    rng = np.random.default_rng(3)
    raw = _raw_frames(rng, 23)
    path = tmp_path / "d.eer"
    write_eer(path, raw, shape=SHAPE, metadata={"totalDose": (2.3, "e/A^2")})
    with caplog.at_level(logging.INFO, logger="emlive.io.movie"):
        with open_movie(path, eer_dose_per_fraction_e_a2=0.5) as movie:
            header = movie.header
            fractions = movie.frames()
    assert (header.n_frames, header.fraction_sizes, header.n_unused_raw_frames) == (4, (5, 5, 5, 5), 3)
    assert header.dose_per_fraction_e_a2 == pytest.approx(0.5)
    expected = np.stack([sum(f.render(SHAPE).astype(np.float32) for f in raw[i : i + 5]) for i in range(0, 20, 5)])
    np.testing.assert_array_equal(fractions, expected)
    assert "the last 3 raw frames" in caplog.text and "not used" in caplog.text

    # an explicit total wins over the metadata; without either it is a clear error
    with open_movie(path, eer_dose_per_fraction_e_a2=0.5, eer_total_dose_e_a2=4.6) as movie:
        assert movie.header.fraction_sizes == (2,) * 11 + () and movie.header.n_unused_raw_frames == 1
    bare = tmp_path / "bare.eer"
    write_eer(bare, raw, shape=SHAPE)
    with pytest.raises(ValueError, match=r"bare\.eer.*no totalDose.*--eer-total-dose"):
        open_movie(bare, eer_dose_per_fraction_e_a2=0.5)
