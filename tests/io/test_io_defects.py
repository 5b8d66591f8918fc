"""Defect files and maps, hot pixels, and the values that replace bad pixels."""

from __future__ import annotations

import numpy as np
import pytest

from emlive.io.defects import defect_fill_values, hot_pixel_mask, read_defects, upsample_mask
from emlive.io.errors import GainError
from emlive.io.gain import orient_gain
from emlive.io.mrc import write_mrc_atomic
from emlive.io.movie import open_movie


def test_text_defect_file_marks_rectangles(tmp_path):
    path = tmp_path / "defects.txt"
    path.write_text("# x y w h\n3 0 1 20\n\n10 5 2 3  # a cluster\n")
    mask = read_defects(path, (20, 16))
    expected = np.zeros((20, 16), bool)
    expected[:, 3] = True
    expected[5:8, 10:12] = True
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize(
    ("text", "match"),
    [("3 0 1\n", r"line 1.*'x y w h'"), ("1 1 1 1\n15 0 2 1\n", r"line 2.*not inside the 16x20")],
)
def test_bad_defect_lines_name_the_line(tmp_path, text, match):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(GainError, match=match):
        read_defects(path, (20, 16))


def test_defect_map_image_and_its_shape(tmp_path):
    image = np.zeros((20, 16), np.float32)
    image[4, 7] = 1
    write_mrc_atomic(tmp_path / "map.mrc", image, pixel_size_a=1.0)
    assert np.flatnonzero(read_defects(tmp_path / "map.mrc", (20, 16))).tolist() == [4 * 16 + 7]
    with pytest.raises(GainError, match=r"map\.mrc.*16x20.*frames are 20x16"):
        read_defects(tmp_path / "map.mrc", (16, 20))
    with pytest.raises(GainError, match="not found"):
        read_defects(tmp_path / "none.txt", (16, 20))
    assert upsample_mask(image != 0, 2)[8:10, 14:16].all() and upsample_mask(image != 0, 2).sum() == 4


def test_hot_pixels_are_found_and_shot_noise_is_not():
    rng = np.random.default_rng(0)
    frame_sum = rng.poisson(8.0, (256, 256)).astype(np.float64)  # 8 frames at 1 e/px
    hot = [(10, 20), (100, 200), (255, 0)]
    for y, x in hot:
        frame_sum[y, x] = 120.0
    found = hot_pixel_mask(frame_sum)
    assert sorted(map(tuple, np.argwhere(found).tolist())) == sorted(hot)


def test_fill_values_are_the_local_mean_per_frame():
    frame_sum = np.full((40, 40), 16.0)
    frame_sum[:, 20:] = 32.0
    bad = np.zeros((40, 40), bool)
    bad[:, 5] = True  # a whole column
    bad[10, 30] = True
    values = defect_fill_values(frame_sum, bad, n_frames=8)
    index = np.flatnonzero(bad)
    assert values.shape == (41,)
    np.testing.assert_allclose(values[index % 40 == 5], 2.0)  # 16 counts over 8 frames beside the column
    assert values[index == 10 * 40 + 30] == pytest.approx(4.0)


def test_gain_rotation_is_clockwise_as_displayed_and_flips_follow_relion(tmp_path):
    """RELION/MotionCor2: rotate N quarter turns clockwise (row 0 at the top), then flip."""
    gain = np.arange(6, dtype=np.float32).reshape(2, 3) + 1  # [[1 2 3], [4 5 6]]
    frames = np.ones((2, 3, 2), np.float32)
    write_mrc_atomic(tmp_path / "m.mrc", frames, pixel_size_a=1.0)
    with open_movie(tmp_path / "m.mrc", gain=gain, gain_rotation=1) as movie:
        # clockwise: the left column (1, 4) read bottom-up becomes the top row
        np.testing.assert_array_equal(movie.gain, [[4, 1], [5, 2], [6, 3]])
    with open_movie(tmp_path / "m.mrc", gain=gain, gain_rotation=1, gain_flip="y") as movie:
        np.testing.assert_array_equal(movie.gain, [[6, 3], [5, 2], [4, 1]])
    with open_movie(tmp_path / "m.mrc", gain=gain, gain_rotation=3, gain_flip="x") as movie:
        np.testing.assert_array_equal(movie.gain, orient_gain(gain, rotate_90=1, flip="x"))
