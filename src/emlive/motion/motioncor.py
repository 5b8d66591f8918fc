"""MotionCor2 (1.4–1.6) and MotionCor3 (1.x) as emlive motion engines (GPU).

The four pieces: :class:`MotionCorParams` (typed, from the session's acquisition and the step's
params), the pure :func:`build_command` (and :func:`fmint_text` for EER), one run through
:class:`emlive.tools.ExternalTool` on a GPU worker, and the pure :func:`parse_output` of what the
program prints: the ``Full-frame alignment shift`` section, one ``Frame … shift: x y`` line per
frame. The frame-number spelling differs between releases (``Frame   1 shift:`` and
``...... Frame (  1) shift:``); both are read, as RELION's own MotionCor2 reader does.

MotionCor2/3 write ``-OutMrc X.mrc`` (aligned sum) and, with dose weighting (``-FmDose``,
``-PixSize``, ``-kV`` given), ``X_DW.mrc``: exactly emlive's names. They run in a temporary
folder inside the output folder and are renamed into place; ``OUT/<stem>.star`` is written from
the parsed shifts in RELION 3.1's motion STAR format (as the native engine writes it).

Shifts are stored as the program reports them (relative to its reference frame, ``-FmRef``),
in unbinned movie pixels, with RELION's sign: RELION stores MotionCor2's numbers unchanged.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from emlive.acquisition import Acquisition
from emlive.io.movie import MovieFormat, movie_format
from emlive.io.star import write_star_atomic
from emlive.motion.dose import drift_statistics
from emlive.motion.native import motion_star_blocks
from emlive.motion.relion import GAIN_FLIP, EerGrouping, absolute_paths, movie_header
from emlive.motion.types import MotionParams, MotionResult
from emlive.tools import ExternalTool, ToolSpec, Version, find_version

__all__ = [
    "ENGINE_VERSION",
    "PROGRAMS",
    "MotionCorParams",
    "build_command",
    "fmint_text",
    "motion_correct_motioncor2",
    "motion_correct_motioncor3",
    "motioncor_params",
    "parse_output",
    "parse_version",
]

log = logging.getLogger(__name__)

ENGINE_VERSION = "motioncor-1"

_INPUT_FLAG: dict[MovieFormat, str] = {"mrc": "-InMrc", "tiff": "-InTiff", "eer": "-InEer"}


class MotionCorParams(BaseModel):
    """Everything MotionCor2/3 are told, in their units."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    movie_format: MovieFormat
    pixel_size_a: PositiveFloat = Field(description="-PixSize, Å")
    voltage_kv: PositiveFloat = Field(description="-kV")
    dose_per_frame_e_a2: PositiveFloat = Field(description="-FmDose, e/Å² per (rendered) frame")
    pre_exposure_e_a2: float = Field(0.0, ge=0.0, description="-InitDose, e/Å²")
    bfactor_px2: PositiveFloat = Field(150.0, description="-Bft (global alignment), px²")
    tolerance_px: PositiveFloat = Field(0.5, description="-Tol, px")
    max_iterations: PositiveInt = Field(10, description="-Iter")
    bin_factor: float = Field(1.0, ge=1.0, description="-FtBin")
    patches_x: int = Field(0, ge=0, description="-Patch x y; 0 or 1: global alignment only")
    patches_y: int = Field(0, ge=0)
    gain_path: Path | None = None
    gain_rotation: int = Field(0, ge=0, le=3, description="-RotGain: quarter turns")
    gain_flip: int = Field(0, ge=0, le=2, description="-FlipGain: 0 none, 1 upside down, 2 left-right")
    defects_path: Path | None = Field(None, description="-DefectFile (x y w h per line)")
    eer_raw_frames: PositiveInt | None = Field(None, description="EER: raw frames in the movie")
    eer_grouping: PositiveInt | None = Field(None, description="EER: raw frames per fraction")
    eer_upsampling: int = Field(1, ge=1, le=3, description="-EerSampling")
    gpu: int = Field(0, ge=0, description="-Gpu: device number as the program sees it")


def motioncor_params(
    acq: Acquisition, params: MotionParams, *, fmt: MovieFormat, eer: EerGrouping | None = None
) -> MotionCorParams:
    """MotionCor parameters from a session's acquisition and the step's params.

    For EER, ``eer`` (:func:`emlive.motion.relion.eer_grouping`) gives the raw frames per
    fraction and the exposure per fraction. The worker's GPU reaches the program as
    ``CUDA_VISIBLE_DEVICES``, so it is device 0.
    """
    if fmt == "eer" and eer is None:
        raise ValueError("EER movies need their raw frame grouping")
    dose = acq.dose_per_frame_e_a2 if eer is None else eer.dose_per_fraction_e_a2
    return MotionCorParams(
        movie_format=fmt,
        pixel_size_a=acq.pixel_size_a,
        voltage_kv=acq.voltage_kv,
        dose_per_frame_e_a2=dose,
        pre_exposure_e_a2=acq.pre_exposure_e_a2,
        bfactor_px2=params.bfactor_px2,
        tolerance_px=params.tolerance_px,
        max_iterations=params.max_iterations,
        bin_factor=params.bin_factor,
        patches_x=params.patches[0],
        patches_y=params.patches[1],
        gain_path=acq.gain_path,
        gain_rotation=acq.gain_rotation,
        gain_flip=GAIN_FLIP[acq.gain_flip],
        defects_path=acq.defects_path,
        eer_raw_frames=None if eer is None else eer.raw_frames,
        eer_grouping=None if eer is None else eer.grouping,
        eer_upsampling=acq.eer_upsampling,
    )


def _number(value: float) -> str:
    return f"{value:g}"


def fmint_text(p: MotionCorParams) -> str:
    """The ``-FmIntFile`` of an EER movie: raw frames, raw frames per fraction, dose per raw frame."""
    if p.eer_raw_frames is None or p.eer_grouping is None:
        raise ValueError("only EER movies have a frame-integration file")
    per_raw = p.dose_per_frame_e_a2 / p.eer_grouping
    return f"{p.eer_raw_frames} {p.eer_grouping} {per_raw:.6g}\n"


def build_command(
    p: MotionCorParams,
    *,
    executable: str,
    movie: str,
    output_mrc: str,
    log_dir: str,
    fmint_file: str | None = None,
) -> list[str]:
    """The argv of MotionCor2/3 for one movie (same flags in both programs)."""
    argv = [
        executable,
        _INPUT_FLAG[p.movie_format], movie,
        "-OutMrc", output_mrc,
        "-PixSize", _number(p.pixel_size_a),
        "-kV", _number(p.voltage_kv),
        "-FmDose", _number(p.dose_per_frame_e_a2),
        "-InitDose", _number(p.pre_exposure_e_a2),
        "-Bft", _number(p.bfactor_px2),
        "-Iter", str(p.max_iterations),
        "-Tol", _number(p.tolerance_px),
        "-FtBin", _number(p.bin_factor),
        "-Gpu", str(p.gpu),
        "-LogDir", log_dir,
    ]
    if p.patches_x > 1 or p.patches_y > 1:
        argv += ["-Patch", str(p.patches_x), str(p.patches_y)]
    if p.gain_path is not None:
        argv += ["-Gain", str(p.gain_path), "-RotGain", str(p.gain_rotation), "-FlipGain", str(p.gain_flip)]
    if p.defects_path is not None:
        argv += ["-DefectFile", str(p.defects_path)]
    if p.movie_format == "eer":
        if fmint_file is None:
            raise ValueError("an EER movie needs its -FmIntFile")
        argv += ["-FmIntFile", fmint_file, "-EerSampling", str(p.eer_upsampling)]
    return argv


def parse_version(text: str) -> Version | None:
    """``MotionCor2 version 1.6.4`` / ``MotionCor3 1.0.1`` (first such line) → Version."""
    return find_version(text, r"MotionCor[23]\S*\s+(?:version\s*)?v?(\d+\.\d+(?:\.\d+)?)")


PROGRAMS = {  # [tools.<name>], usual executable, releases read
    name: ExternalTool(name, executable, parse_version, supported, needs_gpu=True)
    for name, executable, supported in (
        ("motioncor2", "MotionCor2", (Version(1, 4, 0), Version(1, 7, 0))),
        ("motioncor3", "MotionCor3", (Version(1, 0, 0), Version(2, 0, 0))),
    )
}


_SECTION = re.compile(r"Full-frame alignment shift", re.IGNORECASE)
# No two adjacent repeats may match the same characters (`\d+\.?\d*`, `\s*\(?\s*`): on a long
# line that does not match, backtracking over every split took minutes.
_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_FRAME = re.compile(rf"Frame\s*(?:\(\s*)?(\d+)\s*(?:\)\s*)?shift:\s*{_NUMBER}\s+{_NUMBER}")


def parse_output(text: str, version: Version, *, program: str = "motioncor2") -> list[tuple[float, float]]:
    """Per-frame (x, y) shifts, px, from what MotionCor2/3 print for one movie.

    Reads the last ``Full-frame alignment shift`` section: one line per frame, numbered from 1.
    Raises ``ValueError`` for an unsupported version, a missing section or frames out of order.
    """
    PROGRAMS[program].check(version)
    sections: list[list[tuple[int, float, float]]] = []
    current: list[tuple[int, float, float]] | None = None
    for line in text.splitlines():
        if _SECTION.search(line):
            current = []
            sections.append(current)
            continue
        if current is None:
            continue
        match = _FRAME.search(line)
        if match:
            current.append((int(match.group(1)), float(match.group(2)), float(match.group(3))))
        elif current and line.strip():
            current = None  # the section ended
    if not sections or not sections[-1]:
        raise ValueError(f"no 'Full-frame alignment shift' section with frame shifts in the {program} output")
    rows = sections[-1]
    frames = [frame for frame, _, _ in rows]
    if frames != list(range(1, len(rows) + 1)):
        raise ValueError(f"{program} output: frame numbers {frames[:8]}… are not 1, 2, 3 …")
    if len(rows) < 2:
        raise ValueError(f"{program} output: only {len(rows)} frame shift(s)")
    return [(x, y) for _, x, y in rows]


def _motion_correct(
    program: ExternalTool,
    movie: Path,
    out_dir: Path,
    acq: Acquisition,
    params: MotionParams,
    *,
    stem: str | None,
    spec: ToolSpec | None,
) -> MotionResult:
    with program.run(movie, out_dir, stem=stem, spec=spec) as run:
        movie, out_dir, stem, version, work = run.source, run.out_dir, run.stem, run.version, run.work
        fmt = movie_format(movie)
        acq = absolute_paths(acq)
        header, eer = movie_header(movie, acq)
        p = motioncor_params(acq, params, fmt=fmt, eer=eer)
        fmint = None
        if fmt == "eer":
            fmint = work / "fmint.txt"
            fmint.write_text(fmint_text(p))
        argv = build_command(
            p,
            executable=program.executable,
            movie=str(movie),
            output_mrc=str(work / f"{stem}.mrc"),
            log_dir=str(work) + "/",
            fmint_file=str(fmint) if fmint else None,
        )
        done = run.call(argv, paths=[path.resolve().parent for path in (p.gain_path, p.defects_path) if path])
        with run.reading("output"):
            shifts = parse_output(done.stdout, version, program=program.name)
        if fmt != "eer" and len(shifts) != header.n_frames:
            raise run.output_error(
                f"{program.executable} reports shifts of {len(shifts)} frames; the movie has {header.n_frames}"
            )
        plain, weighted = run.expect(f"{stem}.mrc", f"{stem}_DW.mrc")
        micrograph_path = out_dir / f"{stem}.mrc"
        dose_weighted_path = out_dir / f"{stem}_DW.mrc"
        star_path = out_dir / f"{stem}.star"
        os.replace(plain, micrograph_path)
        os.replace(weighted, dose_weighted_path)
    shifts_array = np.asarray(shifts, dtype=np.float64)
    write_star_atomic(
        star_path,
        motion_star_blocks(
            movie_name=str(movie), shape=header.shape, shifts_px=shifts_array, acq=acq, bin_factor=p.bin_factor
        ),
    )
    drift = drift_statistics(
        shifts_array,
        pixel_size_a=acq.pixel_size_a,
        dose_per_frame_e_a2=p.dose_per_frame_e_a2,
        pre_exposure_e_a2=acq.pre_exposure_e_a2,
    )
    log.info("%s: %s %s, %d frames, total drift %.1f Å", movie.name, program.executable, version, len(shifts), drift.total_a)
    return MotionResult(
        shifts_px=shifts,
        total_drift_a=drift.total_a,
        early_drift_a=drift.early_a,
        late_drift_a=drift.late_a,
        micrograph_path=micrograph_path,
        dose_weighted_path=dose_weighted_path,
        star_path=star_path,
        pixel_size_a=acq.pixel_size_a * p.bin_factor,
        n_frames=len(shifts),
    )


def motion_correct_motioncor2(
    movie: Path, out_dir: Path, acq: Acquisition, params: MotionParams, *, stem: str | None = None,
    spec: ToolSpec | None = None,
) -> MotionResult:
    """Motion-correct ``movie`` with MotionCor2 (``[tools.motioncor2]``) into ``out_dir``."""
    return _motion_correct(PROGRAMS["motioncor2"], movie, out_dir, acq, params, stem=stem, spec=spec)


def motion_correct_motioncor3(
    movie: Path, out_dir: Path, acq: Acquisition, params: MotionParams, *, stem: str | None = None,
    spec: ToolSpec | None = None,
) -> MotionResult:
    """Motion-correct ``movie`` with MotionCor3 (``[tools.motioncor3]``) into ``out_dir``."""
    return _motion_correct(PROGRAMS["motioncor3"], movie, out_dir, acq, params, stem=stem, spec=spec)
