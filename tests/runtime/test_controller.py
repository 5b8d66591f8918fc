"""Scheduling rules of the pure controller, fed events, asserting actions. No cluster."""

from dataclasses import replace

from emlive.runtime.controller import (
    ControllerState,
    ExposureReady,
    MarkFailed,
    ScaleTo,
    ScalingPolicy,
    SessionDropped,
    StopRequested,
    Store,
    Submit,
    TaskFailed,
    TaskFinished,
    Tick,
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


def test_a_dropped_session_finishes_in_flight_work_submits_nothing_new_and_can_come_back():
    state, _ = feed(
        ControllerState(max_in_flight=3),
        ExposureReady(10, session_id=2),
        *(ExposureReady(i, session_id=1) for i in range(4)),
    )
    assert state.in_flight == {10, 0, 1} and state.pending == (2, 3)
    state, actions = feed(state, SessionDropped(1), SessionDropped(1))
    assert actions == [] and state.pending == ()
    assert state.busy(1) and state.busy(2)
    state, actions = feed(state, TaskFinished(0, "r0"), TaskFailed(1, "worker lost", permanent=False))
    assert actions == [Store(0, "r0")]  # the transient failure is not retried for a dropped session
    assert not state.busy(1) and 1 not in state.attempts
    state, actions = feed(state, ExposureReady(3, session_id=1))  # taken up again
    assert actions == [Submit(3, 1)] and state.dropped == frozenset()


def test_late_results_for_unknown_tasks_are_ignored():
    state, actions = feed(ControllerState(max_in_flight=1), TaskFinished(3, "stale"))
    assert actions == [] and state.idle


def test_two_sessions_share_the_slots_and_neither_starves():
    # session 1 has a burst of 20, session 2 trickles in; 2 slots
    state = ControllerState(max_in_flight=2)
    state, actions = feed(state, *(ExposureReady(100 + i, session_id=1) for i in range(20)))
    assert [a.exposure_id for a in actions] == [100, 101]
    state, _ = feed(state, ExposureReady(200, session_id=2), ExposureReady(201, session_id=2))
    submitted = []
    for finished in (100, 101, 102, 103):
        state, actions = feed(state, TaskFinished(finished if finished < 102 else submitted[finished - 102], None))
        submitted += [a.exposure_id for a in actions if isinstance(a, Submit)]
    # the slot freed first goes to session 2, whose share was 0; then they alternate
    assert submitted[:1] == [200]
    assert 201 in submitted[:3]


def test_alternate_order_serves_the_newest_then_the_oldest():
    state = ControllerState(max_in_flight=4, order="alternate")
    state, actions = feed(state, *(ExposureReady(i) for i in range(6)))
    assert [a.exposure_id for a in actions] == [0, 1, 2, 3]  # submitted as they arrive
    state = ControllerState(max_in_flight=0, order="alternate")
    state, _ = feed(state, *(ExposureReady(i) for i in range(6)))
    state, actions = feed(replace(state, max_in_flight=4), Tick(1.0))
    assert [a.exposure_id for a in actions] == [5, 0, 4, 1]


def test_retries_back_off_exponentially():
    state = ControllerState(max_in_flight=1, max_attempts=3, backoff_s=10.0)
    state, _ = feed(state, Tick(100.0), ExposureReady(1))
    state, actions = feed(state, TaskFailed(1, "lost", permanent=False))
    assert actions == []  # waits 10 s
    state, actions = feed(state, Tick(109.0))
    assert actions == []
    state, actions = feed(state, Tick(110.0))
    assert actions == [Submit(1, 2)]
    state, actions = feed(state, TaskFailed(1, "lost", permanent=False), Tick(125.0))
    assert actions == []  # second backoff is 20 s
    state, actions = feed(state, Tick(130.0))
    assert actions == [Submit(1, 3)]


def test_other_work_goes_ahead_while_a_retry_backs_off():
    state = ControllerState(max_in_flight=1, backoff_s=30.0)
    state, _ = feed(state, Tick(0.0), ExposureReady(1), ExposureReady(2))
    state, actions = feed(state, TaskFailed(1, "lost", permanent=False))
    assert actions == [Submit(2, 1)]


def test_scaling_goes_up_at_once_and_down_only_after_the_hysteresis_window():
    policy = ScalingPolicy(min_workers=1, max_workers=4, tasks_per_worker=2, scale_down_after_s=60.0)
    state = ControllerState(max_in_flight=8, scaling=policy)
    state, actions = feed(state, Tick(0.0))
    assert actions == [ScaleTo(1)]
    scales = []

    def burst(state, first_id, start_s):
        state, actions = feed(state, Tick(start_s), *(ExposureReady(first_id + i) for i in range(7)))
        scales.extend(a for a in actions if isinstance(a, ScaleTo))
        for i in range(7):  # drains in 14 s
            state, actions = feed(state, Tick(start_s + 2 * (i + 1)), TaskFinished(first_id + i, None))
            scales.extend(a for a in actions if isinstance(a, ScaleTo))
        return state

    state = burst(state, 0, 0.0)
    state = burst(state, 100, 40.0)  # a lull of 26 s between bursts: workers are kept
    state = burst(state, 200, 90.0)
    assert [a.n_workers for a in scales] == [2, 3, 4]  # all during the first burst, never down
    state, actions = feed(state, Tick(90.0 + 2 + 60 - 1))  # low since the last burst's first finish
    assert actions == []
    state, actions = feed(state, Tick(90.0 + 2 + 60))
    assert actions == [ScaleTo(3)]  # the most wanted in that window (6 left of the burst)
    state, actions = feed(state, Tick(90.0 + 2 + 120))
    assert actions == [ScaleTo(1)]


def test_scaling_never_exceeds_its_bounds():
    policy = ScalingPolicy(min_workers=0, max_workers=3, tasks_per_worker=1, scale_down_after_s=0.0)
    state = ControllerState(max_in_flight=100, scaling=policy)
    state, actions = feed(state, *(ExposureReady(i) for i in range(50)))
    assert [a for a in actions if isinstance(a, ScaleTo)] == [ScaleTo(1), ScaleTo(2), ScaleTo(3)]
    state, _ = feed(state, *(TaskFinished(i, None) for i in range(50)))
    assert state.workers == 0


def test_in_flight_follows_the_tasks_length_between_two_and_eight_per_worker_thread():
    from emlive.runtime.controller import in_flight_for

    assert in_flight_for(2, None) == 4  # not known yet: one running, one queued per thread
    assert in_flight_for(2, 60.0) == 4  # long tasks: a new movie never waits behind many
    assert in_flight_for(2, 0.25) == 2 * 3  # the queue behind each running task covers 0.5 s
    assert in_flight_for(2, 0.07) == 2 * 8 == in_flight_for(2, 0.0)  # tiny tasks: at most 8 per thread
