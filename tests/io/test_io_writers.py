"""Atomic writers: MRC (pixel size in the header), STAR, PNG, text/bytes."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import starfile
from PIL import Image

from emlive.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text, is_temporary_name
from emlive.io.errors import MovieFormatError
from emlive.io.mrc import read_mrc, write_mrc_atomic
from emlive.io.png import to_uint8, write_png_atomic
from emlive.io.star import write_star_atomic


def test_atomic_path_renames_on_success_and_keeps_suffix(tmp_path):
    dest = tmp_path / "out.mrc"
    with atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.suffix == ".mrc"
        assert is_temporary_name(tmp)
        tmp.write_bytes(b"abc")
        assert not dest.exists()
    assert dest.read_bytes() == b"abc"
    assert os.listdir(tmp_path) == ["out.mrc"]


def test_atomic_path_leaves_old_file_and_no_temp_on_error(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert dest.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_without_output_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"), atomic_path(tmp_path / "x.bin"):
        pass
    assert os.listdir(tmp_path) == []


def test_atomic_write_text_and_bytes(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "line\r\nünï\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "a.txt").read_bytes() == "line\r\nünï\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "a.txt", "new")
    assert (tmp_path / "a.txt").read_text() == "new"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint16, np.int8])
def test_mrc_round_trip_2d_with_pixel_size(tmp_path, dtype):
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(48, 64)) * 50).astype(dtype)
    write_mrc_atomic(tmp_path / "m.mrc", data, pixel_size_a=1.234)
    back, apix = read_mrc(tmp_path / "m.mrc")
    assert apix == pytest.approx(1.234, abs=1e-5)
    expected = data.astype(np.float32) if dtype == np.float64 else data
    assert back.dtype == expected.dtype
    np.testing.assert_array_equal(back, expected)


def test_mrcs_stack_is_an_image_stack(tmp_path):
    import mrcfile

    stack = np.arange(3 * 8 * 10, dtype=np.float32).reshape(3, 8, 10)
    write_mrc_atomic(tmp_path / "s.mrcs", stack, pixel_size_a=0.8)
    with mrcfile.open(tmp_path / "s.mrcs", permissive=False) as m:
        assert m.is_image_stack()
        assert m.header.mz == 1
    back, apix = read_mrc(tmp_path / "s.mrcs")
    np.testing.assert_array_equal(back, stack)
    assert apix == pytest.approx(0.8, abs=1e-6)


def test_mrc_overwrite_is_atomic_and_rejects_bad_pixel_size(tmp_path):
    path = tmp_path / "m.mrc"
    write_mrc_atomic(path, np.zeros((4, 4), np.float32), pixel_size_a=1.0)
    with pytest.raises(ValueError, match="pixel_size_a"):
        write_mrc_atomic(path, np.ones((4, 4), np.float32), pixel_size_a=0.0)
    np.testing.assert_array_equal(read_mrc(path)[0], 0)
    assert os.listdir(tmp_path) == ["m.mrc"]


def test_read_mrc_damaged_file_raises_movie_format_error(tmp_path):
    path = tmp_path / "bad.mrc"
    path.write_bytes(b"\x01" * 2000)
    with pytest.raises(MovieFormatError, match="bad.mrc"):
        read_mrc(path)


def test_star_round_trip(tmp_path):
    general = pd.DataFrame({"rlnImageSizeX": [64], "rlnMicrographMovieName": ["a.tif"]})
    shifts = pd.DataFrame(
        {"rlnMicrographFrameNumber": [1, 2, 3], "rlnMicrographShiftX": [0.0, 1.5, -2.25]}
    )
    write_star_atomic(tmp_path / "x.star", {"general": general, "global_shift": shifts})
    back = starfile.read(tmp_path / "x.star", always_dict=True)
    assert set(back) == {"general", "global_shift"}
    np.testing.assert_allclose(back["global_shift"]["rlnMicrographShiftX"], [0.0, 1.5, -2.25])
    assert list(back["global_shift"]["rlnMicrographFrameNumber"]) == [1, 2, 3]
    assert os.listdir(tmp_path) == ["x.star"]


def test_to_uint8_stretches_robustly():
    img = np.linspace(0, 1, 10000, dtype=np.float32).reshape(100, 100)
    img[0, 0] = 1e6  # a hot pixel must not crush the contrast
    img[0, 1] = np.nan
    out = to_uint8(img)
    assert out[0, 1] == 0
    assert out[50, 50] in range(120, 136)
    assert out.max() == 255 and np.count_nonzero(out == 255) < 100
    assert (to_uint8(np.full((5, 5), 3.0)) == 128).all()


def test_png_downsamples_and_keeps_content(tmp_path):
    img = np.zeros((1000, 700), np.float32)
    img[:, 350:] = 1.0  # left dark, right bright
    write_png_atomic(tmp_path / "p.png", img, max_size_px=256)
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG" and im.mode == "L"
        assert max(im.size) <= 256
        pix = np.asarray(im)
    assert pix.shape == (250, 175)
    assert pix[:, :80].mean() < 5 and pix[:, -80:].mean() > 250


def test_png_small_image_not_upscaled(tmp_path):
    write_png_atomic(tmp_path / "p.png", np.eye(20), max_size_px=512)
    with Image.open(tmp_path / "p.png") as im:
        assert im.size == (20, 20)
