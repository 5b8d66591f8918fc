"""Several sessions on one cluster: the controller shares the workers so none starves."""

from __future__ import annotations

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
from emlive.runtime.loop import run_sessions

from ..db.conftest import activate

pytestmark = pytest.mark.slow

COMPUTE_S = 0.4


def timed_result(spec, params) -> ExposureResult:
    """Stands in for processing: takes COMPUTE_S and returns a well-formed result."""
    time.sleep(COMPUTE_S)
    now = datetime.now(UTC)
    out = spec.out_dir / spec.name
    record = {"engine": "timed", "engine_version": "0", "started_at": now, "finished_at": now, "reused": False}
    return ExposureResult(
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
        steps=[StepRecord(step=step, **record) for step in ("motion", "ctf", "thumbnail")],
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
