"""Several sessions on one cluster: the controller shares the workers so none starves."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

from emlive.acquisition import Acquisition
from emlive.config import load_settings
from emlive.ctf.types import CtfResult
from emlive.db.setup import sqlite_url
from emlive.io.mrc import write_mrc_atomic
from emlive.motion.types import MotionResult
from emlive.pipeline.exposure import ExposureResult, PipelineParams
from emlive.pipeline.steps import StepRecord
from emlive.pipeline.thumbnail import Thumbnail
from emlive.runtime.cluster import Cluster
from emlive.runtime.loop import StopSignals, run_sessions

from ..db.conftest import activate

pytestmark = pytest.mark.slow

COMPUTE_S = 0.4


def timed_result(spec, params) -> ExposureResult:
    """Stands in for processing: takes COMPUTE_S and returns a well-formed result."""
    time.sleep(COMPUTE_S)
    return well_formed_result(spec)


def well_formed_result(spec) -> ExposureResult:
    now = datetime.now(UTC)
    out = spec.out_dir / spec.name
    record = {"engine": "timed", "engine_version": "0", "started_at": now, "finished_at": now, "reused": False}
    return ExposureResult(results=dict(
        motion=MotionResult(
            shifts_px=[(0.0, 0.0), (0.5, 0.5)], total_drift_a=0.7, early_drift_a=0.7, late_drift_a=0.0,
            micrograph_path=out.with_suffix(".mrc"), dose_weighted_path=out.with_suffix(".dw.mrc"),
            star_path=out.with_suffix(".star"), pixel_size_a=1.0, n_frames=2,
        ),
        ctf=CtfResult(
            defocus_u_a=1e4, defocus_v_a=1e4, azimuth_deg=0.0, cross_correlation=0.3, fit_resolution_a=4.0,
            fit_ok=True, ice_ring_ratio=1.0, output_txt_path=out.with_suffix(".txt"),
            avrot_path=out.with_suffix(".avrot.txt"), diagnostic_png_path=out.with_suffix(".png"),
        ),
        thumbnail=Thumbnail(png_path=out.with_suffix(".thumb.png")),
        ), steps=[StepRecord(step=step, **record) for step in ("motion", "ctf", "thumbnail")],
    )


def _movies(raw: Path, names: list[str]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_mrc_atomic(raw / name, np.zeros((2, 8, 8), np.int8), pixel_size_a=1.0)


def test_a_trickling_session_is_not_starved_by_a_burst_in_another(tmp_path):
    activate(sqlite_url(tmp_path / "emlive.sqlite3"))
    from emlive.db import store

    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    params = PipelineParams(acquisition=acq)
    busy = store.get_or_create_session(tmp_path / "busy" / "raw", tmp_path / "busy" / "out", acq)
    quiet = store.get_or_create_session(tmp_path / "quiet" / "raw", tmp_path / "quiet" / "out", acq)
    _movies(tmp_path / "busy" / "raw", [f"b{i:02d}.mrc" for i in range(20)])  # a burst of 20
    (tmp_path / "quiet" / "raw").mkdir(parents=True)
    settings = load_settings(
        watch={"settle_s": 0, "poll_interval_s": 0.2}, cluster={"n_workers": 2}, scheduler={"export_interval_s": 60}
    )

    def trickle() -> None:  # the quiet session's movies arrive while the burst is being worked on
        time.sleep(1.0)
        _movies(tmp_path / "quiet" / "raw", ["q0.mrc"])
        time.sleep(0.5)
        _movies(tmp_path / "quiet" / "raw", ["q1.mrc"])

    arrivals = threading.Thread(target=trickle)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as local:
        with Client(local) as client:
            arrivals.start()
            counts = run_sessions(
                [(busy, params), (quiet, params)], settings, watch=False, cluster=Cluster(client, None, 1),
                task=timed_result,
            )
    arrivals.join()
    assert counts[busy.pk]["processed"] == 20 and counts[quiet.pk]["processed"] == 2
    done = {e.path: e.processed_at for e in busy.exposures.all()} | {
        e.path: e.processed_at for e in quiet.exposures.all()
    }
    busy_done = sorted(t for name, t in done.items() if name.startswith("b"))
    # both quiet movies are done while a fifth of the burst still waits
    assert done["q1.mrc"] < busy_done[-4], sorted(done, key=done.get)


COMPUTED: list[str] = []  # the exposures the (threaded) workers computed, in order


def counted_result(spec, params) -> ExposureResult:
    COMPUTED.append(str(spec.movie_path))
    return timed_result(spec, params)


def _wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_followed_sessions_are_taken_up_and_let_go_as_their_state_changes(tmp_path):
    """What ``emlive serve`` does: the loop follows the sessions whose state is ``processing``."""
    activate(sqlite_url(tmp_path / "emlive.sqlite3"))
    from django.db import connections

    from emlive.db import store
    from emlive.db.models import Session

    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    params = PipelineParams(acquisition=acq)
    first = store.get_or_create_session(tmp_path / "first" / "raw", tmp_path / "first" / "out", acq)
    second = store.get_or_create_session(tmp_path / "second" / "raw", tmp_path / "second" / "out", acq)
    _movies(tmp_path / "first" / "raw", [f"f{i:02d}.mrc" for i in range(12)])
    _movies(tmp_path / "second" / "raw", [f"s{i}.mrc" for i in range(3)])
    store.set_session_state(first, "processing")
    settings = load_settings(
        watch={"settle_s": 0, "poll_interval_s": 0.1}, cluster={"n_workers": 2}, scheduler={"export_interval_s": 60}
    )
    signals = StopSignals(threading.Event(), threading.Event())
    COMPUTED.clear()
    seen: dict[str, dict[str, int]] = {}
    errors: list[BaseException] = []

    def follow():
        return [(session, params) for session in Session.objects.filter(state="processing")]

    def counts(session) -> dict[str, int]:
        return queries.counts_by_state(session)

    def operator() -> None:  # what the API does while the controller runs
        try:
            _wait_for(lambda: counts(first).get("processed", 0) >= 1)
            store.set_session_state(first, "stopped")  # its work in flight finishes, nothing new starts
            store.set_session_state(second, "processing")
            _wait_for(lambda: counts(second).get("processed", 0) == 3 and counts(first).get("submitted", 0) == 0)
            seen["first let go"] = counts(first)
            store.set_session_state(first, "processing")  # resumed: taken up again
            _wait_for(lambda: counts(first).get("processed", 0) == 12)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            signals.stop.set()
            connections.close_all()

    from emlive.db import queries

    with pytest.raises(ValueError, match="needs watch=True"):
        run_sessions([], settings, watch=False, follow=follow, cluster=Cluster(None, None, 1))
    operating = threading.Thread(target=operator)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as local:
        with Client(local) as client:
            operating.start()
            final = run_sessions(
                [], settings, watch=True, signals=signals, cluster=Cluster(client, None, 1), task=counted_result,
                follow=follow, follow_interval_s=0.2,
            )
    operating.join()
    assert errors == []
    let_go = seen["first let go"]
    assert (let_go["submitted"], let_go["failed"]) == (0, 0) and 1 <= let_go["processed"] < 12, let_go
    assert (final[first.pk]["processed"], final[second.pk]["processed"]) == (12, 3), final
    assert sum(final[first.pk].values()) + sum(final[second.pk].values()) == 15
    assert sorted(COMPUTED) == sorted(set(COMPUTED)) and len(COMPUTED) == 15  # each computed once
    # the loop leaves the states to whoever follows them: both are taken up by the next start
    assert {s.name: s.state for s in Session.objects.all()} == {"first": "processing", "second": "processing"}


def test_a_session_whose_folders_break_does_not_stop_the_others(tmp_path, caplog):
    """An unreadable raw folder or an unwritable output folder is logged and retried; the
    other sessions go on (a service runs many sessions in one loop)."""
    activate(sqlite_url(tmp_path / "emlive.sqlite3"))
    from emlive.db import store

    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    params = PipelineParams(acquisition=acq)
    good = store.get_or_create_session(tmp_path / "good" / "raw", tmp_path / "good" / "out", acq)
    no_out = store.get_or_create_session(tmp_path / "no_out" / "raw", tmp_path / "no_out" / "out", acq)
    no_raw = store.get_or_create_session(tmp_path / "no_raw" / "raw", tmp_path / "no_raw" / "out", acq)
    _movies(tmp_path / "good" / "raw", ["g0.mrc", "g1.mrc"])
    _movies(tmp_path / "no_out" / "raw", ["n0.mrc"])
    (tmp_path / "no_out" / "out").write_text("a file where the output folder should be")
    (tmp_path / "no_raw").mkdir()
    (tmp_path / "no_raw" / "raw").write_text("a file where the movies' folder should be")
    settings = load_settings(watch={"settle_s": 0, "poll_interval_s": 0.1}, cluster={"n_workers": 1})

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as local:
        with Client(local) as client:
            counts = run_sessions(
                [(good, params), (no_out, params), (no_raw, params)], settings, watch=False,
                cluster=Cluster(client, None, 1), task=timed_result,
            )
    assert counts[good.pk]["processed"] == 2 and counts[no_out.pk]["processed"] == 1
    assert sum(counts[no_raw.pk].values()) == 0
    assert (tmp_path / "good" / "out" / "exports" / "micrographs_ctf.star").is_file()
    messages = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("cannot write the exports" in m and "no_out" in m for m in messages), messages
    assert any("cannot scan" in m and "no_raw" in m for m in messages), messages


def test_a_start_removes_the_temporaries_killed_writers_left_and_keeps_a_live_ones(tmp_path, caplog):
    """A SIGKILL while a step writes leaves its temporary behind; the next start removes it (its
    process is gone) and a tool's work folder with it, but not a temporary being written now."""
    import subprocess
    import sys

    from emlive.io.atomic import temporary_prefix

    activate(sqlite_url(tmp_path / "emlive.sqlite3"))
    from emlive.db import store

    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    session = store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acq)
    _movies(tmp_path / "raw", ["m0.mrc"])
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_prefix = temporary_prefix("m0").replace(f"-{os.getpid()}@", f"-{int(gone.stdout)}@")
    left = tmp_path / "out" / "thumbnail" / f"{dead_prefix}0a1b2c3d.png"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half a picture")
    work = tmp_path / "out" / "ctf" / f"{dead_prefix.replace('.tmp-', '.tmp-ctffind-')}k3j_x9qz"
    work.mkdir(parents=True)
    (work / "m0.txt").write_text("partial")
    live = tmp_path / "out" / "motion" / f"{temporary_prefix('m1')}0a1b2c3d.mrc"  # this process: alive
    live.parent.mkdir(parents=True)
    live.write_bytes(b"being written")
    settings = load_settings(watch={"settle_s": 0, "poll_interval_s": 0.1}, cluster={"n_workers": 1})

    caplog.set_level("INFO", logger="emlive.runtime.loop")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as local:
        with Client(local) as client:
            counts = run_sessions(
                [(session, PipelineParams(acquisition=acq))], settings, watch=False,
                cluster=Cluster(client, None, 1), task=timed_result,
            )
    assert counts[session.pk]["processed"] == 1
    assert not left.exists() and not work.exists() and live.exists()
    removed = [r.getMessage() for r in caplog.records if "left half-written" in r.getMessage()]
    assert len(removed) == 2 and any(str(left) in m for m in removed), removed


def quick_result(spec, params) -> ExposureResult:
    """Takes 10 ms: exposures this short go to the workers in chunks. ``bad*`` movies are bad input."""
    if spec.name.startswith("bad"):
        raise ValueError(f"{spec.movie_path}: truncated")
    time.sleep(0.01)
    return well_formed_result(spec)


def test_short_exposures_go_in_chunks_and_each_ends_on_its_own(tmp_path):
    activate(sqlite_url(tmp_path / "emlive.sqlite3"))
    from emlive.db import store

    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    session = store.get_or_create_session(tmp_path / "raw", tmp_path / "out", acq)
    names = [f"m{i:03d}.mrc" for i in range(300)] + ["bad1.mrc", "bad2.mrc"]
    _movies(tmp_path / "raw", names)
    settings = load_settings(watch={"settle_s": 0, "poll_interval_s": 0.2}, cluster={"n_workers": 2})
    tasks: list[int] = []  # exposures per Dask task submitted
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as local:
        with Client(local) as client:
            submit_many = client.map

            def counting_map(func, *iterables, **kwargs):
                tasks.extend(len(specs) for specs in iterables[1])
                return submit_many(func, *iterables, **kwargs)

            client.map = counting_map  # type: ignore[method-assign]
            counts = run_sessions(
                [(session, PipelineParams(acquisition=acq))], settings, watch=False,
                cluster=Cluster(client, None, 1), task=quick_result,
            )
    assert counts[session.pk]["processed"] == 300 and counts[session.pk]["failed"] == 2
    assert sum(tasks) == 302  # every exposure submitted once: none lost, none twice
    assert max(tasks) > 1, tasks  # once the exposures' length was known, several went in one task
    failed = {e.path: e.fail_reason for e in session.exposures.filter(state="failed")}
    assert set(failed) == {"bad1.mrc", "bad2.mrc"} and "truncated" in failed["bad1.mrc"]
