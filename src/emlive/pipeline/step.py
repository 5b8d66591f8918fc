"""The step declaration: everything the scheduler, checkpoints, database, API, dashboard,
curation and exports need to know about a step, in one object.

A step is a plain function ``run(inputs, out_dir, params) -> Result`` (one per engine) plus a
:class:`Step`: its name, the steps it needs and which of their result fields it takes, its
typed params model (config table ``[steps.NAME]``), its typed result model (``Path`` fields are
its outputs; fields annotated with :class:`emlive.metric.Metric` are its metrics), its engines,
and the export tables it adds to a session. Built-in steps are declared the same way as a
plugin's and found the same way (entry points ``emlive.steps`` and ``emlive.engines``, see
:mod:`emlive.pipeline.registry`).
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from emlive.acquisition import Optics
from emlive.metric import Metric

__all__ = ["Engine", "ExportRow", "Exporter", "Inputs", "Step", "check_storable", "metrics_of", "output_paths", "path_fields"]


@dataclass(frozen=True)
class Inputs:
    """What a step's function is given besides its params and output folder.

    ``source_path`` is the exposure's movie (for a single-file command such as ``emlive ctf``,
    the file given); ``stem`` names every output file (the movie's name without its suffix);
    ``acquisition`` holds the session's instrument and acquisition values (a single-file
    command gives only the :class:`~emlive.acquisition.Optics`); ``results`` holds the results
    of the steps it needs, by step name (a single-file command has none: the step then reads
    ``source_path`` itself).
    """

    source_path: Path
    stem: str
    acquisition: Optics
    results: Mapping[str, BaseModel] = field(default_factory=dict)

    def __getitem__(self, step: str) -> BaseModel:
        return self.results[step]


@dataclass(frozen=True)
class Engine:
    """One way to run a step: the function, the version its outputs depend on (a new version
    invalidates checkpoints), and whether it needs a GPU (then its tasks run only on workers
    declaring ``GPU`` resources)."""

    run: Callable[[Inputs, Path, Any], BaseModel]
    version: str
    gpu: bool = False


@dataclass(frozen=True)
class ExportRow:
    """One accepted micrograph as a step's exporter sees it: its exposure's name (the movie's
    path under raw/ without its suffix), RELION's name for it (the dose-weighted sum, as in the
    session's other exports) and the stored results of every step, validated, by step name."""

    name: str
    micrograph_name: str
    results: Mapping[str, BaseModel]


Exporter = Callable[[Sequence[ExportRow], Path], list[Path]]
"""Writes a step's tables for a session's accepted micrographs into the exports folder
(atomically, replacing what was there) and returns the paths written."""


@dataclass(frozen=True)
class Step:
    """A step's declaration (see the module docstring).

    ``needs`` maps each step this one needs to the result fields it takes (``None``: the whole
    result); the taken fields are its input for checkpoints: a ``Path`` field by the file's
    size and mtime, any other by value. A step with no needs reads the movie itself.
    ``on_failure``: ``"exposure"`` when bad input to this step fails the whole exposure (motion,
    CTF), ``"step"`` when it fails only this step and the steps needing it, while the
    exposure's other results stay (picking, a plugin's step).
    """

    name: str
    params: type[BaseModel]
    result: type[BaseModel]
    engines: Mapping[str, Engine]
    needs: Mapping[str, Sequence[str] | None] = field(default_factory=dict)
    exports: Sequence[Exporter] = ()
    on_failure: Literal["exposure", "step"] = "step"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"step name {self.name!r} must be a Python identifier (letters, digits, _)")
        if "engine" not in self.params.model_fields:
            raise ValueError(f"step {self.name}: its params model {self.params.__name__} needs an 'engine' field")
        if not self.engines:
            raise ValueError(f"step {self.name}: declare at least one engine")
        for step, fields in self.needs.items():
            for name in fields or ():
                if not isinstance(name, str):
                    raise ValueError(f"step {self.name}: needs[{step!r}] must list result field names")

    def engine(self, name: str) -> Engine:
        """The engine ``name``; a clear error lists the known ones."""
        try:
            return self.engines[name]
        except KeyError:
            known = ", ".join(sorted(self.engines)) or "none"
            raise ValueError(f"unknown {self.name} engine {name!r}; known engines: {known}") from None

    @property
    def metrics(self) -> dict[str, Metric]:
        return metrics_of(self.result)


@functools.cache
def metrics_of(result: type[BaseModel]) -> dict[str, Metric]:
    """The declared metrics of a result model: ``{field name: Metric}``, in field order."""
    return {
        name: meta
        for name, info in result.model_fields.items()
        for meta in info.metadata
        if isinstance(meta, Metric)
    }


def output_paths(result: BaseModel) -> list[Path]:
    """The files a step result names (its ``Path`` fields that are set)."""
    return [value for value in result.__dict__.values() if isinstance(value, Path)]


def path_fields(result: type[BaseModel]) -> list[str]:
    """The names of a result model's ``Path`` fields (``Path`` or ``Path | None``)."""
    names = []
    for name, info in result.model_fields.items():
        annotation = info.annotation
        args = typing.get_args(annotation) if typing.get_origin(annotation) is not None else (annotation,)
        if Path in args:
            names.append(name)
    return names


def check_storable(owner: str, value: object) -> None:
    """Raise ValueError when ``value`` (or a number or text inside it) cannot be stored: a
    number that is not finite (inf, nan) or text with a NUL character (neither JSON columns nor
    PostgreSQL take them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{owner} is {value}; use a finite number")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{owner} contains a NUL character")
    if isinstance(value, dict):
        for key, item in value.items():
            check_storable(f"{owner}.{key}", key)
            check_storable(f"{owner}.{key}", item)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_storable(f"{owner}[{i}]", item)
