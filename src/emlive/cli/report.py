"""What the CLI shows: a progress bar while a session runs, and per-exposure tables after."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from emlive.config import Settings
from emlive.pipeline.exposure import PipelineParams
from emlive.runtime.loop import StopSignals, run_session
from emlive.scripting import prepare_session
from emlive.synth.session import SessionTruth

if TYPE_CHECKING:  # Django models can be imported only once the database is set up
    from emlive.db.models import Exposure, Session
    from emlive.remote.session import RemoteRun

# The demo's own acceptance: what "matches the ground truth" means.
MAX_SHIFT_RMSD_PX = 0.5
MAX_DEFOCUS_ERROR = 0.02


def run_with_progress(
    raw_dir: Path, out_dir: Path, params: PipelineParams, settings: Settings, *, watch: bool, signals: StopSignals,
    remote: RemoteRun | None = None,
) -> Session:
    """Open the session's database, run it with a progress bar, return the session. ``remote``:
    its movies or outputs are URLs (``raw_dir`` and ``out_dir`` are then its local folders)."""
    session = prepare_session(raw_dir, out_dir, params, settings)  # as emlive.run does
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("watching" if watch else "processing", total=None, detail="")

        def on_change(counts: dict[str, int]) -> None:
            done = counts.get("processed", 0) + counts.get("failed", 0)
            detail = f"{counts.get('failed', 0)} failed" if counts.get("failed") else ""
            progress.update(task, total=sum(counts.values()), completed=done, detail=detail)
            if remote is not None:
                remote.mirror_exports()

        if remote is None:
            run_session(session, params, settings, watch=watch, signals=signals, on_change=on_change)
        else:
            run_session(session, params, settings, watch=watch, signals=signals, on_change=on_change,
                        task=remote.task, watcher_of=remote.watcher_of if remote.raw is not None else None)
            remote.mirror_exports(force=True)
    return session


def _exposures(session: Session) -> list[Exposure]:
    return list(session.exposures.select_related("motion", "ctf").order_by("path"))


def print_exposures(console: Console, session: Session) -> None:
    """One row per exposure: drift, defocus, fit resolution, the metrics of the other steps that
    ran (e.g. picking's particles), or why it (or one of its steps) failed."""
    from emlive.db.models import StepResult
    from emlive.pipeline.registry import registry

    exposures = _exposures(session)
    metrics: dict[int, dict[str, object]] = {}
    failed: dict[int, list[str]] = {}
    rows = StepResult.objects.filter(exposure__session=session).exclude(step__in=("motion", "ctf"))
    for exposure_id, step, state, values, error in rows.values_list("exposure_id", "step", "state", "metrics", "error"):
        if state == StepResult.State.FAILED:
            failed.setdefault(exposure_id, []).append(f"{step} failed: {error}")
        metrics.setdefault(exposure_id, {}).update((f"{step}.{name}", value) for name, value in values.items())
    installed = registry().steps
    keys = sorted({key for values in metrics.values() for key in values})
    labels = []
    for key in keys:
        step, name = key.split(".", 1)
        metric = installed[step].metrics.get(name) if step in installed else None
        labels.append(metric.label if metric is not None and metric.label else key)
    columns = ["frames", "drift Å", "defocus U Å", "defocus V Å", "azimuth °", "fit Å", "CC", *labels]
    table = Table(title=f"{session.raw_dir}", title_justify="left")
    table.add_column("exposure", min_width=max((len(e.path) for e in exposures), default=8))
    table.add_column("state", min_width=9)
    for name in columns:
        table.add_column(name, justify="right")
    table.add_column("reason", max_width=48, overflow="ellipsis", no_wrap=True)
    for exposure in exposures:
        if exposure.state != "processed":
            reason = exposure.fail_reason.replace(str(exposure.movie_path), exposure.path)
            table.add_row(exposure.path, exposure.state, *[""] * len(columns), reason)
            continue
        motion, ctf = exposure.motion, exposure.ctf
        values = metrics.get(exposure.pk, {})
        extra = ["" if values.get(key) is None else f"{values[key]:.4g}" for key in keys]
        table.add_row(
            exposure.path, exposure.state, str(motion.n_frames), f"{motion.total_drift_a:.1f}",
            f"{ctf.defocus_u_a:.0f}", f"{ctf.defocus_v_a:.0f}", f"{ctf.azimuth_deg:.1f}",
            f"{ctf.fit_resolution_a:.1f}", f"{ctf.cross_correlation:.3f}", *extra, "; ".join(failed.get(exposure.pk, [])),
        )
    console.print(table)
    console.print(f"exports: {Path(session.out_dir) / 'exports'}", highlight=False)


def compare_with_truth(console: Console, session: Session, truth: SessionTruth) -> bool:
    """The demo's table: measured against ground truth; True if every movie is within tolerance."""
    table = Table(
        title=f"demo session {session.raw_dir}: measured vs ground truth "
        f"(pass: shift RMSD < {MAX_SHIFT_RMSD_PX} px, mean defocus within {MAX_DEFOCUS_ERROR:.0%})",
        title_justify="left",
    )
    for name in (
        "exposure", "drift Å", "true drift Å", "shift RMSD px", "defocus Å", "true defocus Å",
        "error %", "astig Å", "true astig Å", "fit Å", "ok",
    ):
        table.add_column(name, justify="left" if name == "exposure" else "right")
    by_path = {exposure.path: exposure for exposure in _exposures(session)}
    all_ok = True
    for movie in truth.movies:
        exposure = by_path.get(movie.name)
        if exposure is None or exposure.state != "processed":
            reason = exposure.fail_reason if exposure else "not found"
            table.add_row(movie.name, reason[:60], *[""] * 8, "[red]no")
            all_ok = False
            continue
        motion, ctf = exposure.motion, exposure.ctf
        measured = -np.asarray(motion.shifts_px, dtype=float)
        rmsd_px = float(np.sqrt(np.mean(np.sum((measured - movie.trajectory) ** 2, axis=1))))
        true_drift_a = movie.total_drift_px * truth.pixel_size_a
        mean, true_mean = (ctf.defocus_u_a + ctf.defocus_v_a) / 2, (movie.defocus_u_a + movie.defocus_v_a) / 2
        error = abs(mean - true_mean) / true_mean
        ok = rmsd_px < MAX_SHIFT_RMSD_PX and error < MAX_DEFOCUS_ERROR
        all_ok &= ok
        table.add_row(
            movie.name, f"{motion.total_drift_a:.1f}", f"{true_drift_a:.1f}", f"{rmsd_px:.2f}",
            f"{mean:.0f}", f"{true_mean:.0f}", f"{100 * error:.2f}", f"{ctf.astigmatism_a:.0f}",
            f"{abs(movie.defocus_u_a - movie.defocus_v_a):.0f}", f"{ctf.fit_resolution_a:.1f}",
            "[green]yes" if ok else "[red]no",
        )
    console.print(table)
    console.print(f"exports: {Path(session.out_dir) / 'exports'}", highlight=False)
    console.print("[green]all exposures match the ground truth" if all_ok else "[red]some exposures do not match")
    return all_ok
