"""Movies behind one interface: MRC/MRCS (mrcfile), TIFF incl. LZW (tifffile), EER (tifffile +
imagecodecs).

``open_movie(path)`` is a context manager returning a :class:`Movie`; ``read_movie(path)``
reads all frames; ``read_movie_header(path)`` reads only the header; ``check_movie_complete``
is the watcher's cheap integrity check. Frames come back as float32 ``(n, ny, nx)`` arrays
[frame, y, x], multiplied by the gain reference when one is given.

Readers are strict: opening a movie checks its structure against the file size (MRC header
versus bytes on disk; TIFF/EER page chain and every strip inside the file, and each page's
size one its strips can decode to) without decoding any pixel, so that a header claiming
terabytes is refused before anything is allocated; any damage found then or while decoding
raises :class:`MovieFormatError` naming the file, the problem and what to do. A missing file raises :class:`FileNotFoundError`.

EER movies are rendered at the sensor's native size (``eer_upsampling=1``: 4096² on Falcon 4)
or at twice it (``eer_upsampling=2``: 8192², using the events' sub-pixel bits), and their raw
frames are summed into fractions, either

- ``eer_fractions`` fractions: ``n_raw // eer_fractions`` raw frames each, and the
  ``r = n_raw % eer_fractions`` remainder spread one each over the last ``r`` fractions (sizes
  differ by at most one raw frame; logged); or
- by exposure, with ``eer_dose_per_fraction_e_a2`` and the movie's total exposure (given, or
  the EER's ``totalDose`` metadata): ``g = round(dose per fraction / dose per raw frame)`` raw
  frames per fraction, ``n_raw // g`` fractions, and the ``n_raw % g`` raw frames left at the
  end are *not used* (as RELION's ``--eer_grouping`` does; logged, and counted in
  ``MovieHeader.n_unused_raw_frames``), so that every fraction has the same exposure
  (``MovieHeader.dose_per_fraction_e_a2``).

``MovieHeader.fraction_sizes`` says how many raw frames each returned frame holds. Each raw
frame is decoded by ``imagecodecs.eer_decode`` straight into the fraction's uint16 sum; there is
no Python loop over events.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import mmap
import os
import queue
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import imagecodecs
import mrcfile.utils
import numpy as np
import tifffile

from emlive.io._tiff import (
    DECODE_ERRORS,
    TIFFFILE_ERRORS,
    eer_bits,
    is_eer_compression,
    open_tiff_checked,
)
from emlive.io.errors import INCOMPLETE_ADVICE, MovieFormatError, human_bytes
from emlive.io.gain import check_gain_shape, orient_gain, read_gain
from emlive.io.mrc import read_mrc_header

__all__ = [
    "MOVIE_SUFFIXES",
    "Movie",
    "MovieFormat",
    "MovieHeader",
    "check_movie_complete",
    "EerOptions",
    "eer_fraction_bounds",
    "eer_grouping_for_dose",
    "movie_format",
    "open_movie",
    "read_movie",
    "read_movie_header",
]

logger = logging.getLogger(__name__)

MovieFormat = Literal["mrc", "tiff", "eer"]

MOVIE_SUFFIXES: dict[str, MovieFormat] = {
    ".mrc": "mrc",
    ".mrcs": "mrc",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".eer": "eer",
}
"""Lower-case file suffix → movie format."""

# Threads decoding the pages of a compressed TIFF movie at once.
_DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))
_MRC_MODES = "0 (int8/uint8), 1 (int16), 2 (float32), 6 (uint16), 12 (float16)"
_IMOD_STAMP = 1146047817  # 'IMOD': bytes 153–156 of IMOD/SerialEM headers


@dataclass(frozen=True)
class MovieHeader:
    """What a movie holds, read without decoding any pixel.

    ``n_frames`` and ``shape`` describe the frames :meth:`Movie.frames` returns: for EER the
    fractions. ``dtype`` is the stored sample type (EER: bool, at most one event per pixel and
    raw frame). ``fraction_sizes[i]`` is the number of raw frames summed into frame i (all 1
    except for EER). ``pixel_size_a`` is the pixel size in Å recorded in the file, or None.
    """

    path: Path
    format: MovieFormat
    n_frames: int
    shape: tuple[int, int]
    dtype: np.dtype
    n_raw_frames: int
    fraction_sizes: tuple[int, ...]
    pixel_size_a: float | None
    upsampling: int = 1
    n_unused_raw_frames: int = 0
    dose_per_fraction_e_a2: float | None = None


class _Reader(Protocol):
    header: MovieHeader

    stored_dtype: np.dtype

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        """Fill ``out`` (stop - start, ny, nx) with frames start..stop-1 (any real dtype that
        holds the stored values; float32 for :meth:`Movie.frames`)."""

    def close(self) -> None: ...


def movie_format(path: str | os.PathLike[str]) -> MovieFormat:
    """The format of a movie from its suffix; :class:`MovieFormatError` for unknown suffixes."""
    p = Path(path)
    try:
        return MOVIE_SUFFIXES[p.suffix.lower()]
    except KeyError:
        raise MovieFormatError(
            f"{p}: unknown movie suffix {p.suffix!r}; emlive reads "
            f"{', '.join(MOVIE_SUFFIXES)} files — rename or convert the file"
        ) from None


def _read_full(fh: io.FileIO, buffer: memoryview, path: Path) -> None:
    """readinto until the buffer is full (large reads return short on Linux)."""
    filled = 0
    total = buffer.nbytes
    while filled < total:
        n = fh.readinto(buffer[filled:])
        if not n:
            raise MovieFormatError(
                f"{path}: the file ended {total - filled} bytes early while reading frames; "
                f"{INCOMPLETE_ADVICE}"
            )
        filled += n


# ----------------------------------------------------------------------------------- MRC


class _MrcReader:
    def __init__(self, header: MovieHeader, fh: io.FileIO, data_offset: int, dtype: np.dtype) -> None:
        self.header = header
        self._fh = fh
        self._offset = data_offset
        self._dtype = dtype
        self.stored_dtype = dtype.newbyteorder("=")
        self._buffer: np.ndarray | None = None  # one stored frame, reused

    def memmap(self) -> np.ndarray:
        """The frames as a read-only memory map of the file (stored dtype, no copy), its pages
        mapped up front (MAP_POPULATE: one call instead of a page fault per 4 KiB)."""
        n, (ny, nx) = self.header.n_frames, self.header.shape
        count = n * ny * nx
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapped = mmap.mmap(
            self._fh.fileno(), self._offset + count * self._dtype.itemsize, flags=flags, prot=mmap.PROT_READ
        )
        return np.frombuffer(mapped, dtype=self._dtype, count=count, offset=self._offset).reshape(n, ny, nx)

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        ny, nx = self.header.shape
        frame_bytes = ny * nx * self._dtype.itemsize
        self._fh.seek(self._offset + start * frame_bytes)
        if self._dtype == out.dtype:  # the stored type, native order: straight into the output
            _read_full(self._fh, memoryview(out).cast("B"), self.header.path)
            return
        if self._buffer is None:
            self._buffer = np.empty((ny, nx), self._dtype)
        for j in range(stop - start):  # frame by frame: a small, hot buffer; one cast each
            _read_full(self._fh, memoryview(self._buffer).cast("B"), self.header.path)
            out[j] = self._buffer

    def close(self) -> None:
        self._fh.close()


def _open_mrc(path: Path, file_size: int) -> _MrcReader:
    # not mrcfile.open(header_only=True): it reads the extended header the header declares (up
    # to 2 GB) before checking that the file holds it
    header, data_offset = read_mrc_header(path, file_size)
    mode = int(header.mode)
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as err:
        raise MovieFormatError(
            f"{path}: MRC mode {mode} is not a movie mode emlive reads (modes {_MRC_MODES}); "
            "convert the movie"
        ) from err
    if dtype.kind == "c":
        raise MovieFormatError(
            f"{path}: MRC mode {mode} holds complex numbers, not a movie (modes {_MRC_MODES})"
        )
    byteorder = header.mode.dtype.byteorder
    if mode == 0:
        with open(path, "rb") as fh:
            fh.seek(152)
            stamp, flags = np.frombuffer(fh.read(8), np.dtype("i4").newbyteorder(byteorder))
        if stamp == _IMOD_STAMP and not flags & 1:  # IMOD convention: bytes unsigned unless flag 1
            dtype = np.dtype(np.uint8)
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny, nz) < 1:
        raise MovieFormatError(
            f"{path}: MRC header declares an empty movie (nx, ny, nz = {nx}, {ny}, {nz}); "
            f"{INCOMPLETE_ADVICE}"
        )
    expected = data_offset + nz * ny * nx * dtype.itemsize
    if file_size < expected:
        raise MovieFormatError(
            f"{path}: MRC header says {nz} frames of {ny}×{nx} {dtype.name} "
            f"({expected} bytes = {human_bytes(expected)} with the header) but the file has "
            f"{file_size} bytes ({human_bytes(file_size)}); {INCOMPLETE_ADVICE}"
        )
    if file_size > expected:
        logger.warning(
            "%s: %d bytes beyond the %d frames its MRC header declares; reading those frames",
            path, file_size - expected, nz,
        )
    mx, cell_x = int(header.mx), float(header.cella.x)
    # the header holds float32: keep 6 significant digits (1.1, not 1.0999999841)
    pixel_size = float(f"{cell_x / mx:.6g}") if mx > 0 and cell_x > 0 else None
    movie_header = MovieHeader(
        path=path,
        format="mrc",
        n_frames=nz,
        shape=(ny, nx),
        dtype=dtype,
        n_raw_frames=nz,
        fraction_sizes=(1,) * nz,
        pixel_size_a=pixel_size,
    )
    fh = io.FileIO(path, "rb")  # owned by the reader, closed by Movie.close
    return _MrcReader(movie_header, fh, data_offset, dtype)


# ----------------------------------------------------------------------------------- TIFF


class _TiffReader:
    """TIFF movie frames, rows bottom-up: emlive's row 0 is the TIFF's last row.

    RELION ("TIFF images are flipped along the slow axis when being read into memory"),
    MotionCor2 and IMOD all read TIFF movies this way, so the shifts, the local model and the
    sums emlive writes for a TIFF movie are in the frame those programs use (RELION's
    polishing reads emlive's motion STAR file together with the TIFF movie).
    """

    def __init__(self, header: MovieHeader, tif: tifffile.TiffFile) -> None:
        self.header = header
        self._tif = tif
        self.stored_dtype = np.dtype(tif.pages.first.dtype).newbyteorder("=")
        self._buffer: np.ndarray | None = None  # decoded pages (k, ny, nx), reused

    def _decode(self, start: int, stop: int, buffer: np.ndarray) -> None:
        if stop - start > 1 and _DECODE_THREADS > 1:
            # pages decoded in parallel threads (LZW/deflate decoders release the GIL)
            try:
                self._tif.asarray(key=range(start, stop), out=buffer, maxworkers=_DECODE_THREADS)
            except TIFFFILE_ERRORS:
                pass  # decode one by one below, to name the damaged frame
            else:
                return
        pages = self._tif.pages
        for j, i in enumerate(range(start, stop)):
            try:
                pages[i].asarray(out=buffer[j])
            except TIFFFILE_ERRORS as err:
                raise MovieFormatError(
                    f"{self.header.path}: cannot decode TIFF frame {i} ({type(err).__name__}: "
                    f"{err}); the file is damaged; copy it again from its source or remove it"
                ) from err

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        k = stop - start
        if self._buffer is None or self._buffer.shape[0] < k:
            self._buffer = np.empty((k, *self.header.shape), self.stored_dtype)
        buffer = self._buffer[:k]
        self._decode(start, stop, buffer)
        # rows bottom-up, as RELION and MotionCor2 read them; float64 samples beyond float32's
        # range become ±inf, as any cast makes them (no RuntimeWarning per frame)
        with np.errstate(over="ignore"):
            np.copyto(out, buffer[:, ::-1])

    def close(self) -> None:
        self._tif.close()


def _open_tiff(path: Path, file_size: int) -> _TiffReader:
    tif, n_pages = open_tiff_checked(path, file_size)
    try:
        page = tif.pages.first
        if page.samplesperpixel != 1 or len(page.shape) != 2:
            raise MovieFormatError(
                f"{path}: TIFF pages are {page.shape} with {page.samplesperpixel} samples per "
                "pixel, not grey-scale frames; this is not a movie"
            )
        if is_eer_compression(page.compression):
            raise MovieFormatError(
                f"{path}: this TIFF holds EER frames (compression {page.compression}); "
                "give it the .eer suffix"
            )
        if page.dtype is None:  # tifffile cannot decode this bits-per-sample/sample-format pair
            raise MovieFormatError(
                f"{path}: TIFF pages of {page.bitspersample}-bit samples in sample format "
                f"{int(page.sampleformat)} are not a movie's; the file is damaged or not a movie"
            )
        dtype = np.dtype(page.dtype)
        if dtype.kind not in "uifb":
            raise MovieFormatError(f"{path}: TIFF sample type {dtype} is not a movie's")
        ny, nx = (int(s) for s in page.shape)
        header = MovieHeader(
            path=path,
            format="tiff",
            n_frames=n_pages,
            shape=(ny, nx),
            dtype=dtype.newbyteorder("="),
            n_raw_frames=n_pages,
            fraction_sizes=(1,) * n_pages,
            pixel_size_a=None,  # TIFF resolution tags do not hold a trustworthy specimen pixel size
        )
    except BaseException:
        tif.close()
        raise
    return _TiffReader(header, tif)


# ------------------------------------------------------------------------------------ EER


@functools.cache
def _eer_decode_accumulates() -> bool:
    """Whether eer_decode adds into a given uint16 ``out`` (imagecodecs 2026.3 does) or resets it.

    One event at pixel 0 of a 1×16 image, 7-bit runs: run 0, sub-pixel 0, then a run of 15
    reaching the end.
    """
    stream = struct.pack("<I", 15 << 11)
    out = np.ones((1, 16), np.uint16)
    try:
        result = imagecodecs.eer_decode(stream, (1, 16), 7, 2, 2, out=out)
    except (TypeError, ValueError, RuntimeError):
        return False
    expected = np.ones((1, 16), np.uint16)
    expected[0, 0] = 2
    return result is out and bool(np.array_equal(out, expected))


def eer_fraction_bounds(n_raw_frames: int, n_fractions: int) -> list[tuple[int, int]]:
    """Raw-frame ranges [start, stop) of ``n_fractions`` fractions covering all raw frames.

    Each holds ``n_raw // n_fractions`` raw frames, and the last ``n_raw % n_fractions``
    fractions one more: sizes differ by at most one.
    """
    per, extra = divmod(n_raw_frames, n_fractions)
    sizes = [per + (1 if i >= n_fractions - extra else 0) for i in range(n_fractions)]
    stops = np.cumsum(sizes).tolist()
    starts = [0, *stops[:-1]]
    return list(zip(starts, stops, strict=True))


def eer_grouping_for_dose(
    n_raw_frames: int, *, total_dose_e_a2: float, dose_per_fraction_e_a2: float
) -> tuple[int, int, int]:
    """(raw frames per fraction, fractions, unused raw frames at the end) for a target exposure
    per fraction. The grouping is the nearest whole number of raw frames (at least 1)."""
    per_raw = total_dose_e_a2 / n_raw_frames
    grouping = max(1, min(n_raw_frames, round(dose_per_fraction_e_a2 / per_raw)))
    n_fractions = n_raw_frames // grouping
    return grouping, n_fractions, n_raw_frames - n_fractions * grouping


class _EerReader:
    def __init__(
        self,
        header: MovieHeader,
        tif: tifffile.TiffFile,
        fd: int,
        first_page: int,
        bits: tuple[int, int, int],
        rows_per_strip: int,
        bounds: list[tuple[int, int]],
    ) -> None:
        self.header = header
        self._tif = tif
        self._fd = fd
        self._first_page = first_page
        self._bits = bits
        self._rows_per_strip = rows_per_strip
        self._bounds = bounds
        self._strip_table: list[tuple[tuple[int, ...], tuple[int, ...]]] | None = None
        self._accumulators: list[np.ndarray] = []
        # a fraction holds at most one event per pixel and raw frame
        self.stored_dtype = np.dtype(np.uint8 if max(header.fraction_sizes) <= 255 else np.uint16)

    def _strips(self, raw_index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(offsets, byte counts) of a raw frame's strips; the pages are parsed once, up front,
        so that decoding threads never touch the TIFF parser."""
        if self._strip_table is None:
            pages = self._tif.pages
            self._strip_table = [
                (tuple(pages[self._first_page + i].dataoffsets), tuple(pages[self._first_page + i].databytecounts))
                for i in range(self.header.n_raw_frames)
            ]
        return self._strip_table[raw_index]

    def _add_raw_frame(self, raw_index: int, acc: np.ndarray, accumulates: bool) -> None:
        page_index = self._first_page + raw_index
        offsets, counts = self._strips(raw_index)
        skip_bits, horz_bits, vert_bits = self._bits
        ny = self.header.shape[0]
        up = self.header.upsampling
        superres = {1: 0, 2: 1, 4: 2}[up]
        rows_per_strip = self._rows_per_strip * up
        for s, (offset, count) in enumerate(zip(offsets, counts, strict=True)):
            rows = acc[s * rows_per_strip : min(ny, (s + 1) * rows_per_strip)]
            data = os.pread(self._fd, count, offset)
            if len(data) != count:
                raise MovieFormatError(
                    f"{self.header.path}: EER frame {raw_index} ends early (strip of {count} "
                    f"bytes at byte {offset}); {INCOMPLETE_ADVICE}"
                )
            try:
                # the shape is the rendered one (native × 2^superres), as tifffile passes it
                if accumulates:
                    imagecodecs.eer_decode(
                        data, rows.shape, skip_bits, horz_bits, vert_bits, superres=superres, out=rows
                    )
                else:
                    rows += imagecodecs.eer_decode(
                        data, rows.shape, skip_bits, horz_bits, vert_bits, superres=superres
                    )
            except DECODE_ERRORS as err:
                raise MovieFormatError(
                    f"{self.header.path}: cannot decode EER frame {raw_index} (TIFF page "
                    f"{page_index}): {err}; the event stream is corrupt — the file is damaged, "
                    "copy it again from the microscope"
                ) from err

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        accumulates = _eer_decode_accumulates()
        self._strips(0)  # parse the pages before any thread starts
        n = stop - start
        n_threads = min(_DECODE_THREADS, n) if n > 1 else 1
        # one uint16 accumulator per thread, reused (fresh 4K/8K arrays cost page faults)
        while len(self._accumulators) < n_threads:
            self._accumulators.append(np.empty(self.header.shape, np.uint16))
        free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        for acc in self._accumulators[:n_threads]:
            free.put(acc)

        def fraction_into(j: int) -> None:
            acc = free.get()
            try:
                acc.fill(0)
                raw_start, raw_stop = self._bounds[start + j]
                for raw in range(raw_start, raw_stop):
                    self._add_raw_frame(raw, acc, accumulates)
                np.copyto(out[j], acc, casting="unsafe")  # counts fit the stored dtype
            finally:
                free.put(acc)

        if n_threads > 1:  # fractions decoded in parallel (eer_decode releases the GIL)
            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                list(pool.map(fraction_into, range(n)))  # the first error is raised here
        else:
            for j in range(n):
                fraction_into(j)

    def close(self) -> None:
        try:
            os.close(self._fd)
        finally:
            self._tif.close()


def _eer_pixel_size_a(tif: tifffile.TiffFile) -> float | None:
    """Pixel size in Å from EER metadata (``sensorPixelSize``, in m), if present and positive."""
    try:
        meta = tif.eer_metadata or {}
    except TIFFFILE_ERRORS:
        return None
    for key in ("sensorPixelSize.width", "sensorPixelSize"):
        value = meta.get(key)
        if isinstance(value, int | float) and value > 0:
            unit = meta.get(f"{key}.unit", "m")
            scale = {"m": 1e10, "nm": 10.0, "A": 1.0, "Å": 1.0}.get(str(unit))
            return float(f"{float(value) * scale:.6g}") if scale else None
    return None


@dataclass(frozen=True)
class EerOptions:
    """How an EER movie is rendered: see the module docstring."""

    fractions: int = 40
    upsampling: int = 1
    dose_per_fraction_e_a2: float | None = None
    total_dose_e_a2: float | None = None


def _eer_total_dose(tif: tifffile.TiffFile) -> float | None:
    """The ``totalDose`` item of the EER metadata (e/Å²), if present and positive."""
    try:
        meta = tif.eer_metadata or {}
    except TIFFFILE_ERRORS:
        return None
    value = meta.get("totalDose")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _open_eer(path: Path, file_size: int, options: EerOptions) -> _EerReader:
    tif, n_pages = open_tiff_checked(path, file_size, eer=True)
    try:
        pages = tif.pages
        # Some EER files start with an uncompressed integrated image; the frames follow it.
        first_page = 0 if is_eer_compression(pages.first.compression) or n_pages == 1 else 1
        compression = int(pages.keyframe.compression)
        if not is_eer_compression(compression):
            raise MovieFormatError(
                f"{path}: not an EER movie (TIFF compression {compression}, expected 65000, 65001 "
                "or 65002); if it is an ordinary TIFF movie, give it the .tif suffix"
            )
        keyframe = pages.keyframe
        bits = eer_bits(keyframe, path)
        ny, nx = int(keyframe.imagelength), int(keyframe.imagewidth)
        rows_per_strip = min(int(keyframe.rowsperstrip or ny), ny)
        n_raw = n_pages - first_page
        unused = 0
        dose_per_fraction = None
        if options.dose_per_fraction_e_a2 is not None:
            total = options.total_dose_e_a2 or _eer_total_dose(tif)
            if total is None:
                raise ValueError(
                    f"{path}: fractionating by exposure needs the movie's total exposure, and the EER "
                    "metadata has no totalDose; give it (--eer-total-dose e/Å²) or use --eer-fractions"
                )
            grouping, eer_fractions, unused = eer_grouping_for_dose(
                n_raw, total_dose_e_a2=total, dose_per_fraction_e_a2=options.dose_per_fraction_e_a2
            )
            dose_per_fraction = grouping * total / n_raw
            bounds = [(i * grouping, (i + 1) * grouping) for i in range(eer_fractions)]
            logger.info(
                "%s: %d raw EER frames, %.4g e/Å² each: %d fractions of %d (%.4g e/Å² each)%s",
                path.name, n_raw, total / n_raw, eer_fractions, grouping, dose_per_fraction,
                f"; the last {unused} raw frames ({unused * total / n_raw:.3g} e/Å²) are not used" if unused else "",
            )
        else:
            eer_fractions = options.fractions
            if eer_fractions > n_raw:
                raise ValueError(
                    f"{path}: the EER movie has {n_raw} raw frames, fewer than the {eer_fractions} "
                    f"fractions asked for; ask for at most {n_raw} fractions"
                )
            bounds = eer_fraction_bounds(n_raw, eer_fractions)
            if n_raw % eer_fractions:
                logger.info(
                    "%s: %d raw EER frames into %d fractions: %d of %d raw frames and the last %d of %d",
                    path.name, n_raw, eer_fractions, eer_fractions - n_raw % eer_fractions,
                    n_raw // eer_fractions, n_raw % eer_fractions, n_raw // eer_fractions + 1,
                )
        if options.upsampling not in (1, 2):
            raise ValueError(f"eer_upsampling must be 1 (native) or 2 (twice the native size), got {options.upsampling}")
        if len(keyframe.dataoffsets) != math.ceil(ny / rows_per_strip):
            raise MovieFormatError(
                f"{path}: EER page has {len(keyframe.dataoffsets)} strips for {ny} rows of "
                f"{rows_per_strip}; the file is corrupt"
            )
        up = options.upsampling
        sensor_pixel_a = _eer_pixel_size_a(tif)
        header = MovieHeader(
            path=path,
            format="eer",
            n_frames=eer_fractions,
            shape=(ny * up, nx * up),
            dtype=np.dtype(bool),
            n_raw_frames=n_raw,
            fraction_sizes=tuple(stop - start for start, stop in bounds),
            pixel_size_a=None if sensor_pixel_a is None else sensor_pixel_a / up,
            upsampling=up,
            n_unused_raw_frames=unused,
            dose_per_fraction_e_a2=dose_per_fraction,
        )
        fd = os.open(path, os.O_RDONLY)
    except BaseException:
        tif.close()
        raise
    return _EerReader(header, tif, fd, first_page, bits, rows_per_strip, bounds)


# ---------------------------------------------------------------------------- the public API


class Movie:
    """An open movie: ``header``, ``len(movie)`` frames, ``frames(start, stop)``.

    Use as a context manager (``with open_movie(path) as movie:``) so the file is closed.
    Not thread-safe: open one Movie per thread.
    """

    def __init__(self, reader: _Reader, gain: np.ndarray | None) -> None:
        self._reader: _Reader | None = reader
        self.header: MovieHeader = reader.header
        self.gain = gain

    def __len__(self) -> int:
        return self.header.n_frames

    def __enter__(self) -> Movie:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        h = self.header
        return f"<Movie {h.path.name} {h.format} {h.n_frames}×{h.shape[0]}×{h.shape[1]}>"

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    def frames(self, start: int = 0, stop: int | None = None, *, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start..stop-1`` as float32 (k, ny, nx), gain applied (Python slice rules).

        For EER, frames are the summed fractions (event counts). ``out``: a C-contiguous
        float32 (k, ny, nx) array to fill and return instead of a new one (reusing memory
        saves the page faults of a fresh 4K stack).
        """
        if self._reader is None:
            raise ValueError(f"{self.header.path}: the movie is closed")
        first, last, _ = slice(start, stop).indices(self.header.n_frames)
        n = max(0, last - first)
        shape = (n, *self.header.shape)
        if out is None:
            out = np.empty(shape, np.float32)
        elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous float32 array of shape {shape}, got "
                f"{out.dtype} {out.shape}"
            )
        if n:
            self._reader.read(first, last, out)
            if self.gain is not None:
                out *= self.gain
        return out

    @property
    def stored_dtype(self) -> np.dtype:
        """The dtype that holds the frames exactly as stored, before the gain: the file's for
        MRC and TIFF; uint8 (or uint16 beyond 255 raw frames per fraction) for EER fractions."""
        return self._open_reader().stored_dtype

    def read_stored(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (stop - start, ny, nx), C-contiguous, of :attr:`stored_dtype`, with
        frames ``start..stop-1`` as stored: no gain, no cast (for keeping a movie compactly)."""
        reader = self._open_reader()
        shape = (stop - start, *self.header.shape)
        if out.shape != shape or out.dtype != reader.stored_dtype or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous {reader.stored_dtype} array of shape {shape}, got "
                f"{out.dtype} {out.shape}"
            )
        if stop > start:
            reader.read(start, stop, out)
        return out

    def memmap(self) -> np.ndarray | None:
        """An MRC movie's frames (n, ny, nx) mapped read-only from the file, as stored (no
        gain); None for other formats. Reading them costs no copy."""
        reader = self._open_reader()
        return reader.memmap() if isinstance(reader, _MrcReader) else None

    def _open_reader(self) -> _Reader:
        if self._reader is None:
            raise ValueError(f"{self.header.path}: the movie is closed")
        return self._reader

    def iter_frames(self, chunk: int = 1) -> Iterator[np.ndarray]:
        """Yield blocks of at most ``chunk`` frames (float32, gain applied), in order."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        for start in range(0, self.header.n_frames, chunk):
            yield self.frames(start, start + chunk)


def _open_reader(path: Path, eer: EerOptions) -> _Reader:
    fmt = movie_format(path)
    eer_fractions = eer.fractions
    if isinstance(eer_fractions, bool) or not isinstance(eer_fractions, int) or eer_fractions < 1:
        raise ValueError(f"eer_fractions must be an integer >= 1, got {eer_fractions!r}")
    if eer.dose_per_fraction_e_a2 is not None and not eer.dose_per_fraction_e_a2 > 0:
        raise ValueError(f"eer_dose_per_fraction_e_a2 must be > 0, got {eer.dose_per_fraction_e_a2!r}")
    file_size = os.stat(path).st_size
    if file_size == 0:
        raise MovieFormatError(f"{path}: the file is empty (0 bytes); {INCOMPLETE_ADVICE}")
    if fmt == "mrc":
        return _open_mrc(path, file_size)
    if fmt == "tiff":
        return _open_tiff(path, file_size)
    return _open_eer(path, file_size, eer)


def open_movie(
    path: str | os.PathLike[str],
    *,
    gain: np.ndarray | str | os.PathLike[str] | None = None,
    gain_rotation: int = 0,
    gain_flip: Literal["x", "y"] | None = None,
    eer_fractions: int = 40,
    eer_upsampling: int = 1,
    eer_dose_per_fraction_e_a2: float | None = None,
    eer_total_dose_e_a2: float | None = None,
) -> Movie:
    """Open a movie for reading (use as a context manager).

    ``gain`` is a gain reference [y, x] (array, or MRC/TIFF/``.gain`` path read by
    :func:`emlive.io.gain.read_gain`) multiplied into every frame, after ``gain_rotation``
    quarter turns clockwise as displayed with row 0 at the top (RELION's ``--gain_rot``,
    MotionCor2's ``-RotGain``) and then ``gain_flip`` (``"y"``: upside down, RELION 1;
    ``"x"``: left to right, RELION 2); see :func:`emlive.io.gain.orient_gain`. Its shape must
    then equal the frames' (for an EER rendered at twice its size, a gain at the native size is
    enlarged to match) or :class:`GainError` is raised. The ``eer_*`` options are used for EER
    movies only (see the module docstring). Raises :class:`MovieFormatError` for empty,
    truncated or corrupt files (no pixel is decoded on opening).
    """
    p = Path(path)
    reader = _open_reader(
        p,
        EerOptions(
            fractions=eer_fractions,
            upsampling=eer_upsampling,
            dose_per_fraction_e_a2=eer_dose_per_fraction_e_a2,
            total_dose_e_a2=eer_total_dose_e_a2,
        ),
    )
    try:
        gain_array: np.ndarray | None = None
        if gain is not None:
            if isinstance(gain, np.ndarray):
                gain_array, source = np.ascontiguousarray(gain, dtype=np.float32), "(array)"
            else:
                gain_array, source = read_gain(gain), str(gain)
            if gain_rotation or gain_flip:
                gain_array = orient_gain(gain_array, rotate_90=-int(gain_rotation), flip=gain_flip)
            up = reader.header.upsampling
            if up > 1 and tuple(s * up for s in gain_array.shape) == reader.header.shape:
                gain_array = np.repeat(np.repeat(gain_array, up, axis=0), up, axis=1)
            check_gain_shape(gain_array, reader.header.shape, gain_source=source, movie=p)
    except BaseException:
        reader.close()
        raise
    logger.debug("opened %s: %s", p, reader.header)
    return Movie(reader, gain_array)


def read_movie(
    path: str | os.PathLike[str],
    *,
    gain: np.ndarray | str | os.PathLike[str] | None = None,
    eer_fractions: int = 40,
    eer_upsampling: int = 1,
) -> np.ndarray:
    """All frames of a movie as float32 (n, ny, nx), gain applied (see :func:`open_movie`)."""
    with open_movie(path, gain=gain, eer_fractions=eer_fractions, eer_upsampling=eer_upsampling) as movie:
        return movie.frames()


def read_movie_header(
    path: str | os.PathLike[str], *, eer_fractions: int = 40, eer_upsampling: int = 1
) -> MovieHeader:
    """The movie's :class:`MovieHeader`, after the structural checks, without decoding pixels."""
    reader = _open_reader(Path(path), EerOptions(fractions=eer_fractions, upsampling=eer_upsampling))
    reader.close()
    return reader.header


def check_movie_complete(path: str | os.PathLike[str]) -> None:
    """Raise :class:`MovieFormatError` unless the file looks complete; decode nothing.

    Checks: not empty; MRC: the header's frames fit in the file; TIFF/EER: the page chain is
    whole and every strip lies inside the file. Meant for a watcher deciding whether a file
    that stopped growing is a finished movie.
    """
    read_movie_header(path, eer_fractions=1)

