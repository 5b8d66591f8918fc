"""Fixtures for the io tests: small movies in every format, written independently of emlive.

EER files are built here with a deliberately plain encoder (a Python loop over events, fine
for 64² frames) and tifffile's writer: tifffile cannot encode EER, so each page is written as
pre-compressed strips under a stand-in compression and the Compression tag is then patched to
65000/65001/65002. Decoding is checked against tifffile's own EER decoder, so the reader tests
do not depend on this encoder or on emlive.synth being right.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

EER_BITS = {65000: (8, 2, 2), 65001: (7, 2, 2)}


def encode_eer_strip(
    frame: np.ndarray, run_bits: int, horz_bits: int, vert_bits: int, rng: np.random.Generator
) -> bytes:
    """EER bit stream of a boolean image (rows of one strip), LSB first, random sub-pixels."""
    bits: list[int] = []

    def put(value: int, width: int) -> None:
        bits.extend((value >> k) & 1 for k in range(width))

    run_max = (1 << run_bits) - 1
    sub_bits = horz_bits + vert_bits
    position = 0
    for pixel in np.flatnonzero(frame.ravel()):
        run = int(pixel) - position
        while run >= run_max:
            put(run_max, run_bits)
            run -= run_max
        put(run | (int(rng.integers(0, 1 << sub_bits)) << run_bits), run_bits + sub_bits)
        position = int(pixel) + 1
    run = frame.size - position
    while run >= run_max:
        put(run_max, run_bits)
        run -= run_max
    if run:
        put(run, run_bits)
    bits.extend([0] * (16 + (-len(bits)) % 16))  # even byte count plus one spare word
    return np.packbits(np.asarray(bits, np.uint8), bitorder="little").tobytes()


def _patch_compression(path: Path, codes: dict[int, int]) -> None:
    """Overwrite the Compression tag value of page i with codes[i]."""
    with tifffile.TiffFile(path) as tif:
        where = {i: tif.pages[i].tags[259].valueoffset for i in codes}
    with open(path, "r+b") as fh:
        for i, code in codes.items():
            fh.seek(where[i])
            fh.write(struct.pack("<H", code))


def write_eer_file(
    path: Path,
    raw_frames: np.ndarray,
    *,
    compression: int = 65001,
    bits: tuple[int, int, int] | None = None,
    rows_per_strip: int | None = None,
    integrated_page: bool = False,
    pixel_size_a: float | None = None,
    seed: int = 0,
) -> Path:
    """Write boolean raw frames (n, ny, nx) as an EER file (BigTIFF, metadata in tag 65001)."""
    rng = np.random.default_rng(seed)
    n, ny, nx = raw_frames.shape
    run_bits, horz_bits, vert_bits = bits or EER_BITS[compression]
    rows = rows_per_strip or ny
    items = f'<item name="numberOfFrames">{n}</item>'
    if pixel_size_a is not None:
        items += f'<item name="sensorPixelSize.width" unit="m">{pixel_size_a * 1e-10:.6e}</item>'
    xml = f"<metadata>{items}</metadata>".encode()
    meta_tag = (65001, 7, len(xml), xml, True)
    bit_tags = [(65007, "H", 1, run_bits, True), (65008, "H", 1, horz_bits, True),
                (65009, "H", 1, vert_bits, True)] if compression == 65002 else []
    first = 0
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        if integrated_page:
            tw.write(raw_frames.sum(axis=0).astype(np.uint16), extratags=[meta_tag], metadata=None)
            first = 1
        for i, frame in enumerate(raw_frames):
            strips = [encode_eer_strip(frame[r : r + rows], run_bits, horz_bits, vert_bits, rng)
                      for r in range(0, ny, rows)]
            extra = bit_tags + ([meta_tag] if i == 0 and not integrated_page else [])
            tw.write(iter(strips), shape=(ny, nx), dtype=np.uint8, photometric="minisblack",
                     compression="zlib", rowsperstrip=rows, extratags=extra, metadata=None)
    _patch_compression(path, {first + i: compression for i in range(n)})
    return path


def random_raw_frames(rng: np.random.Generator, n: int, shape: tuple[int, int], p: float = 0.05) -> np.ndarray:
    """Boolean raw frames with events at probability p per pixel (incl. long empty runs)."""
    frames = rng.random((n, *shape)) < p
    frames[:, : shape[0] // 4] &= rng.random((n, shape[0] // 4, shape[1])) < 0.002  # sparse band
    if n > 1:
        frames[1] = False  # an empty raw frame
    frames[0, -1, -1] = True  # an event on the last pixel
    return frames


def write_mrc_movie(path: Path, frames: np.ndarray, *, pixel_size_a: float | None = None) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(frames)
        if pixel_size_a is not None:
            mrc.voxel_size = pixel_size_a
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261121)


@pytest.fixture
def eer_writer() -> Callable[..., Path]:
    return write_eer_file


@pytest.fixture
def raw_frame_maker() -> Callable[..., np.ndarray]:
    return random_raw_frames


@pytest.fixture
def mrc_writer() -> Callable[..., Path]:
    return write_mrc_movie


@pytest.fixture
def counts_movie(rng) -> np.ndarray:
    """Poisson counts (6, 48, 64) uint8: a small counting-mode movie."""
    return rng.poisson(1.5, size=(6, 48, 64)).astype(np.uint8)
