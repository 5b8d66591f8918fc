"""The controller's decisions, as a pure function of events.

``decide(state, event) -> (state, actions)`` holds every scheduling rule: the order exposures
are submitted in, how many may be in flight (backpressure), which failures are retried and how
often, and when a stop has drained. It does no I/O; the loop (``runtime.loop``) feeds it events
from the watcher and the cluster and performs the actions it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

Order = Literal["oldest", "newest"]


# Events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExposureReady:
    """An exposure is recorded and waits to be processed."""

    exposure_id: int


@dataclass(frozen=True)
class TaskFinished:
    exposure_id: int
    result: Any


@dataclass(frozen=True)
class TaskFailed:
    """A task raised. ``permanent`` failures (bad input) are not retried."""

    exposure_id: int
    reason: str
    permanent: bool


@dataclass(frozen=True)
class StopRequested:
    """Finish what is in flight, submit nothing new."""


Event = ExposureReady | TaskFinished | TaskFailed | StopRequested


# Actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submit:
    exposure_id: int
    attempt: int


@dataclass(frozen=True)
class Store:
    exposure_id: int
    result: Any


@dataclass(frozen=True)
class MarkFailed:
    exposure_id: int
    reason: str


Action = Submit | Store | MarkFailed


# State ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControllerState:
    max_in_flight: int
    max_attempts: int = 3
    order: Order = "oldest"
    pending: tuple[int, ...] = ()
    in_flight: frozenset[int] = frozenset()
    attempts: dict[int, int] = field(default_factory=dict)
    stopping: bool = False

    @property
    def idle(self) -> bool:
        """Nothing in flight and, unless stopping, nothing waiting."""
        return not self.in_flight and (self.stopping or not self.pending)


def decide(state: ControllerState, event: Event) -> tuple[ControllerState, list[Action]]:
    """Apply one event; return the new state and the actions to perform, in order."""
    actions: list[Action] = []
    match event:
        case ExposureReady(exposure_id):
            if exposure_id not in state.pending and exposure_id not in state.in_flight:
                state = replace(state, pending=state.pending + (exposure_id,))
        case TaskFinished(exposure_id, result):
            if exposure_id in state.in_flight:
                state = replace(state, in_flight=state.in_flight - {exposure_id})
                actions.append(Store(exposure_id, result))
        case TaskFailed(exposure_id, reason, permanent):
            if exposure_id in state.in_flight:
                state = replace(state, in_flight=state.in_flight - {exposure_id})
                tries = state.attempts.get(exposure_id, 0)
                if permanent or tries >= state.max_attempts:
                    suffix = "" if permanent else f" (gave up after {tries} attempts)"
                    actions.append(MarkFailed(exposure_id, reason + suffix))
                else:  # retry first: it has waited longest
                    state = replace(state, pending=(exposure_id,) + state.pending)
        case StopRequested():
            state = replace(state, stopping=True)
    state, submits = _fill(state)
    return state, actions + submits


def _fill(state: ControllerState) -> tuple[ControllerState, list[Action]]:
    """Submit pending exposures, in the session's order, while there is room in flight."""
    if state.stopping:
        return state, []
    room = state.max_in_flight - len(state.in_flight)
    if room <= 0 or not state.pending:
        return state, []
    if state.order == "newest":
        chosen, rest = state.pending[-room:][::-1], state.pending[:-room]
    else:
        chosen, rest = state.pending[:room], state.pending[room:]
    attempts = dict(state.attempts)
    submits: list[Action] = []
    for exposure_id in chosen:
        attempts[exposure_id] = attempts.get(exposure_id, 0) + 1
        submits.append(Submit(exposure_id, attempts[exposure_id]))
    state = replace(state, pending=rest, in_flight=state.in_flight | set(chosen), attempts=attempts)
    return state, submits
