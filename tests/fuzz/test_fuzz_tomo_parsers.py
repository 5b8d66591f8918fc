"""The tilt-series engines' parsers (AreTomo's .aln, IMOD's .xf/.tlt and tiltalign's log, the
versions) on damaged and random text: every call returns or raises ``ValueError`` with a
message, in under two seconds. Damage starts from the golden samples in tests/data/aretomo and
tests/data/imod, as in test_fuzz_parsers.py."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emlive.tomo import aretomo, imod, imod_tools
from emlive.tomo.imod import xf_from_alignment, xf_text
from tests.fuzz.guard import check_call, fuzz_settings
from tests.fuzz.seeds import text_samples
from tests.fuzz.test_fuzz_parsers import damaged_text


def _aln(text: str) -> object:
    parsed = aretomo.parse_aln(text)
    return aretomo.alignment_from_aln(parsed)


XF_SAMPLE = xf_text(xf_from_alignment(85.3, np.random.default_rng(0).normal(0, 20, (9, 2))))
TLT_SAMPLE = imod.tlt_text(np.arange(-12.0, 12.1, 3.0))

PARSERS: dict[str, tuple[Callable[[str], object], list[str]]] = {
    "aln": (_aln, [t for n, t in text_samples("aretomo").items() if n.endswith(".aln")]),
    "aretomo_version": (aretomo.parse_version, list(text_samples("aretomo").values())),
    "align_log": (imod_tools.parse_align_log, [t for n, t in text_samples("imod").items() if n.endswith(".log")]),
    "imod_version": (imod_tools.parse_version, list(text_samples("imod").values())),
    "xf": (lambda t: imod.alignment_from_xf(imod.parse_xf(t)), [XF_SAMPLE]),
    "tlt": (imod.parse_tlt, [TLT_SAMPLE]),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_golden_samples_parse(name: str) -> None:
    parse, samples = PARSERS[name]
    results = [check_call(lambda t=text: parse(t), allowed=(ValueError,)) for text in samples]
    assert any(not isinstance(r, BaseException) and r is not None for r in results)


@pytest.mark.parametrize("name", sorted(PARSERS))
@fuzz_settings(max_examples=80)
@given(data=st.data())
def test_damaged_output_parses_or_raises_value_error(name: str, data: st.DataObject) -> None:
    parse, samples = PARSERS[name]
    text = data.draw(damaged_text(data.draw(st.sampled_from(samples), label="sample")), label="text")
    check_call(lambda: parse(text), allowed=(ValueError,))


@pytest.mark.parametrize("name", sorted(PARSERS))
@fuzz_settings(max_examples=40)
@given(text=st.text(max_size=300))
def test_random_text_parses_or_raises_value_error(name: str, text: str) -> None:
    parse, _ = PARSERS[name]
    check_call(lambda: parse(text), allowed=(ValueError,))
