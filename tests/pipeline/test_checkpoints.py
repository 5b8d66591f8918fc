"""The checkpoint protocol of run_step: reuse a matching sidecar, recompute a stale one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from emlive.acquisition import Acquisition
from emlive.pipeline.step import Engine, Inputs, Step
from emlive.pipeline.steps import NeedsCompute, run_step


class DoubleParams(BaseModel):
    engine: str = "v1"
    factor: int = 2


class Doubled(BaseModel):
    value: int
    out_path: Path


@pytest.fixture
def doubling_step(tmp_path):
    """A real step (reads its input file, writes an output) with one engine, 'v1'."""
    calls = []

    def double(inputs: Inputs, out_dir: Path, params: DoubleParams) -> Doubled:
        calls.append(inputs.source_path)
        value = params.factor * int(inputs.source_path.read_text())
        out_path = out_dir / "out.txt"
        out_path.write_text(str(value))
        return Doubled(value=value, out_path=out_path)

    step = Step(name="double", params=DoubleParams, result=Doubled, engines={"v1": Engine(double, "1.0")})
    source = tmp_path / "in.txt"
    source.write_text("21")
    inputs = Inputs(source_path=source, stem="in", acquisition=Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0))

    def run(params=None, compute=True):
        return run_step(
            step, params or DoubleParams(), inputs, out_dir=tmp_path / "double",
            sidecar_path=tmp_path / "double" / "in.double.json", compute=compute,
        )

    return run, calls, source, tmp_path


def test_a_finished_step_is_reused_not_recomputed(doubling_step):
    run, calls, _, tmp = doubling_step
    first, record = run()
    assert first.value == 42 and not record.reused and len(calls) == 1
    sidecar = json.loads((tmp / "double" / "in.double.json").read_text())
    assert sidecar["engine"] == "v1" and sidecar["engine_version"] == "1.0"
    assert sidecar["input"]["size_bytes"] == 2 and sidecar["result"]["value"] == 42
    assert sidecar["params"]["double"] == {"engine": "v1", "factor": 2} and "acquisition" in sidecar["params"]
    again, record = run()
    assert again == first and record.reused and len(calls) == 1
    assert run(compute=False)[0] == first


def test_changed_params_input_or_missing_outputs_recompute(doubling_step):
    run, calls, source, tmp = doubling_step
    run()
    assert run(params=DoubleParams(factor=3))[0].value == 63
    assert len(calls) == 2
    source.write_text("50")
    os.utime(source, ns=(1, 1))
    assert run(params=DoubleParams(factor=3))[0].value == 150 and len(calls) == 3
    (tmp / "double" / "out.txt").unlink()
    run(params=DoubleParams(factor=3))
    assert len(calls) == 4


def test_without_compute_a_missing_checkpoint_says_so(doubling_step):
    run, calls, _, tmp = doubling_step
    with pytest.raises(NeedsCompute):
        run(compute=False)
    (tmp / "double").mkdir()
    (tmp / "double" / "in.double.json").write_text("{not json")
    with pytest.raises(NeedsCompute):
        run(compute=False)
    assert calls == []


def test_unknown_engines_are_named_with_the_known_ones():
    from emlive.pipeline.registry import registry

    with pytest.raises(ValueError, match="unknown motion engine 'motioncor9'; known engines: motioncor2, motioncor3, native, relion"):
        registry().step("motion").engine("motioncor9")
