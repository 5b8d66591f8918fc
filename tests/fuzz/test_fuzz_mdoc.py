"""SerialEM mdoc files, damaged and random: ``read_mdoc`` returns an Mdoc (what it could not read
listed in ``problems``, each naming where) or raises ``MdocError`` naming the file — never
another exception, in under two seconds. Damage starts from the golden samples in
tests/data/mdoc (line by line and character by character, as for the tools' outputs) and from
raw bytes (NUL bytes, invalid UTF-8, truncation).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emlive.tomo.mdoc import Mdoc, MdocError, parse_mdoc, pre_exposure_e_per_a2, read_mdoc
from tests.fuzz.guard import check_call, fuzz_settings
from tests.fuzz.seeds import text_samples
from tests.fuzz.test_fuzz_parsers import WEIRD_TOKENS, damaged_text

SAMPLES = list(text_samples("mdoc").values())
MDOC_TOKENS = (*WEIRD_TOKENS, "[ZValue = 0]", "[ZValue =", "[T = Tilt axis angle = nan]", "=", "[", "]", "TiltAngle =")


def _check(mdoc: Mdoc) -> None:
    """What every successful read promises."""
    assert len({t.z_value for t in mdoc.tilts}) == len(mdoc.tilts)
    for problem in mdoc.problems:
        assert problem and ("line " in problem or problem.startswith(("header:", "title")))
    for tilt in mdoc.tilts:
        assert set(tilt.problems) <= set(mdoc.problems)
        assert tilt.tilt_angle_deg is None or math.isfinite(tilt.tilt_angle_deg)
    pre = pre_exposure_e_per_a2(mdoc.tilts, dose_per_tilt_e_per_a2=3.0)
    assert set(pre) == {t.z_value for t in mdoc.tilts}
    assert all(math.isfinite(v) and v >= 0 for v in pre.values())


def _parse(text: str, final: bool) -> Mdoc:
    mdoc = parse_mdoc(text, final=final)
    _check(mdoc)
    return mdoc


def test_golden_samples_parse() -> None:
    assert len(SAMPLES) >= 3
    for text in SAMPLES:
        result = check_call(lambda t=text: _parse(t, False), allowed=(MdocError,))
        assert isinstance(result, Mdoc) and result.tilts


@fuzz_settings(max_examples=300)
@given(data=st.data(), final=st.booleans())
def test_damaged_mdoc_text_parses_with_problems(data: st.DataObject, final: bool) -> None:
    sample = data.draw(st.sampled_from(SAMPLES), label="sample")
    text = data.draw(damaged_text(sample), label="text")
    if data.draw(st.booleans(), label="mdoc tokens"):
        lines = text.splitlines() or [""]
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = lines[i].partition("=")[0] + "= " + data.draw(st.sampled_from(MDOC_TOKENS))
        text = "\n".join(lines)
    check_call(lambda: _parse(text, final), allowed=(MdocError,))


@fuzz_settings(max_examples=150)
@given(text=st.text(max_size=400), final=st.booleans())
def test_random_text_parses_or_raises_mdoc_error(text: str, final: bool) -> None:
    check_call(lambda: _parse(text, final), allowed=(MdocError,))


@fuzz_settings(max_examples=150)
@given(data=st.data())
def test_damaged_mdoc_files_read_or_raise_mdoc_error(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(SAMPLES), label="sample").encode()
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    at = data.draw(st.integers(0, cut), label="at")
    junk = data.draw(st.binary(max_size=12), label="junk")
    blob = raw[:at] + junk + raw[at:cut]
    path: Path = tmp_path_factory.getbasetemp() / "TS_01.mrc.mdoc"
    path.write_bytes(blob)

    def read() -> Mdoc:
        mdoc = read_mdoc(path)
        _check(mdoc)
        return mdoc

    check_call(read, allowed=(MdocError,), path=path)
