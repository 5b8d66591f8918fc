"""The controller loop: watcher events in, Dask tasks out, results into the database.

This process is the only database writer. Workers run ``process_exposure`` and return plain
results; the loop feeds what happens to the pure ``decide`` function and performs the actions
it returns. On start it puts back exposures an earlier run left in flight, and stores results
whose checkpoints exist but never reached the database, instead of recomputing them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from distributed import Client, Future, wait

from emlive.config import ClusterSettings, Settings
from emlive.pipeline.exposure import (
    ExposureResult,
    ExposureSpec,
    PipelineParams,
    completed_result,
    process_exposure,
)
from emlive.pipeline.steps import engine
from emlive.runtime.cluster import Cluster, open_cluster, worker_count
from emlive.runtime.controller import (
    Action,
    ControllerState,
    Event,
    ExposureReady,
    MarkFailed,
    StopRequested,
    ScaleTo,
    ScalingPolicy,
    Store,
    Submit,
    TaskFailed,
    Tick,
    TaskFinished,
    decide,
)
from emlive.runtime.metrics import PrometheusMetrics, session_metrics
from emlive.runtime.watcher import Found, Watcher, new_watcher
from emlive.runtime.cluster import ToolsPlugin

if TYPE_CHECKING:  # Django models can be imported only once the database is set up
    from emlive.db.models import Session

log = logging.getLogger(__name__)

_WAKE_S = 0.1  # longest wait for a task to end before the watcher and clock are looked at again
_WORKER_CHECK_S = 2.0  # how often lost batch-system workers are looked for
_METRICS_S = 5.0  # how often Prometheus metrics are recomputed


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
) -> dict[str, int]:
    """Process one session's raw folder: once over what is there, or until stopped (``watch``).

    Returns the exposure counts by state. See :func:`run_sessions`.
    """
    counts = run_sessions(
        [(session, params)], settings, watch=watch, signals=signals, cluster=cluster, task=task,
        on_change=None if on_change is None else lambda _session, counts: on_change(counts),
    )
    return counts[session.pk]


@dataclass
class _Live:
    """A session being processed: its parameters, watcher and exports."""

    session: Session
    params: PipelineParams
    watcher: Watcher
    resources: dict[str, float] | None
    exports_dirty: bool = True
    last_export_s: float = 0.0


def run_sessions(
    sessions: list[tuple[Session, PipelineParams]],
    settings: Settings,
    *,
    watch: bool,
    signals: StopSignals | None = None,
    cluster: Cluster | None = None,
    on_change: Callable[[Session, dict[str, int]], None] | None = None,
    task: Callable[[ExposureSpec, PipelineParams], ExposureResult] = process_exposure,
) -> dict[int, dict[str, int]]:
    """Process several sessions on one cluster, sharing its workers fairly between them.

    Returns each session's exposure counts by state, by session id. ``cluster`` defaults to the
    configured one; ``task`` is what workers run per exposure (another function only to
    measure the controller itself).
    """
    if cluster is None:
        with open_cluster(settings.cluster) as own:
            return run_sessions(
                sessions, settings, watch=watch, signals=signals, cluster=own, on_change=on_change, task=task
            )
    from django.db import close_old_connections, transaction

    from emlive.db import export, queries, store

    signals = signals or never_stop()
    client = cluster.client
    state = ControllerState(
        max_in_flight=settings.scheduler.max_in_flight
        or 2 * worker_count(settings.cluster) * cluster.threads_per_worker,
        max_attempts=settings.scheduler.max_attempts,
        order=settings.scheduler.order,
        backoff_s=settings.scheduler.retry_backoff_s,
        scaling=None if cluster.scale is None else _scaling_policy(settings.cluster, cluster.threads_per_worker),
    )
    client.register_plugin(ToolsPlugin(settings.tools, settings.cluster.gpu_ids))
    lives = [
        _Live(
            session,
            params,
            new_watcher(
                Path(session.raw_dir),
                settle_s=settings.watch.settle_s,
                incomplete_timeout_s=settings.watch.incomplete_timeout_s,
            ),
            _gpu_resources(params, settings, client),  # GPU engines run on GPU workers only
        )
        for session, params in sessions
    ]
    for live in lives:
        if (reset := store.reset_in_flight(live.session)) > 0:
            log.info("%s: %d exposures left in flight by an earlier run will be redone", live.session, reset)
        store.set_session_state(live.session, "processing")

    specs: dict[int, ExposureSpec] = {}
    live_of: dict[int, _Live] = {}
    futures: dict[int, Future] = {}
    next_poll_s, next_worker_check_s, next_metrics_s = 0.0, 0.0, 0.0
    prometheus = None if settings.metrics.port is None else PrometheusMetrics(
        settings.metrics.port, address=settings.metrics.address
    )

    def notify(live: _Live) -> None:
        if on_change is not None:
            on_change(live.session, queries.counts_by_state(live.session))

    def perform(actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Submit(exposure_id, attempt):
                    live = live_of[exposure_id]
                    store.mark_submitted(exposure_id)
                    futures[exposure_id] = client.submit(
                        task,
                        specs[exposure_id],
                        live.params,
                        key=f"exposure-{live.session.pk}-{exposure_id}-{attempt}",
                        pure=False,
                        resources=live.resources,
                    )
                case Store(exposure_id, result):
                    store.store_exposure_result(exposure_id, result)
                    live_of[exposure_id].exports_dirty = True
                    notify(live_of[exposure_id])
                case MarkFailed(exposure_id, reason):
                    log.warning("%s failed: %s", specs[exposure_id].movie_path, reason)
                    store.mark_failed(exposure_id, reason)
                    notify(live_of[exposure_id])
                case ScaleTo(n_workers):
                    log.info("asking for %d workers", n_workers)
                    cluster.scale(n_workers)

    def handle(events: list[Event]) -> None:
        nonlocal state
        for event in events:
            state, actions = decide(state, event)
            perform(actions)

    while True:
        close_old_connections()  # a long-running controller must survive database restarts
        now_s = time.time()
        if signals.abandon.is_set():
            break
        with transaction.atomic():  # one commit per turn, however many exposures it moves on
            handle([Tick(time.monotonic())])
            if signals.stop.is_set() and not state.stopping:
                log.info("stopping: finishing %d exposures in flight", len(state.in_flight))
                handle([StopRequested()])
            if not state.stopping and now_s >= next_poll_s:
                next_poll_s = now_s + settings.watch.poll_interval_s
                for live in lives:
                    found = live.watcher.poll(now_s=now_s, final=not watch)
                    handle(_admit(live, found, specs, live_of))
                    if found:
                        notify(live)
            handle(_collect(futures))
        if cluster.replace_lost is not None and now_s >= next_worker_check_s:
            next_worker_check_s = now_s + _WORKER_CHECK_S
            if lost := cluster.replace_lost():
                log.warning("workers %s were lost (job ended); asked for replacements", ", ".join(lost))
        if prometheus is not None and now_s >= next_metrics_s:
            next_metrics_s = now_s + _METRICS_S
            for live in lives:
                arrivals, results, backlog, failed = queries.metric_inputs(live.session)
                metrics = session_metrics(
                    arrivals, results, backlog=backlog, failed=failed, now_s=now_s, window_s=settings.metrics.window_s
                )
                prometheus.update(live.session.name, metrics)
        for live in lives:
            if live.exports_dirty and now_s - live.last_export_s >= settings.scheduler.export_interval_s:
                export.write_exports(live.session, Path(live.session.out_dir) / "exports")
                live.exports_dirty, live.last_export_s = False, now_s
        if state.idle and (state.stopping or (not watch and all(live.watcher.unsettled == 0 for live in lives))):
            break
        _wait_any(futures, _WAKE_S)

    if prometheus is not None:
        prometheus.close()
    for future in futures.values():
        future.cancel()
    counts: dict[int, dict[str, int]] = {}
    for live in lives:
        if left := store.reset_in_flight(live.session):
            log.info("%s: %d exposures in flight were left to be processed next time", live.session, left)
        export.write_exports(live.session, Path(live.session.out_dir) / "exports")
        store.set_session_state(live.session, "stopped" if watch or left else "complete")
        counts[live.session.pk] = queries.counts_by_state(live.session)
    return counts


def _scaling_policy(settings: ClusterSettings, threads_per_worker: int) -> ScalingPolicy:
    return ScalingPolicy(
        min_workers=settings.min_workers,
        max_workers=worker_count(settings),
        tasks_per_worker=threads_per_worker,
        scale_down_after_s=settings.scale_down_after_s,
    )


def _admit(live: _Live, found: list[Found], specs: dict[int, ExposureSpec], live_of: dict[int, _Live]) -> list[Event]:
    """Record newly found movies; fail broken ones, ingest checkpointed ones, queue the rest."""
    from emlive.db import store

    session = live.session
    events: list[Event] = []
    for item in found:
        exposure, _ = store.record_exposure(session, item.rel_path, item.stat.size_bytes, item.stat.mtime_ns)
        if exposure.state not in ("found", "submitted"):
            continue  # processed or failed before, and the file has not changed since
        if item.reason is not None:
            store.mark_failed(exposure.pk, item.reason)
            continue
        spec = ExposureSpec(
            movie_path=Path(session.raw_dir) / item.rel_path,
            name=str(Path(item.rel_path).with_suffix("")),
            out_dir=Path(session.out_dir),
        )
        specs[exposure.pk], live_of[exposure.pk] = spec, live
        cached = completed_result(spec, live.params)
        if cached is not None:
            log.info("%s: results found on disk, stored without recomputing", item.rel_path)
            store.store_exposure_result(exposure.pk, cached)
            live.exports_dirty = True
        else:
            events.append(ExposureReady(exposure.pk, session.pk))
    return events


def _wait_any(futures: dict[int, Future], timeout_s: float) -> None:
    """Sleep until a task ends or ``timeout_s`` passes."""
    if not futures:
        time.sleep(timeout_s)
        return
    try:
        wait(list(futures.values()), timeout=timeout_s, return_when="FIRST_COMPLETED")
    except TimeoutError:
        pass


def _collect(futures: dict[int, Future]) -> list[Event]:
    """Events for tasks that have ended; permanent failures are bad input (ValueError)."""
    events: list[Event] = []
    for exposure_id, future in list(futures.items()):
        if not future.done():
            continue
        del futures[exposure_id]
        if future.status == "finished":
            events.append(TaskFinished(exposure_id, future.result()))
        elif future.status == "error":
            error = future.exception()
            if isinstance(error, ValueError):  # bad input or parameters: the message says what
                events.append(TaskFailed(exposure_id, str(error), permanent=True))
            else:
                events.append(TaskFailed(exposure_id, f"{type(error).__name__}: {error}", permanent=False))
        else:  # cancelled or lost with its worker: worth another try
            events.append(TaskFailed(exposure_id, f"task {future.status}", permanent=False))
    return events


def _gpu_resources(params: PipelineParams, settings: Settings, client: Client) -> dict[str, float] | None:
    """``{"GPU": 1}`` when an engine of the pipeline needs a GPU (its tasks then run only on
    workers declaring GPU resources), else None. Raises ``ValueError`` when no worker can have
    one, rather than leaving the tasks waiting for ever."""
    needing = [
        f"{step} engine {name}"
        for step, name in (("motion", params.motion.engine), ("ctf", params.ctf.engine))
        if engine(step, name).gpu
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
