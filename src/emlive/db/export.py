"""RELION 3.1+ STAR exports of a session, written from the database, atomically.

Two files, as RELION's own MotionCorr and CtfFind jobs write them (``# version 30001`` style:
a ``data_optics`` table and a ``data_micrographs`` table), one row per processed micrograph:

- ``corrected_micrographs.star``: rlnMicrographName, rlnMicrographNameNoDW,
  rlnMicrographMetadata, rlnOpticsGroup, rlnAccumMotionTotal/Early/Late (Å).
- ``micrographs_ctf.star``: the same columns plus rlnDefocusU, rlnDefocusV (Å),
  rlnCtfAstigmatism (|U − V|, Å), rlnDefocusAngle (°, ctffind's azimuth), rlnCtfFigureOfMerit
  (the fit's cross-correlation), rlnCtfMaxResolution (Å), rlnPhaseShift (°, RELION's unit)
  when any micrograph has a non-zero phase shift, and rlnCtfIceRingDensity (RELION 4's
  column for ice curation) when every micrograph has an ice-ring measure. A micrograph whose
  CTF estimation found no Thon rings (``fit_ok`` false) keeps its row, with the lowest fitted
  resolution (30 Å by default) as rlnCtfMaxResolution, so the resolution cut every RELION
  user applies drops it; the database keeps the flag itself (the curation threshold
  ``reject_no_fit`` leaves such micrographs out).

Conventions chosen here:

- ``rlnMicrographName`` is the dose-weighted sum (``<stem>_DW.mrc``), as RELION names the
  micrograph its later jobs use; ``rlnMicrographNameNoDW`` is the plain aligned sum (what CTF
  estimation ran on). ``rlnMicrographMetadata`` is the motion STAR file.
- Paths are absolute by default, so the files work from any RELION project folder; pass
  ``relative_to=PROJECT_DIR`` to write them relative to the folder RELION runs in.
- ``rlnCtfImage`` and ``rlnCtfPowerSpectrum`` are left out: RELION expects MRC images there
  and emlive's CTF diagnostic is a PNG.
- rlnCtfIceRingDensity holds emlive's ice-ring ratio (power in the 3.9–3.6 Å band over the
  bands beside it: ~1 for vitreous ice, higher for crystalline ice), a relative measure
  rather than RELION's absolute band power; it sorts and selects micrographs the same way.
- Only *accepted* micrographs are written: those that meet the session's curation thresholds
  (``Session.curation_json``, read afresh at each write; see :mod:`emlive.curation`). The
  defaults reject nothing. Rejected micrographs stay in the database and on the dashboard.
- Steps add their own tables (``Step.exports``): each step with results in the session writes
  them after these two, from the same accepted micrographs (picking: ``autopick.star``,
  ``particles.star`` and ``coordinates/``, see :mod:`emlive.pick.step`).
- One optics group per distinct micrograph pixel size (normally one, ``opticsGroup1``);
  rlnMicrographOriginalPixelSize is the movie's pixel size, rlnMicrographPixelSize the
  written micrograph's (they differ when motion correction bins).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import pandas as pd
from pydantic import BaseModel, ValidationError

from emlive.db.models import Exposure, Session, StepResult
from emlive.db.queries import accepted_exposures
from emlive.io.star import write_star_atomic
from emlive.pipeline.registry import registry
from emlive.pipeline.step import ExportRow

__all__ = ["CORRECTED_STAR", "CTF_STAR", "export_tables", "write_exports"]

CORRECTED_STAR = "corrected_micrographs.star"
CTF_STAR = "micrographs_ctf.star"

_OPTICS_COLUMNS = [
    "rlnOpticsGroupName",
    "rlnOpticsGroup",
    "rlnMicrographOriginalPixelSize",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnMicrographPixelSize",
]
_CORRECTED_COLUMNS = [
    "rlnMicrographName",
    "rlnMicrographNameNoDW",
    "rlnMicrographMetadata",
    "rlnOpticsGroup",
    "rlnAccumMotionTotal",
    "rlnAccumMotionEarly",
    "rlnAccumMotionLate",
]
_CTF_COLUMNS = [
    *_CORRECTED_COLUMNS,
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnCtfAstigmatism",
    "rlnDefocusAngle",
    "rlnCtfFigureOfMerit",
    "rlnCtfMaxResolution",
]


def _pixel_key(pixel_size_a: float) -> float:
    return round(float(pixel_size_a), 6)


def _optics(session: Session, rows: list[Exposure]) -> tuple[pd.DataFrame, dict[float, int]]:
    sizes = sorted({_pixel_key(e.motion.pixel_size_a) for e in rows}) or [_pixel_key(session.pixel_size_a)]
    groups = {size: i for i, size in enumerate(sizes, start=1)}
    table = pd.DataFrame(
        {
            "rlnOpticsGroupName": [f"opticsGroup{i}" for i in groups.values()],
            "rlnOpticsGroup": list(groups.values()),
            "rlnMicrographOriginalPixelSize": [float(session.pixel_size_a)] * len(groups),
            "rlnVoltage": [float(session.voltage_kv)] * len(groups),
            "rlnSphericalAberration": [float(session.cs_mm)] * len(groups),
            "rlnAmplitudeContrast": [float(session.amplitude_contrast)] * len(groups),
            "rlnMicrographPixelSize": list(groups),
        },
        columns=_OPTICS_COLUMNS,
    )
    return table, groups


def export_tables(
    session: Session | int,
    *,
    relative_to: str | os.PathLike[str] | None = None,
) -> dict[str, dict[str, pd.DataFrame]]:
    """The STAR blocks of each export file, ``{file name: {"optics": …, "micrographs": …}}``.

    Built from one read of the accepted exposures (processed, meeting the session's stored
    curation thresholds), so both files describe the same set.
    """
    if not isinstance(session, Session):
        session = Session.objects.get(pk=session)
    rows = list(accepted_exposures(session))
    optics, groups = _optics(session, rows)
    base = Path(relative_to).absolute() if relative_to is not None else None

    def star_path(path: str) -> str:
        return os.path.relpath(path, base) if base is not None else path

    corrected: dict[str, list[object]] = {column: [] for column in _CORRECTED_COLUMNS}
    ctf: dict[str, list[object]] = {column: [] for column in _CTF_COLUMNS}
    phase_shift_deg: list[float] = []
    ice_ring: list[float | None] = []
    for e in rows:
        m, c = e.motion, e.ctf
        shared = {
            "rlnMicrographName": star_path(m.dose_weighted_path),
            "rlnMicrographNameNoDW": star_path(m.micrograph_path),
            "rlnMicrographMetadata": star_path(m.star_path),
            "rlnOpticsGroup": groups[_pixel_key(m.pixel_size_a)],
            "rlnAccumMotionTotal": m.total_drift_a,
            "rlnAccumMotionEarly": m.early_drift_a,
            "rlnAccumMotionLate": m.late_drift_a,
        }
        for column, value in shared.items():
            corrected[column].append(value)
            ctf[column].append(value)
        ctf["rlnDefocusU"].append(c.defocus_u_a)
        ctf["rlnDefocusV"].append(c.defocus_v_a)
        ctf["rlnCtfAstigmatism"].append(c.astigmatism_a)
        ctf["rlnDefocusAngle"].append(c.azimuth_deg)
        ctf["rlnCtfFigureOfMerit"].append(c.cross_correlation)
        ctf["rlnCtfMaxResolution"].append(c.fit_resolution_a)
        phase_shift_deg.append(math.degrees(c.phase_shift_rad))
        ice_ring.append(c.ice_ring_ratio)
    if any(value != 0.0 for value in phase_shift_deg):
        ctf["rlnPhaseShift"] = list(phase_shift_deg)
    if ice_ring and all(value is not None for value in ice_ring):
        ctf["rlnCtfIceRingDensity"] = list(ice_ring)
    return {
        CTF_STAR: {"optics": optics.copy(), "micrographs": _frame(ctf)},
        CORRECTED_STAR: {"optics": optics, "micrographs": _frame(corrected)},
    }


def _frame(columns: dict[str, list[object]]) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    if "rlnOpticsGroup" in frame and len(frame):
        frame["rlnOpticsGroup"] = frame["rlnOpticsGroup"].astype(int)
    return frame


def step_export_rows(session: Session | int, steps: Iterable[str]) -> list[ExportRow]:
    """The accepted micrographs with the stored results of ``steps`` (and motion's), for the
    steps' exporters; results that no longer validate against their model are left out."""
    wanted = {*steps, "motion"}
    accepted = accepted_exposures(session).values_list("id", "path", "motion__dose_weighted_path")
    rows: dict[int, tuple[str, str]] = {pk: (path, dw) for pk, path, dw in accepted.iterator(chunk_size=5000)}
    results: dict[int, dict[str, BaseModel]] = {pk: {} for pk in rows}
    installed = registry().steps
    stored = StepResult.objects.filter(
        exposure__in=accepted_exposures(session).values("id"), step__in=wanted, state=StepResult.State.DONE
    ).values_list("exposure_id", "step", "result")
    for exposure_id, step, result in stored.iterator(chunk_size=5000):
        if exposure_id in results and step in installed:
            try:
                results[exposure_id][step] = installed[step].result.model_validate(result)
            except ValidationError:
                continue
    return [
        ExportRow(name=str(PurePosixPath(path).with_suffix("")), micrograph_name=dw, results=results[pk])
        for pk, (path, dw) in sorted(rows.items(), key=lambda item: item[1][0])
    ]


def write_exports(
    session: Session | int,
    exports_dir: str | os.PathLike[str],
    *,
    relative_to: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Write ``micrographs_ctf.star`` and ``corrected_micrographs.star`` into ``exports_dir``,
    then the tables every step with results in the session contributes (its exporters, e.g.
    picking's coordinate files).

    Only micrographs the session's curation thresholds accept are written (see the module
    doc). Each file is replaced atomically (a reader sees the old or the new file, never a part);
    the folder is created if missing. A session with nothing processed yet gets both STAR files
    with the optics table and an empty micrographs table. Returns the paths written.
    """
    folder = Path(exports_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, blocks in export_tables(session, relative_to=relative_to).items():
        path = folder / name
        write_star_atomic(path, blocks)
        written.append(path)
    if not isinstance(session, Session):
        session = Session.objects.get(pk=session)
    exporting = [
        step for step in registry().steps.values()
        if step.exports and StepResult.objects.filter(exposure__session=session, step=step.name).exists()
    ]
    if exporting:
        rows = step_export_rows(session, [step.name for step in exporting])
        for step in exporting:
            for exporter in step.exports:
                written += exporter(rows, folder)
    return written
