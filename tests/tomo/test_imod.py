"""IMOD's files (emlive.tomo.imod): written, read back, and the .xf's meaning checked on an image.

The .xf layout and sign conventions follow IMOD's documentation of transforms (xfmodel, newstack:
``X' = A11 X + A12 Y + DX`` about the image centre) and the way RELION 5's IMOD import reads them
(teamtomo/yet-another-imod-wrapper ``utils/xf.py``: in-plane rotation ``atan2(−A21, A11)``,
specimen shift ``−A⁻¹ D``).
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import scipy.ndimage

from emlive.tomo.imod import (
    alignment_from_xf,
    parse_tlt,
    parse_xf,
    write_rawtlt,
    write_stack,
    write_tlt,
    write_xf,
    xf_from_alignment,
    xf_text,
)


def test_stack_is_an_mrc_image_stack_with_pixel_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(5, 32, 48)).astype(np.float64)
    path = write_stack(tmp_path / "TS_01.st", stack, pixel_size_a=10.8)
    with mrcfile.open(path, permissive=False) as mrc:
        assert mrc.is_image_stack() and mrc.data.dtype == np.float32
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (48, 32, 5)
        assert float(mrc.voxel_size.x) == pytest.approx(10.8)
        np.testing.assert_allclose(mrc.data, stack.astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["TS_01.st"]  # no temporary left behind
    with pytest.raises(ValueError, match="shape"):
        write_stack(tmp_path / "bad.st", stack[0], pixel_size_a=1.0)


def test_tilt_angle_files_round_trip(tmp_path: Path) -> None:
    angles = np.array([-60.0, -57.004, -3.0, 0.0, 2.996, 60.0])
    raw = write_rawtlt(tmp_path / "TS_01.rawtlt", angles)
    assert raw.read_text().splitlines()[:2] == [" -60.00", " -57.00"]
    np.testing.assert_allclose(parse_tlt(raw.read_text()), angles, atol=0.005)
    tlt = write_tlt(tmp_path / "TS_01.tlt", angles + 0.25)
    np.testing.assert_allclose(parse_tlt(tlt.read_text()), angles + 0.25, atol=0.005)
    for bad in ("", "1 2\n", "x\n", "nan\n", "400\n"):
        with pytest.raises(ValueError):
            parse_tlt(bad)


def test_xf_layout_matches_imod() -> None:
    """A tilt axis of 85° and no shift: etomo's familiar ``0.087 0.996 −0.996 0.087`` rotation."""
    text = xf_text(xf_from_alignment(85.0, np.zeros((1, 2))))
    assert text == "   0.0871557   0.9961947  -0.9961947   0.0871557      -0.000      -0.000\n"
    assert len(text.rstrip("\n")) == 72


def test_xf_round_trip_recovers_axis_and_shifts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    axis = np.full(9, -94.3)
    shifts = rng.normal(0, 20, size=(9, 2))
    path = write_xf(tmp_path / "TS_01.xf", xf_from_alignment(axis, shifts))
    back_axis, back_shifts = alignment_from_xf(parse_xf(path.read_text()))
    np.testing.assert_allclose(back_axis, axis, atol=1e-5)
    np.testing.assert_allclose(back_shifts, shifts, atol=2e-3)  # DX, DY written to 0.001 px


def test_parse_xf_reads_fixed_width_fields_that_touch() -> None:
    line = f"{1.0:12.7f}{0.0:12.7f}{0.0:12.7f}{1.0:12.7f}{-1234567.891:12.3f}{-2345678.912:12.3f}"
    assert "-1234567.891-2345678.912" in line
    xf = parse_xf(line + "\n")
    assert xf[0, 0, 2] == -1234567.891 and xf[0, 1, 2] == -2345678.912
    for bad in ("", "1 2 3\n", "1 0 0 1 0 nan\n"):
        with pytest.raises(ValueError):
            parse_xf(bad)


def test_xf_aligns_an_image_as_imod_would() -> None:
    """Apply the written transform to a raw view the way newstack does (output pixel X' takes
    input pixel A⁻¹ (X' − D), both about the centre): the specimen comes out with its tilt axis
    along +y and its shift removed."""
    ny, nx = 96, 128
    yy, xx = np.mgrid[0:ny, 0:nx]
    centre = np.array([(nx - 1) / 2, (ny - 1) / 2])

    def blob(x: float, y: float) -> np.ndarray:
        return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)

    q = np.array([17.0, 9.0])  # a feature in the axis frame (x across the axis, y along it)
    alpha, s = 70.0, np.array([6.5, -4.0])
    a = np.deg2rad(alpha)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    raw = blob(*(rot @ q + s + centre))  # emlive's geometry: R(α) q + s
    xf = xf_from_alignment(alpha, s[None])[0]
    a_inv = np.linalg.inv(xf[:, :2])
    out_xy = np.stack([xx - centre[0], yy - centre[1]], axis=-1) - xf[:, 2]
    src = np.einsum("ij,...j->...i", a_inv, out_xy) + centre
    aligned = scipy.ndimage.map_coordinates(raw, [src[..., 1], src[..., 0]], order=1)
    peak = np.unravel_index(np.argmax(aligned), aligned.shape)
    np.testing.assert_allclose([peak[1] - centre[0], peak[0] - centre[1]], q, atol=0.6)
