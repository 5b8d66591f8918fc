"""Provenance sidecars: the JSON a step writes last, after its outputs.

A sidecar records what produced a step's outputs (params and their hash, code version, engine
and its version, input size and mtime, timings, host) and the step's result. Because it is
written last and atomically, its presence means the outputs are complete; a step whose sidecar
still matches its key and input is skipped, and a sidecar the database lacks is ingested.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

import emlive
from emlive.io.atomic import atomic_write_text

log = logging.getLogger(__name__)


class InputStamp(BaseModel):
    """Identity of a step's input file: a changed file means a stale result."""

    path: str
    size_bytes: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> InputStamp:
        stat = path.stat()
        return cls(path=str(path), size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)


class Sidecar(BaseModel):
    step: str
    engine: str
    engine_version: str
    params: dict[str, Any]
    params_hash: str
    code_version: str
    input: InputStamp
    started_at: datetime
    finished_at: datetime
    duration_s: float
    host: str
    result: dict[str, Any]


def params_hash(step: str, engine: str, engine_version: str, params: dict[str, Any]) -> str:
    """A stable hash of everything that determines a step's outputs besides its input file."""
    canonical = json.dumps(
        {"step": step, "engine": engine, "engine_version": engine_version, "params": params},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_sidecar(path: Path) -> Sidecar | None:
    """The sidecar at ``path``, or None when it is missing or unreadable (then recompute)."""
    try:
        return Sidecar.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as err:
        log.warning("%s: unreadable sidecar, the step will be recomputed (%s)", path, err)
        return None


def matching_sidecar(path: Path, key: str, input_path: Path) -> Sidecar | None:
    """The sidecar if it was made with ``key`` from the current ``input_path``, else None."""
    sidecar = read_sidecar(path)
    if sidecar is None or sidecar.params_hash != key:
        return None
    try:
        current = InputStamp.of(input_path)
    except FileNotFoundError:
        return None
    if (current.size_bytes, current.mtime_ns) != (sidecar.input.size_bytes, sidecar.input.mtime_ns):
        return None
    return sidecar


def write_sidecar(path: Path, sidecar: Sidecar) -> None:
    atomic_write_text(path, sidecar.model_dump_json(indent=2))


def new_sidecar(
    *,
    step: str,
    engine: str,
    engine_version: str,
    params: dict[str, Any],
    input_stamp: InputStamp,
    started_at: datetime,
    finished_at: datetime,
    result: dict[str, Any],
) -> Sidecar:
    return Sidecar(
        step=step,
        engine=engine,
        engine_version=engine_version,
        params=params,
        params_hash=params_hash(step, engine, engine_version, params),
        code_version=emlive.__version__,
        input=input_stamp,
        started_at=started_at,
        finished_at=finished_at,
        duration_s=(finished_at - started_at).total_seconds(),
        host=socket.gethostname(),
        result=result,
    )
