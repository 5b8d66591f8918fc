"""An EER (Electron Event Representation) writer, and synthetic EER movies with known truth.

EER stores every raw detector frame as one compressed TIFF page; an electron event is a
run-length code (the number of empty pixels before it) followed by its sub-pixel position.
This module writes the fixed-width variants that tifffile/imagecodecs decode:

- compression 65001 (``FIXED72``): 7-bit run lengths; 65000 (``FIXED82``): 8-bit run lengths.
- A run code of all ones (127 or 255) skips that many pixels and carries no event; any other
  run code ``r`` skips ``r`` pixels and is followed by 4 sub-pixel bits for the event there.
  The next run counts from the pixel after the event.
- Sub-pixel bits: 2 horizontal (low) and 2 vertical (high), each stored XOR 2: an event in
  quarter-pixel ``(sx, sy)`` of its pixel is coded ``((sy ^ 2) << 2) | (sx ^ 2)``.
- Codes are packed least-significant bit first into a stream read as 16-bit words: a frame's
  stream ends with runs that reach the last pixel exactly, padded to an even number of bytes,
  plus one spare zero word (imagecodecs reads ahead: without it an event in the very last
  pixel is lost).
- The file is a little-endian BigTIFF, one strip per page, 1 bit per sample, with the
  acquisition XML (``<metadata><item name=...>``) in tag 65001 of the first page: what
  tifffile requires to recognise and decode an EER file.

Events are given per raw frame as a :class:`RawFrame` (pixel index and quarter-pixel position
of each event), or as an ``(n, 2)`` array of positions ``(x, y)`` in pixels of the native grid
(``0 <= x < nx``). The quarter-pixel position is kept, so decoding with super-resolution 1
(2x) or 2 (4x) reproduces ``floor(2 x)`` / ``floor(4 x)``. A detector frame holds at most one
event per pixel; two events in one pixel of one raw frame are an error.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from emlive.io.atomic import atomic_path
from emlive.synth.deform import LocalMotion
from emlive.synth.movies import movie_frames

EER_COMPRESSION_7BIT = 65001
EER_COMPRESSION_8BIT = 65000
_RUN_BITS = {EER_COMPRESSION_7BIT: 7, EER_COMPRESSION_8BIT: 8}
_SUBPIXEL_BITS = 4  # 2 horizontal + 2 vertical
_METADATA_TAG = 65001

# TIFF field types
_SHORT, _LONG, _UNDEFINED, _LONG8 = 3, 4, 7, 16


@dataclass(frozen=True)
class RawFrame:
    """The electron events of one raw EER frame: at most one per pixel, sorted by pixel.

    ``pixel``: ``(k,)`` int64 linear indices ``y * nx + x``, strictly increasing.
    ``quarter_xy``: ``(k, 2)`` uint8 quarter-pixel position ``(qx, qy)`` (0–3) of each event
    inside its pixel: the event lies in ``[x + qx/4, x + (qx+1)/4) × [y + qy/4, y + (qy+1)/4)``.
    """

    pixel: np.ndarray
    quarter_xy: np.ndarray

    @classmethod
    def from_positions(cls, events_xy: np.ndarray, shape: tuple[int, int]) -> RawFrame:
        """Events from ``(k, 2)`` float positions ``(x, y)`` in native pixels, any order.

        Raises ValueError for events outside the ``(ny, nx)`` frame or two in one pixel.
        """
        ny, nx = shape
        events_xy = np.asarray(events_xy, dtype=np.float64).reshape(-1, 2)
        quarter = np.floor(events_xy * 4.0).astype(np.int64)
        px, py = quarter[:, 0] >> 2, quarter[:, 1] >> 2
        if np.any((px < 0) | (px >= nx) | (py < 0) | (py >= ny)):
            raise ValueError(f"EER events must lie in the {nx}x{ny} frame (0 <= x < {nx}, 0 <= y < {ny})")
        pixel = py * nx + px
        order = np.argsort(pixel, kind="stable")
        return cls(pixel[order], (quarter[order] & 3).astype(np.uint8))

    def render(self, shape: tuple[int, int], *, upsampling: int = 1) -> np.ndarray:
        """The frame as an event-count image at ``upsampling`` x 1, 2 or 4 (uint8 0/1)."""
        if upsampling not in (1, 2, 4):
            raise ValueError(f"upsampling must be 1, 2 or 4, got {upsampling}")
        ny, nx = shape
        image = np.zeros((ny * upsampling, nx * upsampling), dtype=np.uint8)
        sub = self.quarter_xy.astype(np.int64) * upsampling // 4
        image[(self.pixel // nx) * upsampling + sub[:, 1], (self.pixel % nx) * upsampling + sub[:, 0]] = 1
        return image


def encode_eer_frame(
    events: RawFrame | np.ndarray,
    shape: tuple[int, int],
    *,
    compression: int = EER_COMPRESSION_7BIT,
) -> bytes:
    """The EER bit stream of one raw frame (see the module docstring for the format).

    ``events``: a :class:`RawFrame`, or ``(k, 2)`` float positions ``(x, y)`` in native pixels.
    Raises ValueError for events outside the frame or two events in one pixel.
    """
    if compression not in _RUN_BITS:
        raise ValueError(f"compression must be 65001 (7-bit) or 65000 (8-bit), got {compression}")
    if not isinstance(events, RawFrame):
        events = RawFrame.from_positions(events, shape)
    run_bits = _RUN_BITS[compression]
    skip_max = (1 << run_bits) - 1
    ny, nx = shape
    n_pixels = ny * nx
    pixel = np.asarray(events.pixel, dtype=np.int64)
    if pixel.size and (pixel[0] < 0 or pixel[-1] >= n_pixels):
        raise ValueError(f"EER events must lie in the {nx}x{ny} frame")
    runs = np.diff(pixel, prepend=-1) - 1  # empty pixels before each event
    if np.any(runs < 0):
        raise ValueError(
            "two EER events in one pixel of one raw frame (or events not sorted by pixel): "
            "a frame holds at most one event per pixel"
        )
    quarter = events.quarter_xy.astype(np.int64)
    subpixel = ((quarter[:, 1] ^ 2) << 2) | (quarter[:, 0] ^ 2)
    final_run = n_pixels - 1 - int(pixel[-1]) if pixel.size else n_pixels
    final_long, final_rest = divmod(final_run, skip_max)
    tail_values = np.array([skip_max] * final_long + ([final_rest] if final_rest else []), dtype=np.int64)
    event_values = (runs % skip_max) | (subpixel << run_bits)
    n_long = runs // skip_max  # full-length codes (no event) before an event's own code
    if not n_long.any():  # the common case at detector doses: one field per event
        values = np.concatenate([event_values, tail_values])
        widths = np.full(values.size, run_bits + _SUBPIXEL_BITS, dtype=np.int64)
        widths[event_values.size :] = run_bits
        return _pack_lsb_first(values, widths)
    n_fields = n_long + 1
    event_field = np.cumsum(n_fields) - 1
    values = np.full(int(n_fields.sum()), skip_max, dtype=np.int64)
    widths = np.full(values.size, run_bits, dtype=np.int64)
    values[event_field] = event_values
    widths[event_field] = run_bits + _SUBPIXEL_BITS
    values = np.concatenate([values, tail_values])
    widths = np.concatenate([widths, np.full(tail_values.size, run_bits, dtype=np.int64)])
    return _pack_lsb_first(values, widths)


def _pack_lsb_first(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Concatenate bit fields (each ``widths[i]`` bits of ``values[i]``, LSB first) into bytes.

    The stream is padded with zero bits to an even number of bytes (EER is read in 16-bit
    words), plus one spare zero word for the decoder's read-ahead. Fields never overlap, so 32-bit words are built with exact float sums.
    """
    ends = np.cumsum(widths)
    n_bits = int(ends[-1]) if ends.size else 0
    starts = ends - widths
    word = starts >> 5
    shift = starts & 31
    n_words = (n_bits + 31) // 32 + 1
    low = (values << shift) & 0xFFFFFFFF
    high = values >> (32 - shift)  # the part that spills into the next word (0 if none)
    words = np.bincount(word, weights=low.astype(np.float64), minlength=n_words)
    words += np.bincount(word + 1, weights=high.astype(np.float64), minlength=n_words)[:n_words]
    n_bytes = 2 * ((n_bits + 15) // 16) + 2
    return words.astype("<u4").tobytes()[:n_bytes]


def eer_metadata_xml(items: dict[str, tuple[object, str | None]]) -> bytes:
    """EER acquisition XML: ``{name: (value, unit or None)}`` → ``<metadata><item ...>`` bytes."""
    from xml.sax.saxutils import escape, quoteattr

    parts = ["<metadata>"]
    for name, (value, unit) in items.items():
        unit_attr = f" unit={quoteattr(unit)}" if unit else ""
        parts.append(f"<item name={quoteattr(name)}{unit_attr}>{escape(str(value))}</item>")
    parts.append("</metadata>")
    return "".join(parts).encode()


def write_eer(
    path: str | os.PathLike[str],
    frames: Iterable[RawFrame | np.ndarray],
    *,
    shape: tuple[int, int],
    compression: int = EER_COMPRESSION_7BIT,
    pixel_size_a: float | None = None,
    metadata: dict[str, tuple[object, str | None]] | None = None,
) -> int:
    """Write raw frames of electron events to an EER file at ``path``, atomically.

    ``frames`` yields one :class:`RawFrame` (or an ``(n, 2)`` array of event positions ``(x, y)``
    in native pixels) per raw frame; it is consumed lazily, so a long movie never has to be held in memory. ``shape`` is
    the native ``(ny, nx)``. The acquisition XML on the first page holds numberOfFrames,
    sensorImageWidth/Height, sensorPixelSize (m, from ``pixel_size_a`` when given) and any
    extra ``metadata`` items. Returns the number of raw frames written.
    """
    ny, nx = shape
    dest = Path(path)
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        fh.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
        previous_next_field = 8  # where the header keeps the first IFD's offset
        metadata_entry = 0
        n_frames = 0
        for events in frames:
            strip = encode_eer_frame(events, shape, compression=compression)
            strip_offset = fh.tell()
            fh.write(strip)
            _align(fh)
            entries = [
                (256, _LONG, 1, nx),
                (257, _LONG, 1, ny),
                (258, _SHORT, 1, 1),
                (259, _SHORT, 1, compression),
                (262, _SHORT, 1, 1),
                (273, _LONG8, 1, strip_offset),
                (277, _SHORT, 1, 1),
                (278, _LONG, 1, ny),
                (279, _LONG8, 1, len(strip)),
                (339, _SHORT, 1, 1),
            ]
            if n_frames == 0:
                entries.append((_METADATA_TAG, _UNDEFINED, 0, 0))  # patched once the frames are counted
            ifd_offset = fh.tell()
            _patch(fh, previous_next_field, ifd_offset)
            fh.write(struct.pack("<Q", len(entries)))
            for tag, dtype, count, value in entries:
                if n_frames == 0 and tag == _METADATA_TAG:
                    metadata_entry = fh.tell()
                fh.write(struct.pack("<HHQQ", tag, dtype, count, value))
            previous_next_field = fh.tell()
            fh.write(struct.pack("<Q", 0))
            n_frames += 1
        if n_frames == 0:
            raise ValueError(f"{dest}: an EER file needs at least one raw frame")
        items: dict[str, tuple[object, str | None]] = {
            "commercialName": ("emlive synthetic EER", None),
            "numberOfFrames": (n_frames, None),
            "sensorImageWidth": (nx, "pixel"),
            "sensorImageHeight": (ny, "pixel"),
        }
        if pixel_size_a is not None:
            items["sensorPixelSize.width"] = (pixel_size_a * 1e-10, "m")
            items["sensorPixelSize.height"] = (pixel_size_a * 1e-10, "m")
        items.update(metadata or {})
        xml = eer_metadata_xml(items)
        xml_offset = fh.tell()
        fh.write(xml)
        _align(fh)
        fh.seek(metadata_entry)
        fh.write(struct.pack("<HHQQ", _METADATA_TAG, _UNDEFINED, len(xml), xml_offset))
    return n_frames


def _align(fh: BinaryIO) -> None:
    """Pad to an 8-byte boundary (TIFF wants word-aligned IFDs)."""
    pad = -fh.tell() % 8
    if pad:
        fh.write(b"\0" * pad)


def _patch(fh: BinaryIO, where: int, offset: int) -> None:
    here = fh.tell()
    fh.seek(where)
    fh.write(struct.pack("<Q", offset))
    fh.seek(here)


def split_into_raw_frames(
    rng: np.random.Generator,
    counts: np.ndarray,
    *,
    n_raw_frames: int,
) -> Iterator[RawFrame]:
    """Distribute a fraction's electron counts over ``n_raw_frames`` raw frames as events.

    Each pixel's ``counts`` (at most ``n_raw_frames``) go to distinct raw frames (a random
    start frame, then consecutive frames, cyclically), each at a uniformly random quarter-pixel
    position. Yields one :class:`RawFrame` per raw frame; they sum back to ``counts`` exactly.
    """
    counts = np.asarray(counts)
    if counts.size and int(counts.max()) > n_raw_frames:
        raise ValueError(
            f"a pixel has {int(counts.max())} electrons but there are only {n_raw_frames} raw frames "
            "(one event per pixel per raw frame): lower the dose per fraction or add raw frames"
        )
    flat = counts.ravel()
    hit = np.flatnonzero(flat)
    per_pixel = flat[hit].astype(np.int64)
    pixel = np.repeat(hit, per_pixel)
    # the k-th event (k = 0, 1, ...) of a pixel goes to raw frame (start + k) mod n_raw_frames;
    # with a running event number e, k = e - (events before this pixel)
    start = rng.integers(0, n_raw_frames, size=hit.size, dtype=np.int64)
    offset = start - (np.cumsum(per_pixel) - per_pixel)
    key_dtype = np.uint8 if n_raw_frames <= 256 else np.uint16  # small keys: numpy radix-sorts them
    raw_frame = np.arange(pixel.size, dtype=np.int64)
    raw_frame += np.repeat(offset, per_pixel)
    raw_frame %= n_raw_frames
    raw_frame = raw_frame.astype(key_dtype)
    order = np.argsort(raw_frame, kind="stable")  # keeps pixel order within each raw frame
    pixel = pixel[order]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(raw_frame, minlength=n_raw_frames))])
    quarter_xy = rng.integers(0, 4, size=(pixel.size, 2), dtype=np.uint8)
    for frame in range(n_raw_frames):
        window = slice(bounds[frame], bounds[frame + 1])
        yield RawFrame(pixel[window], quarter_xy[window])


def movie_events(
    rng: np.random.Generator,
    image: np.ndarray,
    trajectory_px: np.ndarray,
    *,
    dose_e_per_px_per_fraction: float,
    raw_frames_per_fraction: int,
    gain: np.ndarray | None = None,
    local_motion: LocalMotion | None = None,
    workers: int | None = None,
) -> tuple[np.ndarray, Iterator[RawFrame]]:
    """An EER movie of ``image`` drifting along ``trajectory_px`` (one displacement per fraction).

    The shift is constant within each fraction of ``raw_frames_per_fraction`` raw frames, so
    the per-fraction ground truth is exact (``local_motion``: a field over fractions, as in
    :func:`emlive.synth.movies.movie_frames`). Each fraction's counts are Poisson (as
    :func:`movie_frames`, with ``gain``), clipped to ``raw_frames_per_fraction`` (a detector
    registers at most one event per pixel per raw frame), then split over its raw frames.

    Returns ``(fraction_counts, raw_frames)``: uint16 ``(n_fractions, ny, nx)`` — what summing
    the decoded raw frames fraction by fraction must give — and a lazy iterator of the raw
    frames' events for :func:`write_eer`.
    """
    counts = movie_frames(
        rng,
        image,
        trajectory_px,
        dose_e_per_px_per_frame=dose_e_per_px_per_fraction,
        gain=gain,
        local_motion=local_motion,
        workers=workers,
    )
    np.minimum(counts, raw_frames_per_fraction, out=counts)
    split_rng = rng.spawn(1)[0]

    def raw_frames() -> Iterator[RawFrame]:
        for fraction in counts:
            yield from split_into_raw_frames(split_rng, fraction, n_raw_frames=raw_frames_per_fraction)

    return counts, raw_frames()
