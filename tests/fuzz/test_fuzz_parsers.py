"""The external tools' output parsers, RELION's STAR text and defect lists on damaged and random
text: every call returns or raises ``ValueError`` (the tools' ToolOutputError/ToolVersionError
are ValueErrors; defect files raise GainError) with a message, in under two seconds.

Damage is done line by line (dropped, repeated, swapped lines; a number replaced by an extreme
one: nan, inf, 1e999, a 5000-digit integer, Unicode digits) and character by character, to
the golden samples in tests/data; random text covers the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emlive.ctf import ctffind, gctf
from emlive.io.defects import read_defects
from emlive.io.errors import GainError
from emlive.motion import motioncor, relion
from emlive.tools.spec import Version
from tests.fuzz.guard import check_call, fuzz_settings
from tests.fuzz.seeds import text_samples

WEIRD_TOKENS = (
    "nan", "-nan", "inf", "-inf", "1e999", "-1e999", "1e-999", "0", "-0", "+", "-", ".", "e5", "1e",
    "9" * 5000, "-" + "9" * 30, "0x1F", "1_000", "١٢٣", "①", "\u00a0", "", "#", "data_", "loop_",
    "_rln", "Frame", "shift:", "Final Values", "RES_LIMIT", "\x00", "\ufeff",
)


@st.composite
def damaged_text(draw: st.DrawFn, text: str) -> str:
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            lines = [""]
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["token", "token", "drop", "repeat", "swap", "chars", "cut", "insert"]))
        if kind == "token":
            fields = lines[i].split() or [""]
            j = draw(st.integers(0, len(fields) - 1))
            fields[j] = draw(st.one_of(st.sampled_from(WEIRD_TOKENS), st.text(max_size=8)))
            lines[i] = " ".join(fields)
        elif kind == "drop":
            del lines[i]
        elif kind == "repeat":
            lines.insert(i, lines[i])
        elif kind == "swap":
            k = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[k] = lines[k], lines[i]
        elif kind == "chars":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.text(min_size=1, max_size=6)) + lines[i][at + 1 :]
        elif kind == "cut":
            lines = lines[: i + 1]
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        else:
            lines.insert(i, draw(st.text(max_size=40)))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


# (name, parser, samples the parser reads) — every parser is also tried on every sample
PARSERS: dict[str, tuple[Callable[[str], object], str]] = {
    "ctffind4": (lambda t: ctffind.parse_output(t, Version(4, 1, 14)), "ctffind"),
    "ctffind5": (lambda t: ctffind.parse_output(t, Version(5, 0, 2), release="ctffind5"), "ctffind"),
    "ctffind_version": (ctffind.parse_version, "ctffind"),
    "gctf_1.06": (lambda t: gctf.parse_output(t, Version(1, 6)), "gctf"),
    "gctf_1.18": (lambda t: gctf.parse_output(t, Version(1, 18)), "gctf"),
    "gctf_epa": (gctf.parse_epa, "gctf"),
    "gctf_version": (gctf.parse_version, "gctf"),
    "motioncor2": (lambda t: motioncor.parse_output(t, Version(1, 6, 4)), "motioncor"),
    "motioncor3": (lambda t: motioncor.parse_output(t, Version(1, 0, 1), program="motioncor3"), "motioncor"),
    "motioncor_version": (motioncor.parse_version, "motioncor"),
    "relion": (lambda t: relion.parse_output(t, Version(3, 1, 3)), "relion"),
    "relion_star": (relion.parse_star_text, "relion"),
    "relion_version": (relion.parse_version, "relion"),
}


def _samples(tool: str) -> list[str]:
    return list(text_samples(tool).values())


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_golden_samples_parse(name: str) -> None:
    """Each parser reads at least one of its tool's samples: the fuzzing starts from real output."""
    parse, tool = PARSERS[name]
    results = [check_call(lambda t=text: parse(t), allowed=(ValueError,)) for text in _samples(tool)]
    assert any(not isinstance(r, BaseException) and r is not None for r in results)


@pytest.mark.parametrize("name", sorted(PARSERS))
@fuzz_settings(max_examples=80)
@given(data=st.data())
def test_damaged_tool_output_parses_or_raises_value_error(name: str, data: st.DataObject) -> None:
    parse, tool = PARSERS[name]
    sample = data.draw(st.sampled_from(_samples(tool)), label="sample")
    text = data.draw(damaged_text(sample), label="text")
    check_call(lambda: parse(text), allowed=(ValueError,))


@pytest.mark.parametrize("name", sorted(PARSERS))
@fuzz_settings(max_examples=40)
@given(text=st.text(max_size=300))
def test_random_text_parses_or_raises_value_error(name: str, text: str) -> None:
    parse, _ = PARSERS[name]
    check_call(lambda: parse(text), allowed=(ValueError,))


DEFECTS = "# x y w h\n0 0 1 16\n5 7 2 2\n\n23 0 1 16  # a bad column\n"


@fuzz_settings(max_examples=150)
@given(text=st.one_of(damaged_text(DEFECTS), st.text(max_size=200)))
def test_damaged_defect_lists_read_or_raise_gain_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path: Path = tmp_path_factory.getbasetemp() / "defects.txt"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_call(lambda: read_defects(path, (16, 24)), allowed=(GainError,), path=path)
