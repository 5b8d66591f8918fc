"""Hypothesis strategies that damage a valid file: the structured part of the fuzzing.

A mutation is drawn as data (so Hypothesis shrinks it to the smallest damage that fails) and
applied to the bytes of a valid file. Positions are biased towards the places parsers trust:
``hot`` offsets (header fields, TIFF tag counts and values) and the first kilobyte.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hypothesis import strategies as st

# values a size, count, offset or mode field should never be trusted with
EXTREMES = (
    0, 1, 2, 3, 7, 255, 256, 1023, 1024, 4095, 65535, 65536,
    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**64 - 1,
    -1, -2, -1024, -(2**31),
)
_WIDTH_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _set_int(data: bytearray, at: int, width: int, value: int, order: str) -> None:
    if at + width > len(data):
        return
    data[at : at + width] = struct.pack(order + _WIDTH_FORMATS[width], value % (1 << (8 * width)))


@st.composite
def position(draw: st.DrawFn, size: int, hot: Sequence[int]) -> int:
    choices = [st.integers(0, max(0, size - 1)), st.integers(0, min(size, 1100) - 1)]
    if hot:
        choices.insert(0, st.sampled_from(sorted(hot)))
    return draw(st.one_of(choices))


@st.composite
def mutation(draw: st.DrawFn, size: int, hot: Sequence[int], order: str) -> tuple:
    kind = draw(st.sampled_from(["int", "int", "flip", "bytes", "truncate", "splice", "insert"]))
    at = draw(position(size, hot))
    if kind == "int":
        width = draw(st.sampled_from([2, 4, 8, 1]))
        value = draw(st.one_of(st.sampled_from(EXTREMES), st.integers(-(2**63), 2**64 - 1)))
        return ("int", at, width, value, draw(st.sampled_from([order, "<" if order == ">" else ">"])))
    if kind == "flip":
        return ("flip", at, draw(st.integers(1, 255)))
    if kind == "bytes":
        return ("bytes", at, draw(st.binary(min_size=1, max_size=16)))
    if kind == "truncate":
        return ("truncate", at)
    if kind == "splice":
        return ("splice", at, draw(position(size, hot)), draw(st.integers(1, 64)))
    return ("insert", at, draw(st.binary(min_size=1, max_size=32)))


def apply(data: bytes, mutations: Sequence[tuple]) -> bytes:
    out = bytearray(data)
    for m in mutations:
        kind, at = m[0], m[1]
        if not out:
            break
        at = min(at, len(out) - 1)
        if kind == "int":
            _set_int(out, at, m[2], m[3], m[4])
        elif kind == "flip":
            out[at] ^= m[2]
        elif kind == "bytes":
            out[at : at + len(m[2])] = m[2]
        elif kind == "truncate":
            del out[at:]
        elif kind == "splice":  # copy a run of the file over another place (plausible structure)
            source = min(m[2], len(out) - 1)
            out[at : at + m[3]] = out[source : source + m[3]]
        elif kind == "insert":
            out[at:at] = m[2]
    return bytes(out)


def damaged(data: bytes, *, hot: Sequence[int] = (), order: str = "<", max_mutations: int = 4) -> st.SearchStrategy[bytes]:
    """Bytes of ``data`` with 1 to ``max_mutations`` mutations applied."""
    return st.lists(mutation(len(data), hot, order), min_size=1, max_size=max_mutations).map(
        lambda ms: apply(data, ms)
    )
