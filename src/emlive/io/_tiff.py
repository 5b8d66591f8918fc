"""Cheap structural checks of TIFF/BigTIFF files (also EER, which is BigTIFF).

tifffile is lenient by design: an IFD chain cut short is logged and the file reads as having
fewer pages, and a strip cut short surfaces only when it is decoded. For a live session that is
the wrong default, so the chain is walked here with a few small reads (no tags parsed, no pixels
decoded) and every strip is checked against the file size before anything is decoded.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile

from emlive.io.errors import INCOMPLETE_ADVICE, MovieFormatError, human_bytes

__all__ = [
    "DECODE_ERRORS",
    "EER_CODES",
    "EER_VARIABLE",
    "TIFFFILE_ERRORS",
    "check_page_size",
    "check_strips",
    "eer_bits",
    "is_eer_compression",
    "open_tiff_checked",
    "walk_ifd_chain",
]

# Errors the decoders raise on bad data: tifffile.TiffFileError and mrcfile's are ValueErrors,
# imagecodecs' (LzwError, EerError, ZlibError, ...) are RuntimeErrors; tifffile reading past a
# short buffer gives struct.error, and its pure-Python fallbacks zlib.error.
DECODE_ERRORS = (ValueError, RuntimeError, EOFError, struct.error, zlib.error)

EER_CODES = {65000: (8, 2, 2), 65001: (7, 2, 2)}  # compression → (run, horizontal, vertical) bits
EER_VARIABLE = 65002  # bit sizes in tags 65007, 65008, 65009

_MAX_PAGES = 10_000_000
_INCOMPLETE = INCOMPLETE_ADVICE


# What tifffile raises besides TiffFileError when the structure it parses is corrupt: a tag of
# the wrong type or count (TypeError: '<' between bytes and int), a page without a tag its
# keyframe has (KeyError), indices past a short tag (IndexError), a tile of size 0
# (ZeroDivisionError).
TIFFFILE_ERRORS = (*DECODE_ERRORS, TypeError, KeyError, IndexError, ZeroDivisionError)

# Tags the reader needs as whole numbers: ImageWidth, ImageLength, BitsPerSample, Compression,
# Photometric, StripOffsets, SamplesPerPixel, RowsPerStrip, StripByteCounts, PlanarConfig,
# TileWidth, TileLength, TileOffsets, TileByteCounts, SampleFormat; → exactly one value or not.
_INTEGER_TAGS = {256: True, 257: True, 258: False, 259: True, 262: True, 273: False, 277: True,
                 278: True, 279: False, 284: True, 322: True, 323: True, 324: False, 325: False,
                 339: False}
_INTEGER_TYPES = {1, 3, 4, 6, 8, 9, 16, 17}  # (S)BYTE, (S)SHORT, (S)LONG, (S)LONG8

# bytes per value of each TIFF field type (0: unknown type, not checked)
_TYPE_SIZES = np.array([0, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4, 0, 0, 8, 8, 8], np.uint64)


def _check_tag_values(
    entries: np.ndarray, *, inline_size: int, file_size: int, path: Path, page: int
) -> None:
    """Raise if a tag's value stored outside the IFD reaches past the end of the file."""
    types = entries["type"].astype(np.intp)
    sizes = np.where(types < len(_TYPE_SIZES), _TYPE_SIZES[np.minimum(types, len(_TYPE_SIZES) - 1)], 0)
    counts = entries["count"].astype(np.uint64)
    values = entries["value"].astype(np.uint64)
    # a count beyond the file size cannot fit, and an offset beyond it is outside: compared
    # first, so that count × size and offset + bytes cannot wrap around 2⁶⁴ (a BigTIFF count of
    # 2⁶¹ doubles is 0 bytes)
    too_many = (sizes > 0) & (counts > file_size)
    nbytes = np.where(too_many, 0, counts) * sizes
    outside = too_many | (nbytes > inline_size)  # else the value is stored in the entry itself
    far = values > file_size
    ends = np.where(far, 0, values) + nbytes
    bad = np.flatnonzero(too_many | (outside & (far | (ends > file_size))))
    if bad.size:
        i = int(bad[0])
        end = int(entries["value"][i]) + int(entries["count"][i]) * int(sizes[i])  # Python ints
        raise MovieFormatError(
            f"{path}: TIFF page {page} tag {int(entries['tag'][i])} has its value up to byte "
            f"{end} but the file has {file_size} bytes; {_INCOMPLETE}"
        )


def _check_structure_tags(entries: np.ndarray, *, path: Path, page: int) -> None:
    """Raise unless the tags that shape the image are whole numbers of the right count, and
    the image size is there (tifffile fails with TypeError or KeyError on such pages)."""
    tags = entries["tag"].tolist()
    for i, tag in enumerate(tags):
        single = _INTEGER_TAGS.get(tag)
        if single is None:
            continue
        kind, count = int(entries["type"][i]), int(entries["count"][i])
        if kind not in _INTEGER_TYPES or count < 1 or (single and count != 1):
            raise MovieFormatError(
                f"{path}: TIFF page {page} tag {tag} holds {count} value(s) of field type {kind}, "
                f"not {'one whole number' if single else 'whole numbers'}; the file is damaged; "
                "copy it again from its source or remove it"
            )
    missing = [tag for tag in (256, 257) if tag not in tags]
    if missing:
        raise MovieFormatError(
            f"{path}: TIFF page {page} has no image {'width' if 256 in missing else 'length'} "
            f"(tag {missing[0]}); the file is damaged; copy it again from its source or remove it"
        )


def walk_ifd_chain(fh: BinaryIO, path: Path, file_size: int) -> list[int]:
    """Return the byte offsets of all IFDs (one per page), checking the chain is whole.

    Raises :class:`MovieFormatError` when the header is not TIFF, an IFD, its entries or a tag
    value stored outside it lie past the end of the file, the chain loops, or there is no page.
    """
    fh.seek(0)
    head = fh.read(16)
    if len(head) < 8:
        raise MovieFormatError(
            f"{path}: {file_size} bytes is too short for a TIFF header; {_INCOMPLETE}"
        )
    if head[:2] == b"II":
        order = "<"
    elif head[:2] == b"MM":
        order = ">"
    else:
        raise MovieFormatError(
            f"{path}: not a TIFF file (starts with {head[:4]!r}, expected b'II' or b'MM'); "
            "the file is corrupt or has the wrong suffix — check how it was written"
        )
    (magic,) = struct.unpack(order + "H", head[2:4])
    if magic == 42:
        header_size, count_fmt, entry_size, offset_fmt = 8, "H", 12, "I"
        (first,) = struct.unpack(order + "I", head[4:8])
    elif magic == 43:
        if len(head) < 16:
            raise MovieFormatError(
                f"{path}: {file_size} bytes is too short for a BigTIFF header; {_INCOMPLETE}"
            )
        header_size, count_fmt, entry_size, offset_fmt = 16, "Q", 20, "Q"
        (first,) = struct.unpack(order + "Q", head[8:16])
    else:
        raise MovieFormatError(
            f"{path}: not a TIFF file (version {magic}, expected 42 or 43); "
            "the file is corrupt — check how it was written"
        )
    count_size = struct.calcsize(count_fmt)
    offset_size = struct.calcsize(offset_fmt)
    word = order + ("u4" if offset_size == 4 else "u8")
    entry_dtype = np.dtype([("tag", order + "u2"), ("type", order + "u2"), ("count", word), ("value", word)])

    offsets: list[int] = []
    seen: set[int] = set()
    offset = first
    while offset != 0:
        n = len(offsets)
        if offset in seen:
            raise MovieFormatError(
                f"{path}: the TIFF page chain loops back at page {n} (byte {offset}); "
                "the file is damaged; copy it again from its source or remove it"
            )
        if offset < header_size or offset + count_size > file_size:
            raise MovieFormatError(
                f"{path}: TIFF page {n} should start at byte {offset} but the file has only "
                f"{file_size} bytes; {_INCOMPLETE}"
            )
        fh.seek(offset)
        (n_entries,) = struct.unpack(order + count_fmt, fh.read(count_size))
        next_at = offset + count_size + n_entries * entry_size
        if next_at + offset_size > file_size:
            raise MovieFormatError(
                f"{path}: TIFF page {n} ({n_entries} tags at byte {offset}) needs "
                f"{next_at + offset_size} bytes but the file has only {file_size}; {_INCOMPLETE}"
            )
        block = fh.read(n_entries * entry_size + offset_size)
        entries = np.frombuffer(block, entry_dtype, count=n_entries)
        _check_tag_values(entries, inline_size=offset_size, file_size=file_size, path=path, page=n)
        _check_structure_tags(entries, path=path, page=n)
        (next_offset,) = struct.unpack(order + offset_fmt, block[-offset_size:])
        offsets.append(offset)
        seen.add(offset)
        if len(offsets) > _MAX_PAGES:
            raise MovieFormatError(f"{path}: more than {_MAX_PAGES} TIFF pages; the file is corrupt")
        offset = next_offset
    if not offsets:
        raise MovieFormatError(f"{path}: the TIFF file holds no page (no image); {_INCOMPLETE}")
    return offsets


def check_strips(
    path: Path,
    file_size: int,
    page_index: int,
    offsets: tuple[int, ...],
    bytecounts: tuple[int, ...],
) -> None:
    """Raise :class:`MovieFormatError` if a page's strips/tiles are missing or reach past EOF."""
    if not offsets or len(offsets) != len(bytecounts):
        raise MovieFormatError(
            f"{path}: TIFF page {page_index} has no image data; the file is damaged; copy it again from its source or remove it"
        )
    for offset, count in zip(offsets, bytecounts, strict=True):
        if count <= 0 or offset <= 0:
            raise MovieFormatError(
                f"{path}: TIFF page {page_index} has an empty image strip; {_INCOMPLETE}"
            )
        if offset + count > file_size:
            raise MovieFormatError(
                f"{path}: TIFF page {page_index} has image data up to byte {offset + count} "
                f"({human_bytes(offset + count)}) but the file has {file_size} bytes "
                f"({human_bytes(file_size)}); {_INCOMPLETE}"
            )


# The most a page's stored bytes can grow to when decoded, by TIFF compression: a page that
# claims a bigger image than its strips can hold is refused before a buffer is allocated for it.
# none: 1; LZW: < 4096 (a 9-12-bit code emits a table string of under 4096 bytes); deflate: 1032
# (its limit); PackBits: 64; EER (one byte per decoded pixel): a 7- or 8-bit run code skips at
# most 127 or 255 pixels (146 and 255 pixels per byte). Other codecs: 4096.
_MAX_EXPANSION = {1: 1, 5: 4096, 8: 1032, 32946: 1032, 32773: 64, 65000: 255, 65001: 146}
_OTHER_EXPANSION = 4096


def eer_bits(keyframe: tifffile.TiffPage, path: Path) -> tuple[int, int, int]:
    """(run length, horizontal, vertical sub-pixel) bit widths of an EER page's codes: fixed by
    compression 65000/65001, from tags 65007-65009 for 65002 (whole numbers; imagecodecs checks
    the combination when decoding)."""
    code = int(keyframe.compression)
    if code != EER_VARIABLE:
        return EER_CODES[code]
    bits = []
    for tag, default, low in ((65007, 7, 1), (65008, 2, 0), (65009, 2, 0)):
        value = keyframe.tags.valueof(tag, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 16:
            raise MovieFormatError(
                f"{path}: EER tag {tag} (bits per code) is {value!r}, not a whole number from {low} "
                "to 16; the file is damaged; copy it again from the microscope"
            )
        bits.append(value)
    return bits[0], bits[1], bits[2]


def _max_expansion(keyframe: tifffile.TiffPage, path: Path) -> float:
    code = int(keyframe.compression)
    if code == EER_VARIABLE:  # run codes of tag 65007's width
        run_bits = eer_bits(keyframe, path)[0]
        return ((1 << run_bits) - 1) * 8 / run_bits
    return _MAX_EXPANSION.get(code, _OTHER_EXPANSION)


def check_page_size(path: Path, page_index: int, page: tifffile.TiffPage | tifffile.TiffFrame) -> None:
    """Raise :class:`MovieFormatError` unless the page's image is not empty, has as many strips
    (or tiles) as its size needs, and can be decoded from its stored bytes (see _MAX_EXPANSION)."""
    keyframe = page.keyframe
    shape = tuple(int(n) for n in keyframe.shape)
    if not shape or min(shape) < 1:
        raise MovieFormatError(
            f"{path}: TIFF page {page_index} holds an empty image (shape {shape}); the file is damaged; "
            "copy it again from its source or remove it"
        )
    n_segments = math.prod(keyframe.chunked)
    if len(page.dataoffsets) != n_segments:
        raise MovieFormatError(
            f"{path}: TIFF page {page_index} has {len(page.dataoffsets)} strips or tiles but its "
            f"{'×'.join(map(str, shape))} image needs {n_segments}; the file is damaged; copy it again "
            "from its source or remove it"
        )
    stored = sum(int(n) for n in page.databytecounts)
    if keyframe.nbytes > stored * _max_expansion(keyframe, path):
        raise MovieFormatError(
            f"{path}: TIFF page {page_index} claims a {'×'.join(map(str, shape))} {keyframe.dtype} image "
            f"({human_bytes(keyframe.nbytes)}) but stores {stored} bytes, more than compression "
            f"{int(keyframe.compression)} can expand to; the file is damaged; copy it again from its "
            "source or remove it"
        )


def open_tiff_checked(path: Path, file_size: int, *, eer: bool = False) -> tuple[tifffile.TiffFile, int]:
    """Walk the page chain, open with tifffile, check every strip lies inside the file and every
    page's image can be decoded from its strips (:func:`check_page_size`).

    Frames are read as TiffFrames (offsets and byte counts only) sharing the first page's
    tags; for EER the keyframe is the first EER page (some files start with an uncompressed
    integrated image).
    """
    with open(path, "rb") as fh:
        ifd_offsets = walk_ifd_chain(fh, path, file_size)
    try:
        tif = tifffile.TiffFile(path)
    except TIFFFILE_ERRORS as err:
        raise MovieFormatError(
            f"{path}: tifffile cannot read the TIFF structure ({type(err).__name__}: {err}); "
            "the file is damaged; copy it again from its source or remove it"
        ) from err
    try:
        pages = tif.pages
        pages.cache = True
        pages.useframes = True
        n_pages = len(pages)
        if n_pages != len(ifd_offsets):
            raise MovieFormatError(
                f"{path}: the TIFF page chain holds {len(ifd_offsets)} pages but tifffile reads "
                f"{n_pages}; the file is damaged; copy it again from its source or remove it"
            )
        first = pages.first
        check_strips(path, file_size, 0, tuple(first.dataoffsets), tuple(first.databytecounts))
        check_page_size(path, 0, first)
        if eer and n_pages > 1 and not is_eer_compression(first.compression):
            pages.set_keyframe(1)
        for i in range(1, n_pages):
            page = pages[i]
            check_strips(path, file_size, i, tuple(page.dataoffsets), tuple(page.databytecounts))
            check_page_size(path, i, page)
    except TIFFFILE_ERRORS as err:
        tif.close()
        if isinstance(err, MovieFormatError):
            raise
        raise MovieFormatError(
            f"{path}: cannot read the TIFF pages ({type(err).__name__}: {err}); "
            "the file is damaged; copy it again from its source or remove it"
        ) from err
    except BaseException:
        tif.close()
        raise
    return tif, n_pages


def is_eer_compression(code: int) -> bool:
    return int(code) in EER_CODES or int(code) == EER_VARIABLE
