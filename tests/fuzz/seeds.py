"""Valid small files to start the fuzzing from, with the offsets of the fields parsers trust.

Each seed is built once per test session (tiny: a few kB) by the same writers the io tests
use: mrcfile and tifffile for MRC and TIFF, emlive.synth and the io tests' independent EER
encoder for EER (7-bit, 8-bit and variable-bit codes, an integrated first page, several
strips per frame).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import tifffile

from emlive.synth.eer import write_eer
from tests.io.conftest import random_raw_frames, write_eer_file

DATA = Path(__file__).resolve().parents[1] / "data"


@dataclass(frozen=True)
class Seed:
    name: str
    suffix: str
    data: bytes
    hot: tuple[int, ...]  # offsets of header fields, tag counts/values, IFD links
    order: str = "<"


# MRC header fields (byte offsets): nx ny nz mode, nxstart.., mx my mz, cella, .., mapc..,
# ispg 88, nsymbt 92, exttyp 104, nversion 108, map 208, machst 212, nlabl 220
MRC_FIELDS = (0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 64, 68, 72, 88, 92, 104, 108, 152, 156, 208, 212, 220)


def _mrc_bytes(array: np.ndarray, *, volume_stack: bool = False, imod: bool = False, extended: int = 0) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(array)
            mrc.voxel_size = 1.25
            if extended:
                mrc.set_extended_header(np.zeros(extended, dtype="V1"))
            if volume_stack:
                mrc.header.ispg = 401
                mrc.header.mz = array.shape[0] // 2
            if imod:
                mrc.header.exttyp = b"AGAR"
        data = bytearray(path.read_bytes())
    if imod:  # IMOD stamp and flags (bytes 152-159): signed bytes, flag 1
        data[152:160] = np.array([1146047817, 1], "<i4").tobytes()
    return bytes(data)


def _tiff_hot(data: bytes) -> tuple[int, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.tif"
        path.write_bytes(data)
        with tifffile.TiffFile(path) as tif:
            big = tif.is_bigtiff
            count_size = 8 if big else 4
            hot = {2, 4, 8}
            for page in tif.pages:
                hot.add(page.offset)
                n_tags = len(page.tags)
                head = 8 if big else 2
                entry = 20 if big else 12
                hot.add(page.offset + head + n_tags * entry)  # the next-IFD link
                for tag in page.tags:
                    hot.update((tag.offset, tag.offset + 2, tag.offset + 4, tag.offset + 4 + count_size))
                    hot.add(tag.valueoffset)
    return tuple(sorted(o for o in hot if o < len(data)))


def _write_tiff(array: np.ndarray, **kwargs: object) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.tif"
        tifffile.imwrite(path, array, photometric="minisblack", **kwargs)
        return path.read_bytes()


def _tiff_seed(name: str, suffix: str, data: bytes) -> Seed:
    return Seed(name, suffix, data, _tiff_hot(data), "<" if data[:2] == b"II" else ">")


def distinct_events(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    """``n`` event positions (x, y) in distinct pixels of a ``shape`` frame (one per pixel)."""
    pixels = rng.choice(shape[0] * shape[1], size=n, replace=False)
    return np.stack([pixels % shape[1], pixels // shape[1]], axis=1) + rng.uniform(0, 1, size=(n, 2))


@functools.cache
def mrc_seeds() -> tuple[Seed, ...]:
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.5, size=(3, 16, 24))
    seeds = [
        ("int8", counts.astype(np.int8), {}),
        ("uint16", counts.astype(np.uint16), {}),
        ("float32", counts.astype(np.float32), {"extended": 64}),
        ("float16_volstack", counts[:2].astype(np.float16).repeat(2, axis=0), {"volume_stack": True}),
        ("int8_imod", counts.astype(np.int8), {"imod": True}),
        ("int16_image", counts[0].astype(np.int16), {}),
    ]
    return tuple(Seed(f"mrc_{n}", ".mrc", _mrc_bytes(a, **kw), MRC_FIELDS) for n, a, kw in seeds)


@functools.cache
def tiff_seeds() -> tuple[Seed, ...]:
    rng = np.random.default_rng(2)
    counts = rng.poisson(1.5, size=(3, 16, 24))
    return (
        _tiff_seed("tif_lzw_u8", ".tif", _write_tiff(counts.astype(np.uint8), compression="lzw")),
        _tiff_seed("tif_raw_u16_be", ".tif", _write_tiff(counts.astype(">u2"), byteorder=">")),
        _tiff_seed("tif_zlib_strips", ".tif", _write_tiff(counts.astype(np.uint8), compression="zlib", rowsperstrip=4)),
        _tiff_seed("tif_big_f32", ".tif", _write_tiff(counts.astype(np.float32), bigtiff=True)),
    )


@functools.cache
def eer_seeds() -> tuple[Seed, ...]:
    rng = np.random.default_rng(3)
    seeds = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synth.eer"
        events = [distinct_events(rng, 12, (16, 16)) for _ in range(3)]
        write_eer(path, events, shape=(16, 16), pixel_size_a=0.8, metadata={"totalDose": (9.0, "e/A^2")})
        seeds.append(_tiff_seed("eer_synth_7bit", ".eer", path.read_bytes()))
        for name, kwargs in [
            ("eer_8bit_strips", {"compression": 65000, "rows_per_strip": 4}),
            ("eer_variable", {"compression": 65002, "bits": (7, 2, 2)}),
            ("eer_integrated", {"compression": 65001, "integrated_page": True}),
        ]:
            path = Path(tmp) / f"{name}.eer"
            write_eer_file(path, random_raw_frames(rng, 3, (16, 24)), **kwargs)
            seeds.append(_tiff_seed(name, ".eer", path.read_bytes()))
    return tuple(seeds)


@functools.cache
def gain_seeds() -> tuple[Seed, ...]:
    rng = np.random.default_rng(4)
    gain = rng.uniform(0.8, 1.2, size=(16, 24)).astype(np.float32)
    mask = (rng.random((16, 24)) < 0.05).astype(np.uint8)
    return (
        Seed("gain_mrc", ".mrc", _mrc_bytes(gain), MRC_FIELDS),
        _tiff_seed("gain_tif", ".tif", _write_tiff(gain)),
        _tiff_seed("gain_eer", ".gain", _write_tiff(gain, compression="zlib")),
        _tiff_seed("defects_tif", ".tif", _write_tiff(mask, compression="lzw")),
    )


def text_samples(tool: str) -> dict[str, str]:
    """The golden output samples of an external tool (tests/data/<tool>), by file name."""
    return {p.name: p.read_text() for p in sorted((DATA / tool).iterdir())}
