"""The checkpointed runner every step goes through.

``run_step`` wraps a step's engine with the sidecar protocol: reuse a matching sidecar whose
outputs still exist, else compute, then write the sidecar last. What a checkpoint is keyed on
comes from the step's declaration: its params, the session's acquisition, the engine and its
version, and its input — the result fields it takes from the steps it needs (a file by its size
and mtime), or the movie for a step that needs none.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from emlive.pipeline.sidecar import InputStamp, matching_sidecar, new_sidecar, params_hash, write_sidecar
from emlive.pipeline.step import Inputs, Step, output_paths

log = logging.getLogger(__name__)


class StepRecord(BaseModel):
    """How a step's result came about, for the database and the logs."""

    step: str
    engine: str
    engine_version: str
    started_at: datetime
    finished_at: datetime
    reused: bool


class NeedsCompute(Exception):
    """Raised by ``run_step(..., compute=False)`` when no valid checkpoint exists."""


def step_input(step: Step, inputs: Inputs) -> tuple[Path, dict[str, Any]]:
    """The file a step's checkpoint is stamped with, and the other values it takes.

    The file is the first ``Path`` it takes from the steps it needs (the movie when it needs
    none); further files are taken by their size and mtime, other fields by value.
    """
    primary: Path | None = None
    values: dict[str, Any] = {}
    for need, fields in step.needs.items():
        result = inputs.results[need]
        for name in fields if fields is not None else result.model_fields:
            value = getattr(result, name)
            key = f"{need}.{name}"
            if isinstance(value, Path) and primary is None:
                primary = value
            elif isinstance(value, Path):
                stamp = InputStamp.of(value)
                values[key] = [stamp.path, stamp.size_bytes, stamp.mtime_ns]
            elif isinstance(value, BaseModel):
                values[key] = value.model_dump(mode="json")
            else:
                values[key] = value
    return (primary if primary is not None else inputs.source_path), values


def checkpoint_params(step: Step, params: BaseModel, inputs: Inputs, taken: dict[str, Any]) -> dict[str, Any]:
    """What a step's checkpoint key hashes besides the engine, its version and the input file."""
    keyed: dict[str, Any] = {"acquisition": inputs.acquisition.model_dump(mode="json"),
                             step.name: params.model_dump(mode="json")}
    if taken:
        keyed["inputs"] = taken
    return keyed


def run_step(
    step: Step,
    params: BaseModel,
    inputs: Inputs,
    *,
    out_dir: Path,
    sidecar_path: Path,
    compute: bool = True,
) -> tuple[BaseModel, StepRecord]:
    """Reuse the step's checkpoint if it matches, else run its engine into ``out_dir`` and
    checkpoint the result. With ``compute=False`` nothing is computed: ``NeedsCompute`` is
    raised instead."""
    engine_name = str(getattr(params, "engine"))
    chosen = step.engine(engine_name)
    input_path, taken = step_input(step, inputs)
    keyed = checkpoint_params(step, params, inputs, taken)
    key = params_hash(step.name, engine_name, chosen.version, keyed)
    sidecar = matching_sidecar(sidecar_path, key, input_path)
    if sidecar is not None:
        result = step.result.model_validate(sidecar.result)
        if all(path.exists() for path in output_paths(result)):
            log.debug("%s: reusing %s checkpoint %s", input_path, step.name, sidecar_path)
            return result, StepRecord(
                step=step.name, engine=engine_name, engine_version=chosen.version,
                started_at=sidecar.started_at, finished_at=sidecar.finished_at, reused=True,
            )
    if not compute:
        raise NeedsCompute(f"{step.name} of {input_path}")
    stamp = InputStamp.of(input_path)
    started_at = datetime.now(UTC)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = chosen.run(inputs, out_dir, params)
    if not isinstance(result, step.result):
        raise TypeError(f"engine {engine_name} of step {step.name} returned a {type(result).__name__}, "
                        f"not its declared {step.result.__name__}")
    finished_at = datetime.now(UTC)
    write_sidecar(
        sidecar_path,
        new_sidecar(
            step=step.name, engine=engine_name, engine_version=chosen.version, params=keyed,
            input_stamp=stamp, started_at=started_at, finished_at=finished_at,
            result=result.model_dump(mode="json"),
        ),
    )
    return result, StepRecord(
        step=step.name, engine=engine_name, engine_version=chosen.version,
        started_at=started_at, finished_at=finished_at, reused=False,
    )
