"""The controller's decisions, as a pure function of events.

``decide(state, event) -> (state, actions)`` holds every scheduling rule: the order a session's
exposures are submitted in, fair share of the slots between sessions, how many may be in flight
(backpressure), which failures are retried, how often and after what backoff, when a stop has
drained, and how many workers the cluster should have (with hysteresis, so it never flaps). It
does no I/O; the loop (``runtime.loop``) feeds it events from the watcher, the cluster and the
clock and performs the actions it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Order = Literal["oldest", "newest", "alternate"]


# Events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExposureReady:
    """An exposure is recorded and waits to be processed."""

    exposure_id: int
    session_id: int = 0


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
class Tick:
    """The clock moved on (seconds, any monotonic origin): backoffs expire, scaling is revised."""

    now_s: float


@dataclass(frozen=True)
class StopRequested:
    """Finish what is in flight, submit nothing new."""


@dataclass(frozen=True)
class SessionDropped:
    """A session is no longer to be processed: its waiting exposures are forgotten (nothing of
    it is submitted any more, a transient failure of it is not retried); those in flight finish
    and are stored. An :class:`ExposureReady` of the session takes it up again."""

    session_id: int


Event = ExposureReady | TaskFinished | TaskFailed | Tick | StopRequested | SessionDropped


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


@dataclass(frozen=True)
class ScaleTo:
    """Ask the cluster for this many workers."""

    n_workers: int


Action = Submit | Store | MarkFailed | ScaleTo


# State ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalingPolicy:
    """How many workers to ask for: enough for the work in hand, within bounds.

    Scaling up is immediate; scaling down waits until fewer workers have sufficed for
    ``scale_down_after_s`` without a break (the hysteresis window), so a short lull between
    movies never cancels workers that the next movie needs.
    """

    min_workers: int = 0
    max_workers: int = 1
    tasks_per_worker: int = 1
    scale_down_after_s: float = 60.0

    def wanted(self, work: int) -> int:
        return max(self.min_workers, min(self.max_workers, math.ceil(work / self.tasks_per_worker)))


@dataclass(frozen=True)
class ControllerState:
    max_in_flight: int
    max_attempts: int = 3
    order: Order = "oldest"
    backoff_s: float = 0.0
    scaling: ScalingPolicy | None = None
    queues: dict[int, tuple[int, ...]] = field(default_factory=dict)  # session -> pending, oldest first
    session_of: dict[int, int] = field(default_factory=dict)
    in_flight: frozenset[int] = frozenset()
    attempts: dict[int, int] = field(default_factory=dict)
    not_before_s: dict[int, float] = field(default_factory=dict)  # retry backoff
    served: dict[int, int] = field(default_factory=dict)  # session -> submissions, for fair share
    newest_next: dict[int, bool] = field(default_factory=dict)  # alternate order: which end next
    now_s: float = 0.0
    workers: int = 0  # last ScaleTo
    low_since_s: float | None = None  # since when fewer workers would do
    low_peak: int = 0  # the most workers wanted since then
    stopping: bool = False
    dropped: frozenset[int] = frozenset()  # sessions no longer processed

    @property
    def pending(self) -> tuple[int, ...]:
        return tuple(exposure_id for queue in self.queues.values() for exposure_id in queue)

    def busy(self, session_id: int) -> bool:
        """Whether the session has exposures in flight."""
        return any(self.session_of.get(exposure_id) == session_id for exposure_id in self.in_flight)

    @property
    def idle(self) -> bool:
        """Nothing in flight and, unless stopping, nothing waiting."""
        return not self.in_flight and (self.stopping or not self.pending)


QUEUE_COVER_S = 0.5
"""How long the tasks queued behind each running one should last: long enough that a worker
never waits for the controller's next turn (a turn, its linger and the Dask round trips)."""
MAX_QUEUED_PER_SLOT = 8


def in_flight_for(slots: int, task_s: float | None) -> int:
    """``max_in_flight`` when it is not configured: two tasks per worker thread (one running, one
    queued), more when tasks are short (``task_s``, a typical task's seconds; None: not known
    yet), so their queue covers :data:`QUEUE_COVER_S`; at most :data:`MAX_QUEUED_PER_SLOT` per
    thread. Long tasks keep the shallow queue, so a new movie (``order = newest``) or another
    session never waits behind many long ones."""
    if task_s is None:
        return 2 * slots
    per_slot = 1 + math.ceil(QUEUE_COVER_S / max(task_s, QUEUE_COVER_S / MAX_QUEUED_PER_SLOT))
    return slots * max(2, min(MAX_QUEUED_PER_SLOT, per_slot))


def decide(state: ControllerState, event: Event) -> tuple[ControllerState, list[Action]]:
    """Apply one event; return the new state and the actions to perform, in order."""
    actions: list[Action] = []
    match event:
        case ExposureReady(exposure_id, session_id):
            if session_id in state.dropped:
                state = replace(state, dropped=state.dropped - {session_id})
            if exposure_id not in state.session_of:
                queue = state.queues.get(session_id, ()) + (exposure_id,)
                state = replace(
                    state,
                    queues=state.queues | {session_id: queue},
                    session_of=state.session_of | {exposure_id: session_id},
                )
        case TaskFinished(exposure_id, result):
            if exposure_id in state.in_flight:
                state = _forget(state, exposure_id)
                actions.append(Store(exposure_id, result))
        case TaskFailed(exposure_id, reason, permanent):
            if exposure_id in state.in_flight:
                tries = state.attempts.get(exposure_id, 0)
                if not permanent and state.session_of[exposure_id] in state.dropped:
                    state = _forget(state, exposure_id)  # not retried: left for when it is taken up again
                elif permanent or tries >= state.max_attempts:
                    state = _forget(state, exposure_id)
                    suffix = "" if permanent else f" (gave up after {tries} attempts)"
                    actions.append(MarkFailed(exposure_id, reason + suffix))
                else:  # retry first, once its backoff has passed: it has waited longest
                    session_id = state.session_of[exposure_id]
                    delay_s = state.backoff_s * 2 ** (tries - 1)
                    state = replace(
                        state,
                        in_flight=state.in_flight - {exposure_id},
                        queues=state.queues | {session_id: (exposure_id,) + state.queues.get(session_id, ())},
                        not_before_s=state.not_before_s | {exposure_id: state.now_s + delay_s},
                    )
        case Tick(now_s):
            state = replace(state, now_s=max(state.now_s, now_s))
        case StopRequested():
            state = replace(state, stopping=True)
        case SessionDropped(session_id):
            waiting = set(state.queues.get(session_id, ()))
            state = replace(
                state,
                queues={s: q for s, q in state.queues.items() if s != session_id},
                session_of={k: v for k, v in state.session_of.items() if k not in waiting},
                attempts={k: v for k, v in state.attempts.items() if k not in waiting},
                not_before_s={k: v for k, v in state.not_before_s.items() if k not in waiting},
                dropped=state.dropped | {session_id},
            )
    state, submits = _fill(state)
    state, scale = _scale(state)
    return state, actions + submits + scale


def _forget(state: ControllerState, exposure_id: int) -> ControllerState:
    """The exposure is done with (stored or failed for good)."""
    session_of, attempts, not_before_s = dict(state.session_of), dict(state.attempts), dict(state.not_before_s)
    for table in (session_of, attempts, not_before_s):  # copies, then one key out: no loop in Python
        table.pop(exposure_id, None)
    return replace(
        state,
        in_flight=state.in_flight - {exposure_id},
        session_of=session_of,
        attempts=attempts,
        not_before_s=not_before_s,
    )


def _fill(state: ControllerState) -> tuple[ControllerState, list[Action]]:
    """Submit while there is room in flight: one at a time to the session with the fewest in
    flight (then the one served least), from the end of its queue its order says."""
    room = state.max_in_flight - len(state.in_flight)
    if state.stopping or room <= 0:
        return state, []
    taken: dict[int, set[int]] = {}

    def first_ready(session_id: int, *, newest: bool) -> int | None:
        """From the given end of the session's queue (usually its first look: queues can be long)."""
        queue = state.queues[session_id]
        skip = taken.get(session_id, ())
        for exposure_id in reversed(queue) if newest else queue:
            if exposure_id not in skip and state.not_before_s.get(exposure_id, 0.0) <= state.now_s:
                return exposure_id
        return None

    candidates = {session_id for session_id in state.queues if first_ready(session_id, newest=False) is not None}
    if not candidates:
        return state, []
    busy = dict.fromkeys(candidates, 0)
    for exposure_id in state.in_flight:
        if (s := state.session_of.get(exposure_id)) in busy:
            busy[s] += 1
    served, newest_next, attempts = dict(state.served), dict(state.newest_next), dict(state.attempts)
    submits: list[Action] = []
    while room > 0 and candidates:
        session_id = min(candidates, key=lambda s: (busy[s], served.get(s, 0), s))
        newest = state.order == "newest" or (state.order == "alternate" and newest_next.get(session_id, True))
        exposure_id = first_ready(session_id, newest=newest)
        assert exposure_id is not None  # a candidate has one
        attempts[exposure_id] = attempts.get(exposure_id, 0) + 1
        busy[session_id] += 1
        served[session_id] = served.get(session_id, 0) + 1
        newest_next[session_id] = not newest
        taken.setdefault(session_id, set()).add(exposure_id)
        submits.append(Submit(exposure_id, attempts[exposure_id]))
        room -= 1
        if first_ready(session_id, newest=False) is None:
            candidates.discard(session_id)
    state = replace(
        state,
        queues=state.queues | {s: _without(state.queues[s], out) for s, out in taken.items()},
        in_flight=state.in_flight | {e for out in taken.values() for e in out},
        attempts=attempts,
        served=served,
        newest_next=newest_next,
    )
    return state, submits


def _without(queue: tuple[int, ...], out: set[int]) -> tuple[int, ...]:
    """``queue`` less ``out``; taken from one end (the usual case), a slice."""
    k = len(out)
    if set(queue[:k]) == out:
        return queue[k:]
    if set(queue[-k:]) == out:
        return queue[:-k]
    return tuple(e for e in queue if e not in out)


def _scale(state: ControllerState) -> tuple[ControllerState, list[Action]]:
    """Workers for the work in hand: up at once; down only after a full hysteresis window of
    lower demand, and then only to the highest demand seen in that window (so demand that
    fluctuates below the current size never triggers a scale-down followed by a scale-up)."""
    policy = state.scaling
    if policy is None:
        return state, []
    wanted = policy.wanted(len(state.in_flight) + (0 if state.stopping else len(state.pending)))
    if wanted > state.workers:
        return replace(state, workers=wanted, low_since_s=None, low_peak=0), [ScaleTo(wanted)]
    if wanted == state.workers:
        return replace(state, low_since_s=None, low_peak=0), []
    low_since_s = state.low_since_s if state.low_since_s is not None else state.now_s
    peak = max(state.low_peak, wanted)
    if state.now_s - low_since_s >= policy.scale_down_after_s:  # and a new window starts now
        again = state.now_s if wanted < peak else None
        return replace(state, workers=peak, low_since_s=again, low_peak=wanted if again is not None else 0), [ScaleTo(peak)]
    return replace(state, low_since_s=low_since_s, low_peak=peak), []
