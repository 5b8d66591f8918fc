"""A session's pipeline: which steps run, and each step's params from every source.

A step's params are, lowest priority first: its model's defaults, the configuration
(``[motion]``/``[ctf]`` for the first two, then ``[steps.NAME]``), and the session's own
overrides (the CLI's flags, or ``Session.params_json`` in the service).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from emlive.acquisition import Acquisition
from emlive.config import Settings
from emlive.pipeline.exposure import DEFAULT_STEPS, PipelineParams
from emlive.pipeline.registry import StepsError, plan, registry

Overrides = Mapping[str, Mapping[str, Any]]


def step_params(name: str, settings: Settings, overrides: Overrides | None = None) -> BaseModel:
    """The params of step ``name``; :class:`StepsError` names every bad key and where it is set."""
    model = registry().step(name).params
    legacy = {"motion": settings.motion, "ctf": settings.ctf}.get(name)
    values: dict[str, Any] = legacy.model_dump(exclude_unset=True) if legacy is not None else {}
    values |= settings.steps.get(name, {})
    values |= dict((overrides or {}).get(name, {}))
    try:
        return model.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise StepsError(f"invalid parameters of step {name} ([steps.{name}] or its flags): {problems}") from None


def chosen_steps(settings: Settings, overrides: Overrides | None = None) -> list[str]:
    """The steps configured (``[pipeline] steps``), else the defaults: motion, CTF, thumbnail,
    and picking when a particle diameter is set for it."""
    if settings.pipeline.steps is not None:
        return list(settings.pipeline.steps)
    names = list(DEFAULT_STEPS)
    if "pick" in registry().steps and getattr(step_params("pick", settings, overrides), "diameter_a", None):
        names.append("pick")
    return names


def pipeline_params(
    acquisition: Acquisition,
    settings: Settings,
    overrides: Overrides | None = None,
    *,
    steps: Sequence[str] | None = None,
) -> PipelineParams:
    """The session's steps (``steps``, else :func:`chosen_steps`) in dependency order with
    their params. Raises :class:`StepsError` for an unknown step, a missing dependency or bad
    params, naming it."""
    if unknown := sorted(set(overrides or {}) - set(registry().steps)):
        raise StepsError(f"parameters given for unknown steps {', '.join(unknown)}; installed steps: "
                         f"{', '.join(sorted(registry().steps))}")
    names = list(steps) if steps is not None else chosen_steps(settings, overrides)
    ordered = plan(names)
    return PipelineParams(
        acquisition=acquisition,
        steps={step.name: step_params(step.name, settings, overrides) for step in ordered},
    )
