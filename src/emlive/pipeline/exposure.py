"""process_exposure(): one movie through the session's steps, in dependency order.

This is what a Dask worker runs. It touches files only through the steps (each writes its
outputs atomically and its sidecar last) and never the database: it returns plain data for the
controller to store.

Output layout under the session's output folder, for a movie ``raw/<name>.<ext>``: each step
writes into ``<step>/`` beside the others, e.g.::

    motion/<name>.mrc  <name>_DW.mrc  <name>.star  <name>.motion.json
    ctf/<name>.txt  <name>_avrot.txt  <name>.png  <name>.ctf.json
    thumbnail/<name>.png  <name>.thumbnail.json
    pick/<name>_autopick.star  <name>_picks.png  <name>.pick.json

A step whose input is bad (``ValueError``) fails the whole exposure when it is declared
``on_failure="exposure"`` (motion, CTF); otherwise only that step (and the steps needing it)
fails, with the reason, and the exposure's other results stand.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator

from emlive.acquisition import Acquisition
from emlive.pipeline.registry import registry
from emlive.pipeline.step import Inputs, check_storable
from emlive.pipeline.steps import NeedsCompute, StepRecord, run_step

log = logging.getLogger(__name__)


class ExposureSpec(BaseModel):
    """Which movie, and where its outputs go. ``name`` is its path under raw/ minus the suffix."""

    model_config = ConfigDict(frozen=True)

    movie_path: Path
    name: str
    out_dir: Path

    def step_dir(self, step: str) -> Path:
        return (self.out_dir / step / self.name).parent

    @property
    def stem(self) -> str:
        return Path(self.name).name

    def sidecar_path(self, step: str) -> Path:
        return self.step_dir(step) / f"{self.stem}.{step}.json"


DEFAULT_STEPS = ("motion", "ctf", "thumbnail")
"""Steps run when none are chosen (``pick`` joins them once a particle diameter is given)."""


def default_steps() -> dict[str, BaseModel]:
    """:data:`DEFAULT_STEPS` with their params' defaults."""
    return {name: registry().step(name).params() for name in DEFAULT_STEPS}


class PipelineParams(BaseModel):
    """Everything that shapes an exposure's results: the session's acquisition, and the steps
    to run with their params (by step name, in an order that runs each after its needs; see
    :func:`emlive.pipeline.plan.pipeline_params`)."""

    model_config = ConfigDict(frozen=True)

    acquisition: Acquisition
    steps: dict[str, SerializeAsAny[BaseModel]] = Field(default_factory=lambda: default_steps())

    @model_validator(mode="after")
    def _params_of_each_step(self) -> PipelineParams:
        installed = registry()
        for name, params in self.steps.items():
            expected = installed.step(name).params
            if not isinstance(params, expected):
                raise ValueError(f"params of step {name} must be a {expected.__name__}, not {type(params).__name__}")
        return self


class ExposureResult(BaseModel):
    """What a worker returns: each finished step's result and provenance record, and why the
    steps that did not finish failed (only steps that may fail alone, see the module doc)."""

    results: dict[str, SerializeAsAny[BaseModel]]
    steps: list[StepRecord]
    failures: dict[str, str] = {}


def process_exposure(spec: ExposureSpec, params: PipelineParams) -> ExposureResult:
    """Run (or reuse the checkpoints of) every step of one exposure."""
    return _walk(spec, params, compute=True)


def completed_result(spec: ExposureSpec, params: PipelineParams) -> ExposureResult | None:
    """The exposure's result from its checkpoints alone, or None if any step must still run."""
    try:
        return _walk(spec, params, compute=False)
    except NeedsCompute:
        return None


def _walk(spec: ExposureSpec, params: PipelineParams, *, compute: bool) -> ExposureResult:
    installed = registry()
    results: dict[str, Any] = {}
    records: list[StepRecord] = []
    failures: dict[str, str] = {}
    for name, step_params in params.steps.items():
        step = installed.step(name)
        if failed := [need for need in step.needs if need not in results]:
            failures[name] = f"not run: the {failed[0]} step it needs failed"
            continue
        inputs = Inputs(
            source_path=spec.movie_path,
            stem=spec.stem,
            acquisition=params.acquisition,
            results={need: results[need] for need in step.needs},
        )
        try:
            result, record = run_step(
                step, step_params, inputs, out_dir=spec.step_dir(name), sidecar_path=spec.sidecar_path(name),
                compute=compute,
            )
            check_storable(f"the {name} result", result.model_dump(mode="json"))
        except ValueError as err:  # bad input: the message says what
            if step.on_failure == "exposure":
                raise
            log.warning("%s: step %s failed: %s", spec.movie_path, name, err)
            failures[name] = str(err) or type(err).__name__
            continue
        results[name] = result
        records.append(record)
    return ExposureResult(results=results, steps=records, failures=failures)
