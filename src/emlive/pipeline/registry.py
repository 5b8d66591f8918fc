"""Every step and engine installed: emlive's own and plugins', found through entry points.

A package adds a step with an entry point in the group ``emlive.steps`` (its name is the
step's name, its value a :class:`emlive.pipeline.step.Step`), and an engine of an existing step
with one in ``emlive.engines`` (name ``STEP.ENGINE``, value an
:class:`emlive.pipeline.step.Engine`). emlive's built-in steps are registered the same way in
its own ``pyproject.toml``. A plugin that fails to load is reported by name (logged once, and
listed by ``emlive steps``) and the rest runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from emlive.pipeline.step import Engine, Step

__all__ = ["CORE_STEPS", "Registry", "StepsError", "plan", "registry"]

log = logging.getLogger(__name__)

STEPS_GROUP = "emlive.steps"
ENGINES_GROUP = "emlive.engines"
CORE_STEPS = ("motion", "ctf")
"""Steps every pipeline runs: the database's exposure results, curation and exports build on them."""


class StepsError(ValueError):
    """A pipeline's steps cannot run as chosen: an unknown step, a missing dependency."""


@dataclass(frozen=True)
class Registry:
    """The installed steps by name; where each step and engine comes from (``"package
    version"``, by ``step`` and ``step.engine``); and the plugins that failed to load."""

    steps: dict[str, Step]
    origins: dict[str, str]
    problems: tuple[str, ...]

    def step(self, name: str) -> Step:
        try:
            return self.steps[name]
        except KeyError:
            known = ", ".join(sorted(self.steps))
            raise StepsError(f"unknown step {name!r}; installed steps: {known} (see: emlive steps)") from None


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else ep.value.split(":")[0]


def _load(ep: EntryPoint, kind: type, problems: list[str], group: str) -> object | None:
    try:
        value = ep.load()
    except Exception as err:  # a broken plugin must not stop emlive: report it by name
        problems.append(f"{group} entry point {ep.name!r} ({ep.value}, from {_origin(ep)}) failed to load: "
                        f"{type(err).__name__}: {err}")
        return None
    if not isinstance(value, kind):
        problems.append(f"{group} entry point {ep.name!r} ({ep.value}) is a {type(value).__name__}, "
                        f"not an emlive {kind.__name__}")
        return None
    return value


def build_registry(step_eps: Iterable[EntryPoint], engine_eps: Iterable[EntryPoint]) -> Registry:
    """The registry of these entry points (pure apart from loading them)."""
    problems: list[str] = []
    steps: dict[str, Step] = {}
    origins: dict[str, str] = {}
    for ep in sorted(step_eps, key=lambda ep: ep.name):
        step = _load(ep, Step, problems, STEPS_GROUP)
        if step is None:
            continue
        assert isinstance(step, Step)
        if step.name != ep.name:
            problems.append(f"{STEPS_GROUP} entry point {ep.name!r} declares a step named {step.name!r}; "
                            "the two must agree")
            continue
        if step.name in steps:
            problems.append(f"step {step.name!r} is declared twice ({origins[step.name]} and {_origin(ep)}); "
                            "keeping the first")
            continue
        steps[step.name], origins[step.name] = step, _origin(ep)
        origins.update({f"{step.name}.{name}": _origin(ep) for name in step.engines})
    for ep in sorted(engine_eps, key=lambda ep: ep.name):
        step_name, _, engine_name = ep.name.partition(".")
        engine = _load(ep, Engine, problems, ENGINES_GROUP)
        if engine is None:
            continue
        assert isinstance(engine, Engine)
        if step_name not in steps or not engine_name:
            problems.append(f"{ENGINES_GROUP} entry point {ep.name!r} ({_origin(ep)}) must be named STEP.ENGINE "
                            f"for an installed step ({', '.join(sorted(steps))})")
            continue
        if engine_name in steps[step_name].engines:
            problems.append(f"engine {ep.name!r} from {_origin(ep)} is already declared by "
                            f"{origins[ep.name]}; keeping that one")
            continue
        step = steps[step_name]
        steps[step_name] = dataclasses.replace(step, engines={**step.engines, engine_name: engine})
        origins[ep.name] = _origin(ep)
    return Registry(steps, origins, tuple(problems))


@functools.cache
def registry() -> Registry:
    """The installed steps and engines (loaded once per process; problems logged then)."""
    found = build_registry(entry_points(group=STEPS_GROUP), entry_points(group=ENGINES_GROUP))
    for problem in found.problems:
        log.error("%s; the other steps run without it", problem)
    missing = [name for name in CORE_STEPS if name not in found.steps]
    if missing:
        raise StepsError(
            f"emlive's own steps {', '.join(missing)} are not registered: emlive is not installed "
            "(pip install -e . registers its entry points)"
        )
    return found


def plan(names: Sequence[str], steps: dict[str, Step] | None = None) -> list[Step]:
    """The steps ``names`` in an order that runs each after the steps it needs.

    Raises :class:`StepsError` naming the problem: an unknown step, a step whose dependency is
    not among ``names``, a field it takes that the needed step's result lacks, a cycle, or a
    core step left out.
    """
    installed = registry().steps if steps is None else steps
    chosen: dict[str, Step] = {}
    for name in names:
        if name not in installed:
            known = ", ".join(sorted(installed))
            raise StepsError(f"unknown step {name!r}; installed steps: {known} (see: emlive steps)")
        chosen[name] = installed[name]
    if missing := [name for name in CORE_STEPS if name not in chosen]:
        raise StepsError(f"the steps must include {' and '.join(missing)}: emlive's results, curation and "
                         f"exports build on {' and '.join(CORE_STEPS)}")
    for step in chosen.values():
        for need, fields in step.needs.items():
            if need not in chosen:
                raise StepsError(f"step {step.name} needs step {need}, which is not enabled: add {need} to the "
                                 "steps ([pipeline] steps or --steps)")
            lacking = [f for f in fields or () if f not in chosen[need].result.model_fields]
            if lacking:
                raise StepsError(f"step {step.name} takes {', '.join(lacking)} from {need}, whose result "
                                 f"({chosen[need].result.__name__}) has no such field")
    ordered: list[Step] = []
    visiting: set[str] = set()

    def visit(step: Step) -> None:
        if any(done.name == step.name for done in ordered):
            return
        if step.name in visiting:
            raise StepsError(f"steps {', '.join(sorted(visiting))} need each other in a cycle")
        visiting.add(step.name)
        for need in step.needs:
            visit(chosen[need])
        visiting.discard(step.name)
        ordered.append(step)

    for step in chosen.values():
        visit(step)
    return ordered
