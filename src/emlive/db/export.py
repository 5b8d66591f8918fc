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
- cryoSPARC's own dataset files of the same micrographs (and picks) are written beside them, in
  ``cryosparc/`` (:mod:`emlive.sinks.cryosparc`).
- One optics group per distinct micrograph pixel size (normally one, ``opticsGroup1``);
  rlnMicrographOriginalPixelSize is the movie's pixel size, rlnMicrographPixelSize the
  written micrograph's (they differ when motion correction bins).

All the files are replaced together: a reader never finds one new and one old.
``OUT/exports`` is a symbolic link to a generation folder beside it, ``OUT/.exports-<n>``.
A rewrite builds generation n+1 in a temporary folder (the files of generation n carried over
by hard links, so an exporter's unchanged files are not copied again: exporters replace files,
they never write into them), renames it ``.exports-<n+1>`` and swaps the link with one
``rename`` (atomic on POSIX file systems, NFS included). So at every instant ``exports/`` is one
complete generation, and:

- a reader that resolves the folder once (``os.path.realpath(OUT/exports)``, or
  :func:`export_generation`) and reads its files from there reads one matched set; the
  generation before the current one is kept (older ones are removed), so such a reader has a
  whole export interval to open its files;
- a reader that opens ``exports/a`` and later ``exports/b`` sees each file complete, and the
  same generation unless a rewrite fell between its two opens (no file layout can prevent that
  without the reader's help);
- absolute paths that exporters write into their tables (picking's ``autopick.star`` lists its
  coordinate files) name the files through ``exports/``, never through the generation folder,
  so they stay valid after later rewrites;
- a rewrite that fails leaves the published generation as it was. Writers (the controller,
  the API, the dashboard) take turns through a lock file, ``OUT/.exports.lock``.

An ``exports`` folder written by an older version is moved aside to the first generation
(there ``exports/`` is missing for the instant between two renames, once).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import pandas as pd
from pydantic import BaseModel, ValidationError

from emlive.db.models import Exposure, Session, StepResult
from emlive.db.queries import accepted_exposures
from emlive.io.atomic import atomic_write_bytes, is_temporary_name, sync_folder, temporary_prefix
from emlive.io.star import write_star_atomic
from emlive.pipeline.registry import registry
from emlive.pipeline.step import ExportRow

__all__ = ["CORRECTED_STAR", "CTF_STAR", "export_generation", "export_tables", "write_exports"]

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
    rows = list(accepted_exposures(session).filter(tilt__isnull=True))  # tilts: in the RELION 5 tomo exports
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
    single = accepted_exposures(session).filter(tilt__isnull=True)  # tilts: in the RELION 5 tomo exports
    accepted = single.values_list("id", "path", "motion__dose_weighted_path")
    rows: dict[int, tuple[str, str]] = {pk: (path, dw) for pk, path, dw in accepted.iterator(chunk_size=5000)}
    results: dict[int, dict[str, BaseModel]] = {pk: {} for pk in rows}
    installed = registry().steps
    stored = StepResult.objects.filter(
        exposure__in=single.values("id"), step__in=wanted, state=StepResult.State.DONE
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
    doc). All files are replaced together (a new generation of the folder, see the module doc):
    a reader sees the old set or the new one, never a part; a failed rewrite leaves the old set.
    The folder is created if missing. A session with nothing processed yet gets both STAR files
    with the optics table and an empty micrographs table. Returns the paths written, under
    ``exports_dir``.
    """
    published = Path(exports_dir).absolute()
    parent = published.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _writers_lock(parent / f".{published.name}.lock"):
        previous = _current_generation(published)
        staging = parent / f"{temporary_prefix(published.name)}{secrets.token_hex(4)}"
        staging.mkdir()  # (not mkdtemp: readers other than its owner must be able to enter it)
        try:
            if previous is not None:
                shutil.copytree(previous, staging, symlinks=True, dirs_exist_ok=True, copy_function=_link_or_copy,
                                ignore=lambda _folder, names: [n for n in names if is_temporary_name(n)])
            written = _write_exports_into(session, staging, relative_to=relative_to)
            _name_files_by_published_path(written, staging, published)
            generation = parent / f".{published.name}-{_next_generation(parent, published.name)}"
            os.rename(staging, generation)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _publish(generation, published)
        for old in _generations(parent, published.name):
            if old not in (generation, previous):
                shutil.rmtree(old, ignore_errors=True)
    return [Path(exports_dir) / path.relative_to(staging) for path in written]


def export_generation(exports_dir: str | os.PathLike[str]) -> Path:
    """The folder ``exports_dir`` stands for now: read a matched set of exports from there (it
    stays in place through the next rewrite, see the module doc)."""
    return Path(os.path.realpath(exports_dir))


@contextlib.contextmanager
def _writers_lock(path: Path) -> Iterator[None]:
    """One writer of a session's exports at a time, across processes (``flock``)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no other process to wait for is assumed
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _generations(parent: Path, name: str) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(name)}-(\d+)")
    return [entry for entry in parent.iterdir() if pattern.fullmatch(entry.name) and entry.is_dir()]


def _next_generation(parent: Path, name: str) -> int:
    return max((int(path.name.rpartition("-")[2]) for path in _generations(parent, name)), default=0) + 1


def _current_generation(published: Path) -> Path | None:
    """The generation ``published`` links to (None: nothing published yet). A real folder (an
    older version's exports) becomes the first generation."""
    if published.is_symlink():
        target = Path(os.path.realpath(published))
        return target if target.is_dir() else None
    if not published.is_dir():
        return None
    generation = published.parent / f".{published.name}-{_next_generation(published.parent, published.name)}"
    os.rename(published, generation)
    _publish(generation, published)
    return generation


def _publish(generation: Path, published: Path) -> None:
    """Point ``published`` at ``generation`` in one rename (a relative link: the output folder
    may be moved or mounted elsewhere)."""
    link = published.parent / f"{temporary_prefix(published.name)}link"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    os.symlink(generation.name, link)
    try:
        os.replace(link, published)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        raise
    sync_folder(published.parent)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


def _name_files_by_published_path(written: list[Path], staging: Path, published: Path) -> None:
    """In the STAR files written, paths into the generation being built become paths through
    the published folder (they must stay valid after the next rewrite)."""
    building, final = f"{staging}{os.sep}".encode(), f"{published}{os.sep}".encode()
    for path in written:
        if path.suffix != ".star" or not path.is_file():
            continue
        data = path.read_bytes()
        if building in data:
            atomic_write_bytes(path, data.replace(building, final))


def _write_exports_into(
    session: Session | int, folder: Path, *, relative_to: str | os.PathLike[str] | None
) -> list[Path]:
    """Write every export file of the session into ``folder``; the paths written."""
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
    rows = step_export_rows(session, ["ctf", *(step.name for step in exporting)])
    for step in exporting:
        for exporter in step.exports:
            written += exporter(rows, folder)
    from emlive.db.tomo_export import write_tomo_exports  # RELION 5: tomograms.star, tilt_series/

    written += write_tomo_exports(session, folder)
    return written + _write_cryosparc(session, rows, folder, relative_to=relative_to)


def _write_cryosparc(
    session: Session, rows: list[ExportRow], folder: Path, *, relative_to: str | os.PathLike[str] | None
) -> list[Path]:
    """cryoSPARC's ``.cs`` files of the same accepted micrographs (:mod:`emlive.sinks.cryosparc`)."""
    from emlive.sinks.cryosparc import CryosparcOptics, write_cryosparc_exports

    optics = CryosparcOptics(
        voltage_kv=float(session.voltage_kv), cs_mm=float(session.cs_mm),
        amplitude_contrast=float(session.amplitude_contrast), dose_per_frame_e_a2=float(session.dose_per_frame_e_a2),
    )
    base = Path(relative_to).absolute() if relative_to is not None else None
    return write_cryosparc_exports(rows, folder, optics, relative_to=base)
