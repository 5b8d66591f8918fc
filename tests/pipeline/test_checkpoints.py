"""The checkpoint protocol of run_step: reuse a matching sidecar, recompute a stale one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from emlive.pipeline import steps
from emlive.pipeline.steps import NeedsCompute, run_step


class Doubled(BaseModel):
    value: int
    out_path: Path


@pytest.fixture
def doubling_step(monkeypatch, tmp_path):
    """A real step (reads an input, writes an output) registered as engine 'v1' of 'double'."""
    calls = []

    def double(input_path: Path, out_path: Path) -> Doubled:
        calls.append(input_path)
        value = 2 * int(input_path.read_text())
        out_path.write_text(str(value))
        return Doubled(value=value, out_path=out_path)

    monkeypatch.setitem(steps.ENGINES, "double", {"v1": steps.Engine(double, "1.0")})
    source = tmp_path / "in.txt"
    source.write_text("21")

    def run(params=None, compute=True):
        out = tmp_path / "out.txt"
        return run_step(
            "double",
            engine_name="v1",
            params=params or {"factor": 2},
            input_path=source,
            sidecar_path=tmp_path / "out.double.json",
            result_type=Doubled,
            compute=(lambda: double(source, out)) if compute else None,
        )

    return run, calls, source, tmp_path


def test_a_finished_step_is_reused_not_recomputed(doubling_step):
    run, calls, _, tmp = doubling_step
    first, record = run()
    assert first.value == 42 and not record.reused and len(calls) == 1
    sidecar = json.loads((tmp / "out.double.json").read_text())
    assert sidecar["engine"] == "v1" and sidecar["engine_version"] == "1.0"
    assert sidecar["input"]["size_bytes"] == 2 and sidecar["result"]["value"] == 42
    again, record = run()
    assert again == first and record.reused and len(calls) == 1
    assert run(compute=False)[0] == first


def test_changed_params_input_or_missing_outputs_recompute(doubling_step):
    run, calls, source, tmp = doubling_step
    run()
    run(params={"factor": 3})
    assert len(calls) == 2
    source.write_text("50")
    os.utime(source, ns=(1, 1))
    assert run(params={"factor": 3})[0].value == 100 and len(calls) == 3
    (tmp / "out.txt").unlink()
    run(params={"factor": 3})
    assert len(calls) == 4


def test_without_compute_a_missing_checkpoint_says_so(doubling_step):
    run, calls, _, tmp = doubling_step
    with pytest.raises(NeedsCompute):
        run(compute=False)
    (tmp / "out.double.json").write_text("{not json")
    with pytest.raises(NeedsCompute):
        run(compute=False)
    assert calls == []


def test_unknown_engines_are_named_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown motion engine 'motioncor9'; known engines: motioncor2, motioncor3, native, relion"):
        steps.engine("motion", "motioncor9")
