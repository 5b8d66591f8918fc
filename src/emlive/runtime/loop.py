"""The controller loop: watcher events in, Dask tasks out, results into the database.

This process is the only database writer. Workers run ``process_exposure`` and return plain
results; the loop feeds what happens to the pure ``decide`` function and performs the actions
it returns. On start it puts back exposures an earlier run left in flight, and stores results
whose checkpoints exist but never reached the database, instead of recomputing them.

Each turn of the loop is one database transaction and batches its work: the movies a scan
found are recorded together, the exposures submitted with one ``client.map`` per session, the
results that came back gathered in one call and stored together. A service runs
``run_sessions(follow=...)``: sessions are taken up and let go while the loop runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from typing import TYPE_CHECKING, Any

from distributed import Client, Future

from emlive.config import ClusterSettings, Settings
from emlive.io.atomic import remove_abandoned_temporaries
from emlive.pipeline.exposure import (
    ExposureResult,
    ExposureSpec,
    PipelineParams,
    completed_result,
    process_exposure,
)
from emlive.pipeline.registry import registry
from emlive.runtime.cluster import Cluster, open_cluster, register_worker_plugin, worker_count
from emlive.runtime.groups import SessionGroups, new_groups
from emlive.runtime.controller import (
    Action,
    ControllerState,
    Event,
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
    in_flight_for,
)
from emlive.runtime.metrics import PrometheusMetrics, session_metrics
from emlive.runtime.watcher import Found, Watcher, new_watcher
from emlive.runtime.cluster import ToolsPlugin

if TYPE_CHECKING:  # Django models can be imported only once the database is set up
    from emlive.db.models import Session

log = logging.getLogger(__name__)

_WAKE_S = 0.1  # longest wait for a task to end before the watcher and clock are looked at again
_TURN_SHARE = 0.05  # the most of the time a stream of ending tasks may keep the loop turning (see _Tasks.wait)
_MAX_LINGER_S = 0.25  # the longest a result that came back waits for the next turn because of it
_WORKER_CHECK_S = 2.0  # how often lost batch-system workers are looked for
_METRICS_S = 5.0  # how often Prometheus metrics are recomputed
_EXPORT_TIME_SHARE = 0.1  # the most of the loop's time a session's periodic exports may take
FOLLOW_INTERVAL_S = 2.0  # how often a service's followed sessions are asked for


@dataclass(frozen=True)
class StopSignals:
    """``stop``: finish what is in flight, then return. ``abandon``: return now."""

    stop: threading.Event
    abandon: threading.Event


def never_stop() -> StopSignals:
    return StopSignals(threading.Event(), threading.Event())


def run_session(
    session: Session,
    params: PipelineParams,
    settings: Settings,
    *,
    watch: bool,
    signals: StopSignals | None = None,
    cluster: Cluster | None = None,
    on_change: Callable[[dict[str, int]], None] | None = None,
    task: Callable[[ExposureSpec, PipelineParams], ExposureResult] = process_exposure,
    watcher_of: Callable[[Session], Any] | None = None,
) -> dict[str, int]:
    """Process one session's raw folder: once over what is there, or until stopped (``watch``).

    Returns the exposure counts by state. See :func:`run_sessions`.
    """
    counts = run_sessions(
        [(session, params)], settings, watch=watch, signals=signals, cluster=cluster, task=task, watcher_of=watcher_of,
        on_change=None if on_change is None else lambda _session, counts: on_change(counts),
    )
    return counts[session.pk]


SessionSource = Callable[[], Sequence[tuple["Session", PipelineParams]]]
"""The sessions to process now, with their parameters (see ``follow`` in :func:`run_sessions`)."""


@dataclass
class _Live:
    """A session being processed: its parameters, watcher and exports."""

    session: Session
    params: PipelineParams
    watcher: Watcher
    resources: dict[str, float] | None
    exports_dirty: bool = True
    last_export_s: float = 0.0
    export_cost_s: float = 0.0  # how long the last export took
    changed: bool = False  # its counts changed this turn (on_change is told once, at the end)
    dropped: bool = False  # no longer followed: finishes what it has in flight, then is let go
    groups: SessionGroups | None = None  # its tilt series (runtime.groups)


@dataclass
class _Run:
    """What one run of the controller holds between turns, and the stages of a turn along the
    data walk: discover (sessions and movies) → admit → decide → store → submit → export."""

    settings: Settings
    cluster: Cluster
    watch: bool
    follow: SessionSource | None
    task: Callable[[ExposureSpec, PipelineParams], ExposureResult]
    state: ControllerState
    tasks: _Tasks
    on_change: Callable[[Session, dict[str, int]], None] | None = None
    follow_interval_s: float = FOLLOW_INTERVAL_S
    lives: dict[int, _Live] = field(default_factory=dict)
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    specs: dict[int, ExposureSpec] = field(default_factory=dict)  # exposures waiting or in flight
    live_of: dict[int, _Live] = field(default_factory=dict)
    params_of: dict[int, PipelineParams] = field(default_factory=dict)  # exposures with their own (tilts)
    refused: set[int] = field(default_factory=set)  # followed sessions that cannot run (no GPU worker)
    next_poll_s: float = 0.0
    next_follow_s: float = 0.0
    slots: int | None = None  # worker threads, when max_in_flight follows the tasks' length (not configured)
    task_s: float | None = None  # a typical task's seconds, from how fast they end (moving average)
    ends_since_s: float | None = None  # since when (monotonic) ``ends`` tasks ended, every worker thread busy
    ends: int = 0
    watcher_of: Callable[[Session], Any] | None = None  # what finds a session's movies (None: a folder watcher)

    # --- sessions taken up and let go ------------------------------------------------------

    def take_up(self, session: Session, params: PipelineParams) -> None:
        from emlive.db import store

        try:
            resources = _gpu_resources(params, self.settings, self.cluster.client)  # GPU engines: GPU workers only
        except ValueError as err:
            if self.follow is None:
                raise
            log.error("%s cannot be processed: %s", session, err)
            self.refused.add(session.pk)
            return
        watcher = self.watcher_of(session) if self.watcher_of is not None else new_watcher(
            Path(session.raw_dir),
            settle_s=self.settings.watch.settle_s,
            incomplete_timeout_s=self.settings.watch.incomplete_timeout_s,
        )
        if (reset := store.reset_in_flight(session)) > 0:
            log.info("%s: %d exposures left in flight by an earlier run will be redone", session, reset)
        _remove_abandoned_temporaries(session)
        if self.follow is None:
            store.set_session_state(session, "processing")
        self.lives[session.pk] = _Live(session, params, watcher, resources,
                                       groups=new_groups(session, params, self.settings.tomo))

    def let_go(self, live: _Live) -> None:
        """The session's work in flight is done with (or abandoned): leave it consistent."""
        from emlive.db import queries, store

        session = live.session
        del self.lives[session.pk]
        live.watcher.close()
        if live.groups is not None:
            live.groups.cancel()
        for exposure_id in [e for e, of in self.live_of.items() if of is live]:  # waiting when it was dropped
            del self.specs[exposure_id], self.live_of[exposure_id]
        if left := store.reset_in_flight(session):
            log.info("%s: %d exposures in flight were left to be processed next time", session, left)
        _write_exports(session)
        if self.follow is None:
            store.set_session_state(session, "stopped" if self.watch or left else "complete")
        self.counts[session.pk] = queries.counts_by_state(session)

    def follow_sessions(self, now_s: float) -> list[Event]:
        """Take up the sessions ``follow()`` names now; drop (let finish) those it no longer does."""
        if self.follow is None or self.state.stopping or now_s < self.next_follow_s:
            return []
        self.next_follow_s = now_s + self.follow_interval_s
        wanted = {session.pk: (session, params) for session, params in self.follow()}
        self.refused.intersection_update(wanted)  # one asked for again after it was dropped is tried again
        for session_id, (session, params) in wanted.items():
            if session_id not in self.lives and session_id not in self.refused:  # (one being let go: once it is)
                log.info("%s: taken up", session)
                self.take_up(session, params)
        events: list[Event] = []
        for live in [live for pk, live in self.lives.items() if pk not in wanted and not live.dropped]:
            log.info("%s: no longer followed; finishing its exposures in flight", live.session)
            live.dropped = True
            events.append(SessionDropped(live.session.pk))
        return events

    # --- one turn's stages -----------------------------------------------------------------

    def discover(self, now_s: float, *, stopping: bool) -> list[Event]:
        """Poll each session's watcher (at the poll interval) and admit the movies it found."""
        if stopping or now_s < self.next_poll_s:
            return []
        self.next_poll_s = now_s + self.settings.watch.poll_interval_s
        events: list[Event] = []
        for live in self.lives.values():
            if live.dropped:
                continue
            found = _poll(live, now_s=now_s, final=not self.watch)
            if live.groups is not None:
                _poll_groups(live, now_s, found)
                found = live.groups.without_stacks(found)
            if found:
                events += _admit(live, found, self.specs, self.live_of, self.params_of)
                live.changed = True
        return events

    def store(self, actions: list[Action]) -> None:
        """Store the results that came back, and the failures, in one statement per kind."""
        from emlive.db import store
        from emlive.db.models import Exposure

        results = [(a.exposure_id, a.result) for a in actions if isinstance(a, Store)]
        if results:
            self._time_tasks(len(results))
            for exposure in store.store_exposure_results(results, skip_missing=self.follow is not None):
                self.live_of[exposure.pk].exports_dirty = True
            self._tell_groups(results, [])
            for exposure_id, _ in results:
                self._done_with(exposure_id)
        for action in actions:
            if isinstance(action, MarkFailed):
                log.warning("%s failed: %s", self.specs[action.exposure_id].movie_path, action.reason)
                try:
                    store.mark_failed(action.exposure_id, action.reason)
                except Exposure.DoesNotExist:
                    if self.follow is None:
                        raise
                    log.warning("exposure %d no longer exists (session deleted?)", action.exposure_id)
                self._tell_groups([], [(action.exposure_id, action.reason)])
                self._done_with(action.exposure_id)

    def _tell_groups(self, results: list[tuple[int, object]], failures: list[tuple[int, str]]) -> None:
        """Tell each session's tilt series which of its exposures were stored or failed."""
        for live in {id(self.live_of[e]): self.live_of[e] for e, _ in [*results, *failures]}.values():
            if live.groups is not None:
                mine = [(e, r) for e, r in results if self.live_of[e] is live]
                live.groups.stored(self.cluster.client, mine)
                live.groups.failed([(e, r) for e, r in failures if self.live_of[e] is live])

    def groups_turn(self, now_s: float) -> None:
        """Each session's tilt series: store finished group steps, submit those that are due."""
        for live in self.lives.values():
            if live.groups is not None and live.groups.turn(
                self.cluster.client, now_s, final=not self.watch and live.watcher.unsettled == 0 and self.state.idle,
                stopping=self.state.stopping or live.dropped,
            ):
                live.exports_dirty = live.changed = True

    def _time_tasks(self, ended: int) -> None:
        """Follow how long tasks take — worker threads x seconds / tasks ended, over a second or
        more with every thread busy — and size the tasks in flight to it (:func:`in_flight_for`)."""
        if self.slots is None:
            return
        now_s = time.monotonic()
        if len(self.state.in_flight) + ended < self.slots or self.ends_since_s is None:
            self.ends_since_s, self.ends = now_s, 0  # (re)start counting once every thread is busy
            return
        self.ends += ended
        if (elapsed_s := now_s - self.ends_since_s) < 1.0:
            return
        task_s = self.slots * elapsed_s / self.ends
        self.task_s = task_s if self.task_s is None else 0.5 * self.task_s + 0.5 * task_s
        self.ends_since_s, self.ends = now_s, 0
        if (wanted := in_flight_for(self.slots, self.task_s)) != self.state.max_in_flight:
            self.state = replace(self.state, max_in_flight=wanted)

    def _done_with(self, exposure_id: int) -> None:
        self.live_of[exposure_id].changed = True
        del self.specs[exposure_id], self.live_of[exposure_id]
        self.params_of.pop(exposure_id, None)

    def submit(self, actions: list[Action]) -> None:
        """Submit the exposures the controller chose, one ``client.map`` per session, and scale."""
        from emlive.db import store

        submits = [a for a in actions if isinstance(a, Submit)]
        if submits:
            store.mark_submitted_many([s.exposure_id for s in submits], skip_missing=self.follow is not None)
            by_session: dict[int, list[Submit]] = {}
            for submit in submits:
                by_session.setdefault(self.live_of[submit.exposure_id].session.pk, []).append(submit)
            size = chunk_size(self.task_s) if self.slots is not None else 1
            for session_id, batch in by_session.items():
                live = self.lives[session_id]
                chunks = _chunks_by_params(batch, size, lambda s: self.params_of.get(s.exposure_id, live.params))
                futures = self.cluster.client.map(
                    process_chunk,
                    [self.task] * len(chunks),
                    [[self.specs[s.exposure_id] for s in chunk] for chunk in chunks],
                    [self.params_of.get(chunk[0].exposure_id, live.params) for chunk in chunks],
                    key=[f"exposures-{session_id}-{c[0].exposure_id}-{c[0].attempt}-{len(c)}" for c in chunks],
                    pure=False,
                    resources=live.resources,
                )
                for chunk, future in zip(chunks, futures, strict=True):
                    self.tasks.add([s.exposure_id for s in chunk], future)
        if scales := [a for a in actions if isinstance(a, ScaleTo)]:
            log.info("asking for %d workers", scales[-1].n_workers)  # the turn's last word counts
            assert self.cluster.scale is not None
            self.cluster.scale(scales[-1].n_workers)

    def tell(self) -> None:
        """Tell ``on_change`` about each session whose counts changed; let go of dropped ones
        that have nothing left in flight."""
        from emlive.db import queries

        for live in list(self.lives.values()):
            if live.changed:
                live.changed = False
                if self.on_change is not None:
                    self.on_change(live.session, queries.counts_by_state(live.session))
            if live.dropped and not self.state.busy(live.session.pk):
                self.let_go(live)

    def export(self, now_s: float) -> None:
        """Rewrite the exports of sessions whose results changed, when due (:func:`export_due`)."""
        for live in self.lives.values():
            if live.exports_dirty and export_due(
                now_s - live.last_export_s, interval_s=self.settings.scheduler.export_interval_s,
                cost_s=live.export_cost_s,
            ):
                started_s = time.perf_counter()
                written = _write_exports(live.session)
                live.export_cost_s = time.perf_counter() - started_s
                live.exports_dirty, live.last_export_s = not written, now_s

    def finished(self) -> bool:
        """Nothing in flight, and stopping (or, without ``watch``, nothing left to settle)."""
        return self.state.idle and all(live.groups is None or not live.groups.busy for live in self.lives.values()) and (
            self.state.stopping or (not self.watch and all(
                live.watcher.unsettled == 0 and (live.groups is None or not live.groups.pending())
                for live in self.lives.values()
            ))
        )


def run_sessions(
    sessions: Sequence[tuple[Session, PipelineParams]],
    settings: Settings,
    *,
    watch: bool,
    signals: StopSignals | None = None,
    cluster: Cluster | None = None,
    on_change: Callable[[Session, dict[str, int]], None] | None = None,
    task: Callable[[ExposureSpec, PipelineParams], ExposureResult] = process_exposure,
    follow: SessionSource | None = None,
    follow_interval_s: float = FOLLOW_INTERVAL_S,
    watcher_of: Callable[[Session], Any] | None = None,
) -> dict[int, dict[str, int]]:
    """Process several sessions on one cluster, sharing its workers fairly between them.

    Returns each session's exposure counts by state, by session id. ``cluster`` defaults to the
    configured one; ``task`` is what workers run per exposure (another function to measure the
    controller itself, or to stage remote movies: emlive.remote); ``watcher_of``: what finds a
    session's movies instead of a watcher of its raw folder (an object-store listing).

    ``follow`` (a service; needs ``watch`` and no ``sessions``): the sessions processed are
    those ``follow()`` returns, asked again every ``follow_interval_s``. A session that appears
    is taken up (exposures an earlier run left in flight are redone, checkpointed results
    stored); one that disappears gets nothing new submitted, and is let go once its exposures
    in flight are stored. The loop then runs until ``signals`` stop it, and leaves the
    sessions' states to the caller (a session still followed when the loop stops is taken up
    again by the next run). Without ``follow`` the loop sets each session's state:
    ``processing``, then ``complete`` (a one-shot run that finished) or ``stopped``.

    Each loop turn is one database transaction, whatever it moves on: the movies found are
    recorded, the results that came back stored and the exposures submitted in a fixed number
    of statements.
    """
    if follow is not None and (sessions or not watch):
        raise ValueError("run_sessions(follow=...) takes its sessions from follow() and needs watch=True")
    if cluster is None:
        with open_cluster(settings.cluster) as own:
            return run_sessions(
                sessions, settings, watch=watch, signals=signals, cluster=own, on_change=on_change, task=task,
                follow=follow, follow_interval_s=follow_interval_s, watcher_of=watcher_of,
            )
    from django.db import close_old_connections, transaction

    signals = signals or never_stop()
    register_worker_plugin(cluster.client, ToolsPlugin(settings.tools, settings.cluster.gpu_ids))
    run = _Run(
        settings=settings, cluster=cluster, watch=watch, follow=follow, task=task, on_change=on_change,
        state=_controller_state(settings, cluster), tasks=_Tasks(cluster.client), follow_interval_s=follow_interval_s,
        slots=None if settings.scheduler.max_in_flight else worker_count(settings.cluster) * cluster.threads_per_worker,
        watcher_of=watcher_of,
    )
    upkeep = _Upkeep(settings, cluster)
    for session, params in sessions:
        run.take_up(session, params)
    while not signals.abandon.is_set():
        turn_started_s = time.perf_counter()
        close_old_connections()  # a long-running controller must survive database restarts
        now_s = time.time()
        events: list[Event] = [Tick(time.monotonic()), *run.follow_sessions(now_s)]
        if signals.stop.is_set() and not run.state.stopping:
            log.info("stopping: finishing %d exposures in flight", len(run.state.in_flight))
            events.append(StopRequested())
        with transaction.atomic():  # one commit per turn, however many exposures it moves on
            events += run.discover(now_s, stopping=run.state.stopping or signals.stop.is_set())
            events += run.tasks.ended()
            actions: list[Action] = []
            for event in events:
                run.state, new = decide(run.state, event)
                actions += new
            run.store(actions)
            run.submit(actions)
            run.groups_turn(now_s)
        run.tell()
        upkeep.turn(run.lives.values(), now_s)
        run.export(now_s)
        if run.finished():
            break
        turn_s = time.perf_counter() - turn_started_s
        run.tasks.wait(_WAKE_S, linger_s=min(_MAX_LINGER_S, turn_s * (1 - _TURN_SHARE) / _TURN_SHARE))
    upkeep.close()
    run.tasks.cancel()
    for live in list(run.lives.values()):
        run.let_go(live)
    return run.counts


def _controller_state(settings: Settings, cluster: Cluster) -> ControllerState:
    return ControllerState(
        max_in_flight=settings.scheduler.max_in_flight
        or in_flight_for(worker_count(settings.cluster) * cluster.threads_per_worker, None),
        max_attempts=settings.scheduler.max_attempts,
        order=settings.scheduler.order,
        backoff_s=settings.scheduler.retry_backoff_s,
        scaling=None if cluster.scale is None else _scaling_policy(settings.cluster, cluster.threads_per_worker),
    )


class _Upkeep:
    """What the loop does besides the data walk, each at its own pace: replacing lost
    batch-system workers and recomputing Prometheus metrics."""

    def __init__(self, settings: Settings, cluster: Cluster) -> None:
        self._settings, self._cluster = settings, cluster
        self._next_worker_check_s = self._next_metrics_s = 0.0
        self._prometheus = None if settings.metrics.port is None else PrometheusMetrics(
            settings.metrics.port, address=settings.metrics.address
        )

    def turn(self, lives: Iterable[_Live], now_s: float) -> None:
        from emlive.db import queries

        if self._cluster.replace_lost is not None and now_s >= self._next_worker_check_s:
            self._next_worker_check_s = now_s + _WORKER_CHECK_S
            if lost := self._cluster.replace_lost():
                log.warning("workers %s were lost (job ended, or killed as they started); asked for replacements", ", ".join(lost))
        if self._prometheus is not None and now_s >= self._next_metrics_s:
            self._next_metrics_s = now_s + _METRICS_S
            for live in lives:
                arrivals, results, backlog, failed = queries.metric_inputs(live.session)
                metrics = session_metrics(
                    arrivals, results, backlog=backlog, failed=failed, now_s=now_s,
                    window_s=self._settings.metrics.window_s,
                )
                self._prometheus.update(live.session.name, metrics)

    def close(self) -> None:
        if self._prometheus is not None:
            self._prometheus.close()


def _poll(live: _Live, *, now_s: float, final: bool) -> list[Found]:
    """The watcher's new movies; a folder that cannot be read is logged (with what to do) and
    tried again next poll, so one session's problem never stops the others."""
    try:
        return live.watcher.poll(now_s=now_s, final=final)
    except OSError as err:
        log.error("%s: cannot scan %s (%s); fix the folder's permissions or mount — tried again next poll",
                  live.session, live.session.raw_dir, err)
        return []


def _remove_abandoned_temporaries(session: Session) -> None:
    """Remove the half-written files that killed writers left in the session's output folder
    (:func:`emlive.io.atomic.remove_abandoned_temporaries`: a live worker's are kept)."""
    try:
        removed = remove_abandoned_temporaries(session.out_dir, skip=[session.raw_dir])
    except OSError as err:
        log.warning("%s: cannot look for abandoned temporary files in %s (%s)", session, session.out_dir, err)
        return
    for path in removed:
        log.info("%s: removed %s, left half-written by a writer that is gone", session, path)


def _write_exports(session: Session) -> bool:
    """Rewrite a session's STAR exports; False (logged, tried again later) when its output folder
    cannot be written, so one session's full or read-only disk never stops the others."""
    from emlive.db import export

    out = Path(session.out_dir) / "exports"
    try:
        export.write_exports(session, out)
    except OSError as err:
        log.error("%s: cannot write the exports in %s (%s); free space or fix permissions — tried again later",
                  session, out, err)
        return False
    return True


def export_due(since_last_s: float, *, interval_s: float, cost_s: float) -> bool:
    """Whether a session's exports (which changed) are rewritten now: at most every
    ``interval_s``, and at least ``1 / _EXPORT_TIME_SHARE`` times as long apart as the last
    rewrite took (``cost_s``), since the loop does nothing else meanwhile and a large session's
    export takes long."""
    return since_last_s >= max(interval_s, cost_s / _EXPORT_TIME_SHARE)


def _scaling_policy(settings: ClusterSettings, threads_per_worker: int) -> ScalingPolicy:
    return ScalingPolicy(
        min_workers=settings.min_workers,
        max_workers=worker_count(settings),
        tasks_per_worker=threads_per_worker,
        scale_down_after_s=settings.scale_down_after_s,
    )


def _poll_groups(live: _Live, now_s: float, found: list[Found]) -> None:
    """Read the session's new or changed mdocs (tilt series); a folder or file that cannot be
    read is logged and tried again next poll."""
    assert live.groups is not None
    try:
        live.groups.poll(now_s, movies=[f.rel_path for f in found])
    except OSError as err:
        log.error("%s: cannot look for .mdoc files (%s); tried again next poll", live.session, err)


def _admit(
    live: _Live,
    found: list[Found],
    specs: dict[int, ExposureSpec],
    live_of: dict[int, _Live],
    params_of: dict[int, PipelineParams] | None = None,
) -> list[Event]:
    """Record newly found movies; fail broken ones, ingest checkpointed ones, queue the rest.
    A tilt of a tilt series (``live.groups``) is linked to its series and gets its own params."""
    from emlive.db import store

    session = live.session
    recorded = store.record_exposures(session, [(f.rel_path, f.stat.size_bytes, f.stat.mtime_ns) for f in found])
    if live.groups is not None:
        live.groups.linked((exposure.pk, item.rel_path) for item, (exposure, _) in zip(found, recorded, strict=True))
    events: list[Event] = []
    cached: list[tuple[int, ExposureResult]] = []
    for item, (exposure, _) in zip(found, recorded, strict=True):
        if exposure.state not in ("found", "submitted"):
            continue  # processed or failed before, and the file has not changed since
        if item.reason is not None:
            store.mark_failed(exposure.pk, item.reason)
            if live.groups is not None:
                live.groups.failed([(exposure.pk, item.reason)])
            continue
        params = live.params
        if live.groups is not None and (own := live.groups.params_for(item.rel_path)) is not None:
            params = own
        spec = ExposureSpec(
            movie_path=Path(session.raw_dir) / item.rel_path,
            name=str(Path(item.rel_path).with_suffix("")),
            out_dir=Path(session.out_dir),
        )
        result = completed_result(spec, params)
        if result is not None:
            log.info("%s: results found on disk, stored without recomputing", item.rel_path)
            cached.append((exposure.pk, result))
        else:
            specs[exposure.pk], live_of[exposure.pk] = spec, live
            if params is not live.params and params_of is not None:
                params_of[exposure.pk] = params
            events.append(ExposureReady(exposure.pk, session.pk))
    if cached:
        store.store_exposure_results(cached)
        live.exports_dirty = True
        if live.groups is not None:
            live.groups.counted([e for e, _ in cached])
    return events


def chunk_size(task_s: float | None) -> int:
    """How many exposures one Dask task processes: one, unless exposures are short (``task_s``,
    a typical exposure's seconds on a worker thread; None: not known yet), then as many as last
    about :data:`CHUNK_S` together, at most :data:`MAX_CHUNK`.

    Each task costs a round of messages between the controller's process (where the local Dask
    scheduler runs) and a worker, and a wait of the worker thread for its next task; on tiny
    movies (tens of ms each) that cost was a quarter of the time (benchmarks/tiny.py). A chunk
    pays it once for several exposures, which still end one by one in the database."""
    if task_s is None or task_s >= CHUNK_S / 2:
        return 1
    return max(1, min(MAX_CHUNK, int(CHUNK_S / task_s)))


CHUNK_S = 0.2
MAX_CHUNK = 16


@dataclass(frozen=True)
class ChunkFailure:
    """One exposure of a chunk raised (the others' results are kept): the reason and whether it is
    bad input (``ValueError``: not retried)."""

    reason: str
    permanent: bool


def _chunks_by_params(
    batch: list[Submit], size: int, params_of: Callable[[Submit], PipelineParams]
) -> list[list[Submit]]:
    """Chunks of at most ``size`` exposures sharing one params object (a tilt of a tilt series
    has its own), in the order given within each."""
    groups: dict[int, list[Submit]] = {}
    for submit in batch:
        groups.setdefault(id(params_of(submit)), []).append(submit)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def process_chunk(
    task: Callable[[ExposureSpec, PipelineParams], ExposureResult], specs: list[ExposureSpec], params: PipelineParams
) -> list[ExposureResult | ChunkFailure]:
    """Run ``task`` on each exposure of a chunk in turn (on a worker); one exposure's error is its
    own outcome and never loses the others' results."""
    outcomes: list[ExposureResult | ChunkFailure] = []
    for spec in specs:
        try:
            outcomes.append(task(spec, params))
        except ValueError as error:  # bad input or parameters: the message says what
            outcomes.append(ChunkFailure(str(error) or type(error).__name__, permanent=True))
        except Exception as error:  # noqa: BLE001 - the controller retries it, with the reason
            outcomes.append(ChunkFailure(f"{type(error).__name__}: {error}", permanent=False))
    return outcomes


class _Tasks:
    """The tasks in flight (each a chunk of one or more exposures, :func:`chunk_size`), and which
    have ended: Dask tells (a callback per task), so the loop waits on one event rather than
    asking the scheduler about each task each turn, and fetches the results of a turn in one
    call."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._futures: dict[int, Future] = {}  # exposure -> the task processing it
        self._ended: list[tuple[list[int], Future]] = []
        self._n_ended = 0  # exposures in _ended
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def add(self, exposure_ids: list[int], future: Future) -> None:
        for exposure_id in exposure_ids:
            self._futures[exposure_id] = future
        future.add_done_callback(lambda f: self._end(exposure_ids, f))

    def _end(self, exposure_ids: list[int], future: Future) -> None:  # in Dask's callback thread
        with self._lock:
            self._ended.append((exposure_ids, future))
            self._n_ended += len(exposure_ids)
        self._wake.set()

    def wait(self, timeout_s: float, *, linger_s: float = 0.0) -> None:
        """Sleep until a task ends or ``timeout_s`` passes, and at least ``linger_s``.

        The loop lingers about 19 times as long as its last turn took (``_TURN_SHARE``; at most
        ``_MAX_LINGER_S``): when tasks end faster than the loop turns (small movies on a small
        machine), a turn then stores and replaces several at once instead of paying its fixed
        cost (a transaction, the Dask round trips) for each, and the controller's CPU stays
        small beside the workers'. A turn of 5 ms lingers about 0.1 s; the tasks queued on each
        worker (``max_in_flight``, which covers 0.5 s of tasks) keep it busy meanwhile. It stops
        lingering once half the exposures in flight have ended: then the controller, not the
        workers, is what holds the work up (tasks that take no time)."""
        until_s = time.monotonic() + linger_s
        self._wake.wait(timeout_s)
        while (left_s := until_s - time.monotonic()) > 0:
            with self._lock:
                if 2 * self._n_ended >= len(self._futures):
                    return
                self._wake.clear()
            self._wake.wait(left_s)

    def ended(self) -> list[Event]:
        """Events for the exposures whose tasks ended since last asked; permanent failures are bad
        input (ValueError)."""
        with self._lock:
            ended, self._ended, self._n_ended = self._ended, [], 0
            self._wake.clear()
        ended = [(ids, f) for ids, f in ended if any(self._futures.get(e) is f for e in ids)]
        if again := [(ids, f) for ids, f in ended if not f.done()]:
            with self._lock:  # ended, then its result was lost with a worker: looked at next turn
                self._ended += again
                self._n_ended += sum(len(ids) for ids, _ in again)
        ended = [(ids, f) for ids, f in ended if f.done()]
        for ids, _ in ended:
            for exposure_id in ids:
                del self._futures[exposure_id]
        finished = [(ids, f) for ids, f in ended if f.status == "finished"]
        events: list[Event] = []
        if finished:
            try:
                outcomes = self._client.gather([f for _, f in finished])
            except Exception:  # one of them lost meanwhile: ask each on its own
                events += [event for ids, f in finished for event in _ended_events(ids, f)]
            else:
                events += [
                    _outcome_event(e, outcome)
                    for (ids, _), chunk in zip(finished, outcomes, strict=True)
                    for e, outcome in zip(ids, chunk, strict=True)
                ]
        events += [event for ids, f in ended if f.status != "finished" for event in _ended_events(ids, f)]
        return events

    def cancel(self) -> None:
        for future in set(self._futures.values()):
            future.cancel()
        self._futures.clear()


def _outcome_event(exposure_id: int, outcome: ExposureResult | ChunkFailure) -> Event:
    if isinstance(outcome, ChunkFailure):
        return TaskFailed(exposure_id, outcome.reason, permanent=outcome.permanent)
    return TaskFinished(exposure_id, outcome)


def _ended_events(exposure_ids: list[int], future: Future) -> list[Event]:
    """The events for the exposures of one task that has ended."""
    if future.status == "finished":
        try:
            chunk = future.result()
        except Exception as error:  # its result was lost: worth another try
            return [TaskFailed(e, f"{type(error).__name__}: {error}", permanent=False) for e in exposure_ids]
        return [_outcome_event(e, outcome) for e, outcome in zip(exposure_ids, chunk, strict=True)]
    if future.status == "error":  # the chunk itself failed (the worker died, or could not unpickle it)
        error = future.exception()
        return [TaskFailed(e, f"{type(error).__name__}: {error}", permanent=False) for e in exposure_ids]
    return [TaskFailed(e, f"task {future.status}", permanent=False) for e in exposure_ids]  # cancelled


def _gpu_resources(params: PipelineParams, settings: Settings, client: Client) -> dict[str, float] | None:
    """``{"GPU": 1}`` when an engine of the pipeline needs a GPU (its tasks then run only on
    workers declaring GPU resources), else None. Raises ``ValueError`` when no worker can have
    one, rather than leaving the tasks waiting for ever."""
    steps = registry().steps
    needing = [
        f"{name} engine {engine}"
        for name, step_params in params.steps.items()
        if steps[name].engine(engine := str(getattr(step_params, "engine"))).gpu
    ]
    if not needing:
        return None
    workers = list(client.scheduler_info(n_workers=-1)["workers"].values())
    # workers still to come (a batch system scaling up from none) are trusted to declare theirs
    if settings.cluster.gpu_ids or not workers or any(w.get("resources", {}).get("GPU") for w in workers):
        return {"GPU": 1}
    raise ValueError(
        f"the {' and the '.join(needing)} need a GPU and no worker has one: give --gpu-ids "
        "(cluster.gpu_ids) for local workers, or start workers with Dask resources GPU=1"
    )
