"""Finding steps and engines (entry points), planning a pipeline, and each step's params."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from pydantic import BaseModel

from emlive.acquisition import Acquisition
from emlive.config import load_settings
from emlive.pipeline.params import pipeline_params
from emlive.pipeline.registry import StepsError, build_registry, plan, registry
from emlive.pipeline.step import Engine, Step

ACQ = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)


class P(BaseModel):
    engine: str = "native"


class R(BaseModel):
    value: float
    path: Path


def _run(inputs, out_dir, params):  # pragma: no cover - never run here
    raise AssertionError


def _step(name: str, **needs) -> Step:
    return Step(name=name, params=P, result=R, engines={"native": Engine(_run, "1")}, needs=needs)


# what the entry points below point at (this module, as a plugin's would)
EXTRA = _step("extra", ctf=("defocus_u_a",))
ENGINE = Engine(_run, "7")
NOT_A_STEP = object()


def _ep(name: str, value: str, group: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=group)


def test_plugins_add_steps_and_engines_and_a_broken_one_is_reported_by_name():
    steps = [
        _ep("motion", "emlive.motion.step:MOTION", "emlive.steps"),
        _ep("ctf", "emlive.ctf.step:CTF", "emlive.steps"),
        _ep("extra", f"{__name__}:EXTRA", "emlive.steps"),
        _ep("broken", "emlive_no_such_plugin.steps:STEP", "emlive.steps"),
        _ep("odd", f"{__name__}:NOT_A_STEP", "emlive.steps"),
        _ep("misnamed", f"{__name__}:EXTRA", "emlive.steps"),
    ]
    engines = [
        _ep("ctf.faster", f"{__name__}:ENGINE", "emlive.engines"),
        _ep("nostep.x", f"{__name__}:ENGINE", "emlive.engines"),
    ]
    found = build_registry(steps, engines)
    assert set(found.steps) == {"motion", "ctf", "extra"}
    assert found.steps["ctf"].engines["faster"] is ENGINE and "native" in found.steps["ctf"].engines
    problems = "\n".join(found.problems)
    assert "'broken' (emlive_no_such_plugin.steps:STEP" in problems and "ModuleNotFoundError" in problems
    assert "'odd'" in problems and "not an emlive Step" in problems
    assert "'misnamed' declares a step named 'extra'" in problems
    assert "'nostep.x'" in problems and "STEP.ENGINE" in problems
    assert len(found.problems) == 4


def test_a_plan_runs_each_step_after_its_needs_and_names_what_is_wrong():
    steps = {**registry().steps, "extra": EXTRA, "late": _step("late", extra=None)}
    assert [s.name for s in plan(["late", "extra", "thumbnail", "ctf", "motion"], steps)] == [
        "motion", "ctf", "extra", "late", "thumbnail",
    ]
    with pytest.raises(StepsError, match="unknown step 'pik'; installed steps: .*pick"):
        plan(["motion", "ctf", "pik"], steps)
    with pytest.raises(StepsError, match="step late needs step extra, which is not enabled: add extra"):
        plan(["motion", "ctf", "late"], steps)
    with pytest.raises(StepsError, match="must include ctf"):
        plan(["motion", "thumbnail"], steps)
    bad = {**steps, "odd": _step("odd", ctf=("no_such_field",))}
    with pytest.raises(StepsError, match="odd takes no_such_field from ctf, whose result .CtfResult. has no such field"):
        plan(["motion", "ctf", "odd"], bad)
    loop = {**steps, "a": _step("a", b=None), "b": _step("b", a=None)}
    with pytest.raises(StepsError, match="cycle"):
        plan(["motion", "ctf", "a", "b"], loop)


def test_picking_joins_the_default_steps_once_a_diameter_is_given():
    settings = load_settings()
    assert list(pipeline_params(ACQ, settings).steps) == ["motion", "ctf", "thumbnail"]
    with_diameter = load_settings(steps={"pick": {"diameter_a": 180.0, "engine": "native"}})
    params = pipeline_params(ACQ, with_diameter)
    assert list(params.steps) == ["motion", "ctf", "thumbnail", "pick"] and params.steps["pick"].diameter_a == 180.0
    assert list(pipeline_params(ACQ, settings, steps=["ctf", "motion"]).steps) == ["motion", "ctf"]
    chosen = load_settings(pipeline={"steps": ["motion", "ctf"]}, steps={"pick": {"diameter_a": 180.0}})
    assert list(pipeline_params(ACQ, chosen).steps) == ["motion", "ctf"]


def test_step_params_come_from_the_config_then_the_overrides_and_bad_ones_are_named():
    settings = load_settings(motion={"bin_factor": 2.0}, steps={"motion": {"patches": (3, 3)}, "ctf": {"max_res_a": 4.0}})
    params = pipeline_params(ACQ, settings, {"motion": {"patches": (1, 1)}})
    assert params.steps["motion"].bin_factor == 2.0 and params.steps["motion"].patches == (1, 1)
    assert params.steps["ctf"].max_res_a == 4.0
    with pytest.raises(StepsError, match=r"invalid parameters of step pick \(\[steps.pick\].*diameter_a"):
        pipeline_params(ACQ, load_settings(steps={"pick": {"diameter_a": -3}}), steps=["motion", "ctf", "pick"])
    with pytest.raises(StepsError, match="parameters given for unknown steps gain"):
        pipeline_params(ACQ, settings, {"gain": {}})
