"""Appion's database (the project's ``ap<project>``) and Leginon's image rows as a sink:
results written as classic Appion writes them, so Appion's web viewer shows them.

Motion correction (``makeDDAlignMotionCor2_UCSF.py``): a run is an ``ApPathData`` row (the run
folder), an ``ApDDStackParamsData`` and an ``ApDDStackRunData`` row; per image, the aligned
sums are copied into the session's image path as ``<filename>-<label>.mrc`` (and
``-<label>-DW.mrc`` with dose weighting) and registered in ``leginondb`` as new
``AcquisitionImageData`` rows under the ``<preset>-<label>`` (``-DW``) presets with an aligned
``CameraEMData`` row, as Leginon's viewer expects; then ``ApDDFrameTrajectoryData``,
``ApDDAlignStatsData`` and, last, one ``ApDDAlignImagePairData`` per result image: an image is
done when all its pair rows exist. The shifts are also written where the viewer's drift plot
reads them, ``<rundir>/<frames name>_Log.txt`` in motioncorr's log format. CTF (``ctffind4.py``): ``ApCtfFind4ParamsData`` and
``ApAceRunData`` per run, one ``ApCtfData`` per image (written last, its done mark). The job
row ``ApAppionJobData`` goes to ``R`` when a run starts and ``D`` when it ends.

Appion's databases are often MyISAM: no transactions. So every row is written by
check-before-insert on the values that identify it (:func:`get_or_insert`) and in an order
where each row only refers to rows written before it: a run killed between any two writes
leaves rows that the next run (``--continue``) finds and reuses, and writes only the missing
ones — nothing is duplicated, nothing lost. Files are written (atomically) before the rows
that name them. A second concurrent writer is kept out by the run folder's lock, not here.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pymysql

from emlive.ctf.types import CtfResult
from emlive.io.atomic import atomic_path, atomic_write_text
from emlive.motion.types import MotionResult
from emlive.sources.leginon import LeginonImage, LeginonSession

Connection = pymysql.connections.Connection


def _one(conn: Connection, sql: str, args: Sequence[Any]) -> dict[str, Any] | None:
    with conn.cursor(pymysql.cursors.DictCursor) as cursor:
        cursor.execute(sql, list(args))
        return cursor.fetchone()


def find(conn: Connection, table: str, key: Mapping[str, Any]) -> int | None:
    """The oldest row of ``table`` whose ``key`` columns equal the values (NULL-safe), or None."""
    where = " AND ".join(f"`{column}` <=> %s" for column in key) or "1"
    row = _one(conn, f"SELECT DEF_id FROM `{table}` WHERE {where} ORDER BY DEF_id LIMIT 1", list(key.values()))
    return None if row is None else int(row["DEF_id"])


def get_or_insert(conn: Connection, table: str, key: Mapping[str, Any], values: Mapping[str, Any] | None = None) -> int:
    """The id of the row identified by ``key``, inserted (with ``values`` too) if missing.

    The insert is one statement: a crash leaves either no row or the whole row, which the next
    call finds."""
    if (found := find(conn, table, key)) is not None:
        return found
    row = {**key, **(values or {})}
    columns = ", ".join(f"`{column}`" for column in row)
    with conn.cursor() as cursor:
        cursor.execute(f"INSERT INTO `{table}` ({columns}) VALUES ({', '.join(['%s'] * len(row))})", list(row.values()))
        return int(cursor.lastrowid)


def _update(conn: Connection, table: str, row_id: int, values: Mapping[str, Any]) -> None:
    sets = ", ".join(f"`{column}` = %s" for column in values)
    with conn.cursor() as cursor:
        cursor.execute(f"UPDATE `{table}` SET {sets} WHERE DEF_id = %s", [*values.values(), row_id])


# --- the job row --------------------------------------------------------------------------


def start_job(
    appion: Connection, *, job_id: int | None, path_id: int, runname: str, jobtype: str, session: LeginonSession,
    user: str, cluster: str,
) -> int:
    """The run's ``ApAppionJobData`` row set running (``R``): the web UI's (``--jobid``), else
    the run folder's for this job type, created if missing."""
    if job_id:
        if find(appion, "ApAppionJobData", {"DEF_id": job_id}) is None:
            raise ValueError(f"--jobid {job_id}: no such ApAppionJobData row in {appion.db.decode()}")
    else:
        job_id = get_or_insert(
            appion, "ApAppionJobData",
            {"REF|ApPathData|clusterpath": path_id, "jobtype": jobtype,
             "REF|leginondata|SessionData|session": session.id},
            {"REF|ApPathData|path": path_id, "name": f"{runname}.appionsub.job", "user": user, "cluster": cluster},
        )
    _update(appion, "ApAppionJobData", job_id, {"status": "R"})
    return job_id


def finish_job(appion: Connection, job_id: int) -> None:
    """The job is done (``D``)."""
    _update(appion, "ApAppionJobData", job_id, {"status": "D"})


def run_path(appion: Connection, rundir: Path) -> int:
    return get_or_insert(appion, "ApPathData", {"path": str(Path(rundir).resolve())})


# --- motion correction --------------------------------------------------------------------


@dataclass(frozen=True)
class MotionRun:
    """A motion-correction run's rows and what shapes its per-image rows."""

    session: LeginonSession
    preset: str
    path_id: int
    run_id: int
    align_label: str = "a"
    doseweight: bool = False
    rundir: Path | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        """The aligned images' name suffixes: ``-a``, and ``-a-DW`` with dose weighting."""
        label = f"-{self.align_label}"
        return (label, f"{label}-DW") if self.doseweight else (label,)


def start_motion_run(
    appion: Connection, *, session: LeginonSession, preset: str, rundir: Path, runname: str, binning: int,
    method: str = "emlive", align: bool = True, align_label: str = "a", doseweight: bool = False,
) -> MotionRun:
    """The run's ``ApPathData``, ``ApDDStackParamsData`` and ``ApDDStackRunData`` rows (found or written)."""
    path_id = run_path(appion, rundir)
    params_id = get_or_insert(appion, "ApDDStackParamsData", {
        "preset": preset, "align": int(align), "bin": binning, "method": method,
        "REF|ApDDStackRunData|unaligned_ddstackrun": None, "REF|ApStackData|stack": None,
    })
    run_id = get_or_insert(appion, "ApDDStackRunData", {
        "runname": runname, "REF|ApDDStackParamsData|params": params_id,
        "REF|leginondata|SessionData|session": session.id, "REF|ApPathData|path": path_id,
    })
    return MotionRun(session, preset, path_id, run_id, align_label, doseweight, Path(rundir).resolve())


def done_motion_images(appion: Connection, run: MotionRun) -> set[int]:
    """Source images with every result image's pair row in this run (the done mark)."""
    with appion.cursor() as cursor:
        cursor.execute(
            "SELECT `REF|leginondata|AcquisitionImageData|source`, COUNT(DISTINCT "
            "`REF|leginondata|AcquisitionImageData|result`) FROM ApDDAlignImagePairData "
            "WHERE `REF|ApDDStackRunData|ddstackrun` = %s GROUP BY `REF|leginondata|AcquisitionImageData|source`",
            [run.run_id],
        )
        return {int(source) for source, results in cursor.fetchall() if results >= len(run.labels)}


def frame_shift_stats(shifts_px: Sequence[tuple[float, float]]) -> tuple[list[tuple[float, int]], float]:
    """The three largest frame-to-frame shifts (px, with the index of the later frame) and the
    median one, as ``ApDDAlignStatsData`` keeps them (pure)."""
    positions = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    steps = np.hypot(*np.diff(positions, axis=0).T) if len(positions) > 1 else np.zeros(1)
    order = np.argsort(-steps, kind="stable")[:3]
    return [(float(steps[i]), int(i) + 1) for i in order], float(np.median(steps))


def motioncorr_log(shifts_px: Sequence[tuple[float, float]], *, binning: float = 1.0, first_frame: int = 0) -> str:
    """The frame shifts as the old ``dosefgpu_driftcorr`` (motioncorr) log that Appion's viewer
    reads for its drift plot: relative to the middle frame, with the opposite sign, in pixels of
    the aligned image (pure; the conversion classic Appion applies to MotionCor2's shifts)."""
    n = len(shifts_px)
    mid_x, mid_y = shifts_px[n // 2]
    lines = ["Sum Frame #%.3d - #%.3d (Reference Frame #%.3d):\n" % (0, n, n // 2)]
    for index, (x, y) in enumerate(shifts_px):
        lines.append("......Add Frame #%.3d with xy shift: %.5f %.5f\n"
                     % (index + first_frame, -(x - mid_x) / binning, -(y - mid_y) / binning))
    return "".join(lines)


def motioncorr_log_path(rundir: Path, frames_path: Path) -> Path:
    """Where classic Appion puts it: the run folder, the frames' name less its last suffix, ``_Log.txt``."""
    return rundir / f"{frames_path.with_suffix('').name}_Log.txt"


def _copy_atomic(source: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)


def _row(conn: Connection, table: str, row_id: int) -> dict[str, Any]:
    row = _one(conn, f"SELECT * FROM `{table}` WHERE DEF_id = %s", [row_id])
    if row is None:
        raise ValueError(f"no {table} row {row_id} in {conn.db.decode()}")
    return row


def _copy_of(row: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A row's values for a new row: without its id and timestamp, with ``changes``."""
    return {k: v for k, v in row.items() if k not in ("DEF_id", "DEF_timestamp")} | changes


def _aligned_shape(result: MotionResult) -> tuple[int, int]:
    """(x, y) size of the aligned sum in pixels, from its header."""
    import mrcfile

    with mrcfile.open(result.micrograph_path, header_only=True, permissive=True) as mrc:
        return int(mrc.header.nx), int(mrc.header.ny)


def _aligned_names(leginon: Connection, appion: Connection, run: MotionRun, image: LeginonImage) -> list[str]:
    """The aligned images' file names (no suffix): ``<filename>-a`` (``-a-DW``), or with
    ``_v01``, ``_v02``… when another run's results already have the name (classic Appion's
    versioned names), so a second run never overwrites the first's. A name whose image row
    is paired with no run (left by a run killed before its pair rows) is taken over."""
    for version in range(100):
        suffix = f"_v{version:02d}" if version else ""
        names = [f"{image.filename}{label}{suffix}" for label in run.labels]
        owners: set[int] = set()
        for name in names:
            row = find(leginon, "AcquisitionImageData", {"REF|SessionData|session": run.session.id, "filename": name})
            if row is None:
                continue
            with appion.cursor() as cursor:
                cursor.execute("SELECT DISTINCT `REF|ApDDStackRunData|ddstackrun` FROM ApDDAlignImagePairData "
                               "WHERE `REF|leginondata|AcquisitionImageData|result` = %s", [row])
                owners |= {int(owner) for (owner,) in cursor.fetchall()}
        if owners <= {run.run_id}:
            return names
    raise ValueError(f"{image.filename}: 100 aligned versions exist already in {run.session.image_path}")


def store_motion(
    leginon: Connection, appion: Connection, run: MotionRun, image: LeginonImage, result: MotionResult,
) -> list[int]:
    """Write one image's results (files, then rows in dependency order, the pair rows last);
    returns the aligned images' ids. Safe to call again after a crash at any point."""
    source = _row(leginon, "AcquisitionImageData", image.id)
    names = _aligned_names(leginon, appion, run, image)
    files = {names[0]: result.micrograph_path}
    if run.doseweight:
        files[names[1]] = result.dose_weighted_path
    for name, path in files.items():
        _copy_atomic(path, run.session.image_path / f"{name}.mrc")
    if run.rundir is not None and image.frames_path is not None:
        binning = result.pixel_size_a / image.pixel_size_a
        atomic_write_text(motioncorr_log_path(run.rundir, image.frames_path),
                          motioncorr_log(result.shifts_px, binning=binning))

    nx, ny = _aligned_shape(result)
    binning = max(1, round(result.pixel_size_a / image.pixel_size_a * image.binning))
    camera = _row(leginon, "CameraEMData", int(source["REF|CameraEMData|camera"]))
    camera_key = _copy_of(camera, **{
        "SUBD|dimension|x": nx, "SUBD|dimension|y": ny, "SUBD|binning|x": binning, "SUBD|binning|y": binning,
        "SUBD|offset|x": 0, "SUBD|offset|y": 0, "align frames": 1,
    })
    identity = ("REF|SessionData|session", "REF|InstrumentData|ccdcamera", "system time", "frames name",
                "align frames", "SUBD|dimension|x", "SUBD|dimension|y", "SUBD|binning|x")
    aligned_camera = get_or_insert(
        leginon, "CameraEMData", {k: camera_key[k] for k in identity},
        {k: v for k, v in camera_key.items() if k not in identity},
    )
    preset = _row(leginon, "PresetData", int(source["REF|PresetData|preset"]))
    aligned: list[int] = []
    for label, filename in zip(run.labels, names, strict=True):
        preset_values = _copy_of(preset, **{
            "name": f"{preset['name']}{label}", "SUBD|dimension|x": nx, "SUBD|dimension|y": ny,
            "SUBD|binning|x": binning, "SUBD|binning|y": binning, "SUBD|offset|x": 0, "SUBD|offset|y": 0,
        })
        identity = ("REF|SessionData|session", "name", "magnification", "dose", "SUBD|dimension|x",
                    "SUBD|dimension|y", "SUBD|binning|x")
        preset_id = get_or_insert(leginon, "PresetData", {k: preset_values[k] for k in identity},
                                  {k: v for k, v in preset_values.items() if k not in identity})
        image_values = _copy_of(source, **{
            "filename": filename, "MRC|image": f"{filename}.mrc", "REF|PresetData|preset": preset_id,
            "REF|CameraEMData|camera": aligned_camera,
        })
        aligned.append(get_or_insert(
            leginon, "AcquisitionImageData",
            {"REF|SessionData|session": run.session.id, "filename": filename},
            {k: v for k, v in image_values.items() if k not in ("REF|SessionData|session", "filename")},
        ))

    result_id = aligned[0]
    trajectory = np.asarray(result.shifts_px, dtype=np.float64).reshape(-1, 2)
    trajectory_id = get_or_insert(
        appion, "ApDDFrameTrajectoryData",
        {"REF|leginondata|AcquisitionImageData|image": result_id, "REF|ApDDStackRunData|ddstackrun": run.run_id},
        {"SEQ|pos_x": repr([round(float(x), 4) for x in trajectory[:, 0]]),
         "SEQ|pos_y": repr([round(float(y), 4) for y in trajectory[:, 1]]),
         "last_x": float(trajectory[-1, 0]), "last_y": float(trajectory[-1, 1]),
         "number_of_positions": len(trajectory), "reference_index": 0},
    )
    top, median = frame_shift_stats(result.shifts_px)
    top += [(0.0, 0)] * (3 - len(top))
    get_or_insert(
        appion, "ApDDAlignStatsData",
        {"REF|leginondata|AcquisitionImageData|image": result_id, "REF|ApDDStackRunData|ddstackrun": run.run_id},
        {"REF|ApDDFrameTrajectoryData|trajectory": trajectory_id, "apix": image.pixel_size_a,
         "median_shift_value": median,
         **{f"top_shift{i + 1}_value": value for i, (value, _) in enumerate(top)},
         **{f"top_shift{i + 1}_index": index for i, (_, index) in enumerate(top)}},
    )
    for aligned_id in reversed(aligned):  # the plain aligned image's pair last: classic Appion's done mark
        get_or_insert(appion, "ApDDAlignImagePairData", {
            "REF|leginondata|AcquisitionImageData|source": image.id,
            "REF|leginondata|AcquisitionImageData|result": aligned_id,
            "REF|ApDDStackRunData|ddstackrun": run.run_id,
        })
    return aligned


# --- CTF ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtfFind4Params:
    """What ``ApCtfFind4ParamsData`` records of a run (classic ctffind4.py's flags)."""

    ampcontrast: float = 0.07
    fieldsize: int = 1024
    cs_mm: float = 2.7
    resmin_a: float = 50.0
    defstep_a: float = 1000.0
    shift_phase: bool = False
    min_phase_shift_rad: float | None = None
    max_phase_shift_rad: float | None = None
    phase_search_step_rad: float | None = None
    local_refine: bool = False
    bestdb: bool = False


@dataclass(frozen=True)
class CtfRun:
    session: LeginonSession
    path_id: int
    run_id: int


def start_ctf_run(
    appion: Connection, *, session: LeginonSession, rundir: Path, runname: str, params: CtfFind4Params,
) -> CtfRun:
    """The run's ``ApPathData``, ``ApCtfFind4ParamsData`` and ``ApAceRunData`` rows (found or written)."""
    path_id = run_path(appion, rundir)
    params_id = get_or_insert(appion, "ApCtfFind4ParamsData", {
        "bestdb": int(params.bestdb), "ampcontrast": params.ampcontrast, "fieldsize": params.fieldsize,
        "cs": params.cs_mm, "resmin": params.resmin_a, "defstep": params.defstep_a,
        "shift_phase": int(params.shift_phase), "min_phase_shift": params.min_phase_shift_rad,
        "max_phase_shift": params.max_phase_shift_rad, "phase_search_step": params.phase_search_step_rad,
        "local_refine": int(params.local_refine),
    })
    run_id = get_or_insert(appion, "ApAceRunData", {
        "name": runname, "REF|leginondata|SessionData|session": session.id, "REF|ApPathData|path": path_id,
        "REF|ApCtfFind4ParamsData|ctffind4_params": params_id,
    })
    return CtfRun(session, path_id, run_id)


def done_ctf_images(appion: Connection, run: CtfRun) -> set[int]:
    with appion.cursor() as cursor:
        cursor.execute("SELECT DISTINCT `REF|leginondata|AcquisitionImageData|image` FROM ApCtfData "
                       "WHERE `REF|ApAceRunData|acerun` = %s", [run.run_id])
        return {int(row[0]) for row in cursor.fetchall()}


def store_ctf(appion: Connection, run: CtfRun, image: LeginonImage, result: CtfResult, *, amplitude_contrast: float,
              cs_mm: float, defocus_init_a: float | None = None) -> int:
    """One image's ``ApCtfData`` row as classic ctffind4.py inserts it (found if written before):
    defocus in metres, ``defocus1`` ctffind's second (smaller) defocus and ``defocus2`` its first,
    the astigmatism angle ctffind's plus 90° (Appion's convention, its bug #4047), the
    diagnostic files by name (they are in the run folder's ``opimages/``)."""
    return get_or_insert(
        appion, "ApCtfData",
        {"REF|ApAceRunData|acerun": run.run_id, "REF|leginondata|AcquisitionImageData|image": image.id},
        {"defocus1": result.defocus_v_a * 1e-10, "defocus2": result.defocus_u_a * 1e-10,
         "defocusinit": None if defocus_init_a is None else defocus_init_a * 1e-10,
         "amplitude_contrast": amplitude_contrast, "angle_astigmatism": result.azimuth_deg + 90.0,
         "cross_correlation": result.cross_correlation, "confidence": result.cross_correlation,
         "confidence_d": round(math.sqrt(abs(result.cross_correlation)), 5),
         "ctffind4_resolution": result.fit_resolution_a, "cs": cs_mm, "extra_phase_shift": result.phase_shift_rad,
         "graph1": result.diagnostic_png_path.name, "graph2": result.avrot_path.name,
         "ctfvalues_file": result.output_txt_path.name},
    )
