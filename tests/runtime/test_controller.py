"""Scheduling rules of the pure controller, fed events, asserting actions. No cluster."""

from emlive.runtime.controller import (
    ControllerState,
    ExposureReady,
    MarkFailed,
    StopRequested,
    Store,
    Submit,
    TaskFailed,
    TaskFinished,
    decide,
)


def feed(state, *events):
    actions = []
    for event in events:
        state, new = decide(state, event)
        actions += new
    return state, actions


def test_backpressure_bounds_in_flight_and_refills_as_tasks_finish():
    state, actions = feed(ControllerState(max_in_flight=2), *(ExposureReady(i) for i in range(5)))
    assert actions == [Submit(0, 1), Submit(1, 1)]
    assert state.pending == (2, 3, 4)
    state, actions = feed(state, TaskFinished(0, "r0"))
    assert actions == [Store(0, "r0"), Submit(2, 1)]
    assert state.in_flight == {1, 2}


def test_newest_first_order_submits_the_latest_arrivals():
    state, _ = feed(ControllerState(max_in_flight=1, order="newest"), ExposureReady(9))
    state, actions = feed(state, ExposureReady(10), ExposureReady(11), TaskFinished(9, None))
    assert actions[-1] == Submit(11, 1)


def test_duplicate_ready_events_never_submit_twice():
    state, actions = feed(ControllerState(max_in_flight=4), ExposureReady(1), ExposureReady(1))
    assert actions == [Submit(1, 1)]
    state, actions = feed(state, ExposureReady(1))
    assert actions == [] and state.pending == ()


def test_transient_failures_are_retried_up_to_the_cap_then_marked_failed():
    state, _ = feed(ControllerState(max_in_flight=1, max_attempts=3), ExposureReady(7))
    state, actions = feed(state, TaskFailed(7, "worker lost", permanent=False))
    assert actions == [Submit(7, 2)]
    state, actions = feed(state, TaskFailed(7, "worker lost", permanent=False))
    assert actions == [Submit(7, 3)]
    state, actions = feed(state, TaskFailed(7, "worker lost", permanent=False))
    assert actions == [MarkFailed(7, "worker lost (gave up after 3 attempts)")]
    assert state.idle


def test_permanent_failures_are_not_retried_and_free_their_slot():
    state, _ = feed(ControllerState(max_in_flight=1), ExposureReady(1), ExposureReady(2))
    state, actions = feed(state, TaskFailed(1, "truncated MRC", permanent=True))
    assert actions == [MarkFailed(1, "truncated MRC"), Submit(2, 1)]


def test_stop_submits_nothing_new_and_drains_in_flight():
    state, _ = feed(ControllerState(max_in_flight=1), ExposureReady(1), ExposureReady(2))
    state, actions = feed(state, StopRequested())
    assert actions == [] and not state.idle
    state, actions = feed(state, TaskFinished(1, "r"))
    assert actions == [Store(1, "r")]
    assert state.idle and state.pending == (2,)


def test_late_results_for_unknown_tasks_are_ignored():
    state, actions = feed(ControllerState(max_in_flight=1), TaskFinished(3, "stale"))
    assert actions == [] and state.idle
