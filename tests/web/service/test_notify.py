"""Notifications: the pure decisions (one alert per episode) and the webhook sender against a
real HTTP server."""

from __future__ import annotations

import logging
from dataclasses import replace

from emlive.web.notify import Memory, Notifier, Rules, Snapshot, decide, decide_all, send

RULES = Rules(stall_after_s=600.0, failures_to_alert=3, complete_after_s=1800.0)
T0 = 1_700_000_000.0


def snap(**changes: object) -> Snapshot:
    base = Snapshot(
        session_id=1, label="p1/ann/grid1", cycle_started_s=T0, total=10, backlog=4, processed=6, failed=0,
        last_result_s=T0 + 100, last_found_s=T0 + 200, failure_streak=0,
    )
    return replace(base, **changes)


def run(events: list[tuple[float, Snapshot]], rules: Rules = RULES) -> list[tuple[float, str]]:
    """Feed (time, snapshot) events in order; the (time, kind) of every alert."""
    memory: Memory | None = None
    said: list[tuple[float, str]] = []
    for now_s, s in events:
        memory, alerts = decide(memory, s, now_s=now_s, rules=rules)
        said += [(now_s, alert.kind) for alert in alerts]
    return said


def test_a_stall_alerts_once_per_episode_and_again_after_progress_resumes():
    stuck = snap(last_result_s=T0 + 100)
    later = snap(last_result_s=T0 + 2000, processed=7, backlog=3)
    events = [
        (T0 + 600, stuck),  # 500 s without a result: not yet
        (T0 + 700, stuck),  # 600 s: stalled
        (T0 + 900, stuck),
        (T0 + 1900, stuck),  # still the same episode: said once
        (T0 + 2010, later),  # a new result ends it
        (T0 + 2500, later),
        (T0 + 2600, later),  # 600 s after that result: a new episode
        (T0 + 2700, later),
    ]
    assert run(events) == [(T0 + 700, "stalled"), (T0 + 2600, "stalled")]


def test_no_stall_without_a_backlog_and_a_resumed_session_counts_from_its_restart():
    idle = snap(backlog=0, last_found_s=T0 + 100)
    assert run([(T0 + 1000, idle)]) == []
    # resumed at T0+5000 after a stop; its last result is old but the clock starts at the resume
    resumed = snap(cycle_started_s=T0 + 5000, last_result_s=T0 + 100, last_found_s=T0 + 100)
    assert run([(T0 + 5100, resumed), (T0 + 5599, resumed), (T0 + 5600, resumed)]) == [(T0 + 5600, "stalled")]


def test_repeated_failures_alert_once_until_an_exposure_succeeds():
    events = [
        (T0 + 10, snap(failure_streak=2, failed=2)),
        (T0 + 20, snap(failure_streak=3, failed=3, last_failure_reason="movie.tif: truncated")),
        (T0 + 30, snap(failure_streak=3, failed=5)),  # streak capped at failures_to_alert: same episode
        (T0 + 40, snap(failure_streak=0, failed=5)),  # one processed: over
        (T0 + 50, snap(failure_streak=3, failed=8)),
    ]
    assert run(events) == [(T0 + 20, "failing"), (T0 + 50, "failing")]
    memory, alerts = decide(None, snap(failure_streak=3, last_failure_reason="movie.tif: truncated"), now_s=T0, rules=RULES)
    assert "movie.tif: truncated" in alerts[0].text and "p1/ann/grid1" in alerts[0].text


def test_complete_when_nothing_is_left_and_no_movie_came_for_a_while():
    done = snap(backlog=0, processed=9, failed=1, last_found_s=T0 + 200, last_result_s=T0 + 260)
    events = [(T0 + 1999, done), (T0 + 2000, done), (T0 + 2100, done)]
    assert run(events) == [(T0 + 2000, "complete")]
    _, alerts = decide(None, done, now_s=T0 + 2000, rules=RULES)
    assert alerts[0].mark_complete and "9 exposures processed, 1 failed" in alerts[0].text
    # never complete with work waiting, or before the first movie
    assert run([(T0 + 9999, snap(backlog=1, last_found_s=T0 + 200, last_result_s=T0 + 9990))]) == []
    assert run([(T0 + 9999, snap(total=0, backlog=0, processed=0, last_found_s=None, last_result_s=None))]) == []


def test_time_before_the_controller_watched_counts_neither_as_a_stall_nor_as_quiet():
    """A service restarted after a long stop must look at the folders before judging them."""
    waiting = snap(last_result_s=T0, last_found_s=T0)
    done = snap(backlog=0, last_result_s=T0, last_found_s=T0)
    restart_s = T0 + 86_400
    for s, after_s, kind in ((waiting, RULES.stall_after_s, "stalled"), (done, RULES.complete_after_s, "complete")):
        _, alerts = decide(None, s, now_s=restart_s + 5, rules=RULES, watching_since_s=restart_s)
        assert alerts == []
        _, alerts = decide(None, s, now_s=restart_s + after_s, rules=RULES, watching_since_s=restart_s)
        assert [a.kind for a in alerts] == [kind]


def test_a_new_cycle_forgets_what_was_said():
    stuck = snap(last_result_s=T0)
    memory, alerts = decide(None, stuck, now_s=T0 + 700, rules=RULES)
    assert [a.kind for a in alerts] == ["stalled"] and memory.stalled
    resumed = replace(stuck, cycle_started_s=T0 + 1000)
    memory, alerts = decide(memory, resumed, now_s=T0 + 1100, rules=RULES)
    assert alerts == [] and not memory.stalled
    _, alerts = decide(memory, resumed, now_s=T0 + 1600, rules=RULES)
    assert [a.kind for a in alerts] == ["stalled"]


def test_sessions_no_longer_processed_are_forgotten():
    notifier = Notifier(RULES)
    a, b = snap(session_id=1, last_result_s=T0), snap(session_id=2, last_result_s=T0)
    assert [x.session_id for x in decide_all(notifier, [a, b], now_s=T0 + 700)] == [1, 2]
    assert decide_all(notifier, [a, b], now_s=T0 + 800) == []
    assert decide_all(notifier, [a], now_s=T0 + 900) == [] and set(notifier.memory) == {1}
    assert [x.session_id for x in decide_all(notifier, [a, b], now_s=T0 + 1000)] == [2]  # 2 stopped and restarted


def test_the_sender_posts_slack_compatible_json(hook):
    assert send(hook.url, "session p1/ann/grid1 is complete") is True
    assert hook.bodies == [{"text": "session p1/ann/grid1 is complete"}]
    assert hook.content_types == ["application/json"]


def test_the_sender_logs_failures_and_never_raises(hook, caplog):
    caplog.set_level(logging.WARNING, logger="emlive.web.notify")
    hook.status = 500
    assert send(hook.url, "first") is False
    hook.status, hook.delay_s = 200, 1.0
    assert send(hook.url, "second", timeout_s=0.2) is False
    hook.server.server_close()  # nobody listening any more
    assert send(hook.url, "third", timeout_s=1.0) is False
    assert send("not a url", "fourth") is False
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4 and "500" in messages[0]
    assert all("secretpart" not in m for m in messages)  # webhook paths are secrets
    assert [m.rsplit(": ", 1)[-1] for m in messages] == ["first", "second", "third", "fourth"]
