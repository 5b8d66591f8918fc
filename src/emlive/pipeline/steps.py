"""Steps: engines by name, and the checkpointed runner every step goes through.

A step is a plain function from an input file to a pydantic result (whose ``Path`` fields are
the outputs it wrote atomically). ``run_step`` wraps it with the sidecar protocol: reuse a
matching sidecar whose outputs still exist, else compute, then write the sidecar last.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from emlive.ctf import ctffind, gctf
from emlive.ctf import native as ctf_native
from emlive.motion import motioncor, relion
from emlive.motion import native as motion_native
from emlive.pipeline import thumbnail
from emlive.pipeline.sidecar import (
    InputStamp,
    matching_sidecar,
    new_sidecar,
    params_hash,
    write_sidecar,
)

log = logging.getLogger(__name__)

Result = TypeVar("Result", bound=BaseModel)


@dataclass(frozen=True)
class Engine:
    """An engine of one step: the function that runs it, the version its outputs depend on, and
    whether it needs a GPU (then it runs only on workers that declare ``GPU`` resources)."""

    run: Callable[..., Any]
    version: str
    gpu: bool = False


ENGINES: dict[str, dict[str, Engine]] = {
    "motion": {
        "native": Engine(motion_native.motion_correct, motion_native.ENGINE_VERSION),
        "relion": Engine(relion.motion_correct, relion.ENGINE_VERSION),
        "motioncor2": Engine(motioncor.motion_correct_motioncor2, motioncor.ENGINE_VERSION, gpu=True),
        "motioncor3": Engine(motioncor.motion_correct_motioncor3, motioncor.ENGINE_VERSION, gpu=True),
    },
    "ctf": {
        "native": Engine(ctf_native.estimate_ctf, ctf_native.ENGINE_VERSION),
        "ctffind4": Engine(ctffind.estimate_ctf_ctffind4, ctffind.ENGINE_VERSION),
        "ctffind5": Engine(ctffind.estimate_ctf_ctffind5, ctffind.ENGINE_VERSION),
        "gctf": Engine(gctf.estimate_ctf, gctf.ENGINE_VERSION, gpu=True),
    },
    "thumbnail": {"native": Engine(thumbnail.make_thumbnail, thumbnail.ENGINE_VERSION)},
}


def engine(step: str, name: str) -> Engine:
    """The engine ``name`` of ``step``; a clear error lists the known ones."""
    try:
        return ENGINES[step][name]
    except KeyError:
        known = ", ".join(sorted(ENGINES.get(step, {}))) or "none"
        raise ValueError(f"unknown {step} engine {name!r}; known engines: {known}") from None


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


def output_paths(result: BaseModel) -> list[Path]:
    """The files a step result names (its ``Path`` fields)."""
    return [value for value in result.__dict__.values() if isinstance(value, Path)]


def run_step(
    step: str,
    *,
    engine_name: str,
    params: dict[str, Any],
    input_path: Path,
    sidecar_path: Path,
    result_type: type[Result],
    compute: Callable[[], Result] | None,
) -> tuple[Result, StepRecord]:
    """Reuse the step's checkpoint if it matches, else run ``compute`` and checkpoint it.

    With ``compute=None`` nothing is computed: ``NeedsCompute`` is raised instead.
    """
    chosen = engine(step, engine_name)
    key = params_hash(step, engine_name, chosen.version, params)
    sidecar = matching_sidecar(sidecar_path, key, input_path)
    if sidecar is not None:
        result = result_type.model_validate(sidecar.result)
        if all(path.exists() for path in output_paths(result)):
            log.debug("%s: reusing %s checkpoint %s", input_path, step, sidecar_path)
            return result, StepRecord(
                step=step,
                engine=engine_name,
                engine_version=chosen.version,
                started_at=sidecar.started_at,
                finished_at=sidecar.finished_at,
                reused=True,
            )
    if compute is None:
        raise NeedsCompute(f"{step} of {input_path}")
    stamp = InputStamp.of(input_path)
    started_at = datetime.now(UTC)
    result = compute()
    finished_at = datetime.now(UTC)
    write_sidecar(
        sidecar_path,
        new_sidecar(
            step=step,
            engine=engine_name,
            engine_version=chosen.version,
            params=params,
            input_stamp=stamp,
            started_at=started_at,
            finished_at=finished_at,
            result=result.model_dump(mode="json"),
        ),
    )
    return result, StepRecord(
        step=step,
        engine=engine_name,
        engine_version=chosen.version,
        started_at=started_at,
        finished_at=finished_at,
        reused=False,
    )
