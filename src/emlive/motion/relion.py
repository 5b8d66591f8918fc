"""RELION's own motion correction (``relion_run_motioncorr --use_own``) as an emlive engine.

The four pieces: :class:`RelionMotionParams` (typed, from the session's acquisition and the
step's params), the pure :func:`build_command` and :func:`movies_star`, one run through
:class:`emlive.tools.ExternalTool`, and the pure :func:`parse_output` of the per-movie STAR file
RELION writes (``data_general`` + ``data_global_shift``, the same in RELION 3.1, 4 and 5).

RELION runs in a temporary folder inside the output folder, on a link to the movie named after
the exposure's stem, so its outputs carry emlive's names; they are then renamed into place:

- RELION's ``<stem>_noDW.mrc`` → ``OUT/<stem>.mrc`` (aligned sum),
- RELION's ``<stem>.mrc`` → ``OUT/<stem>_DW.mrc`` (dose-weighted sum),
- RELION's ``<stem>.star`` → ``OUT/<stem>.star`` with ``rlnMicrographMovieName`` set to the
  real movie path (RELION 3.1 motion STAR; shifts in unbinned movie pixels).

RELION reads TIFF movies rows bottom-up, as MotionCor2 and emlive (:mod:`emlive.io.movie`) do:
its micrographs, shifts and local model for TIFF input are in the same frame as the native
engine's.

EER movies are rendered by RELION with ``--eer_grouping`` raw frames per fraction: the
grouping is ``n_raw // eer_fractions`` and the dose per fraction is scaled to the grouping, so
the dose weighting matches the acquisition's exposure.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from emlive.acquisition import Acquisition
from emlive.io.atomic import atomic_write_text
from emlive.io.movie import MovieHeader, movie_format, open_movie
from emlive.motion.dose import drift_statistics
from emlive.motion.types import MotionParams, MotionResult
from emlive.tools import ExternalTool, ToolSpec, Version, find_version

__all__ = [
    "DEFAULT_EXECUTABLE",
    "ENGINE_VERSION",
    "RELION",
    "SUPPORTED_VERSIONS",
    "RelionMotionOutput",
    "RelionMotionParams",
    "build_command",
    "motion_correct",
    "movies_star",
    "parse_output",
    "parse_star_text",
    "parse_version",
    "relion_params",
]

log = logging.getLogger(__name__)

ENGINE_VERSION = "relion-1"
DEFAULT_EXECUTABLE = "relion_run_motioncorr"
SUPPORTED_VERSIONS = (Version(3, 1, 0), Version(6, 0, 0))
_OUTPUT_DIR = "MotionCorr"
# emlive's gain flip (Acquisition.gain_flip) as RELION's --gain_flip and MotionCor2's -FlipGain
GAIN_FLIP = {None: 0, "y": 1, "x": 2}
_MOVIES_DIR = "Movies"


class RelionMotionParams(BaseModel):
    """Everything ``relion_run_motioncorr --use_own`` is told, in RELION's units."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pixel_size_a: PositiveFloat = Field(description="Movie pixel size, Å (--angpix)")
    voltage_kv: PositiveFloat
    cs_mm: float = Field(ge=0.0)
    amplitude_contrast: float = Field(ge=0.0, lt=1.0)
    dose_per_frame_e_a2: PositiveFloat = Field(description="Per (rendered) frame, e/Å²")
    pre_exposure_e_a2: float = Field(0.0, ge=0.0)
    bfactor_px2: PositiveFloat = 150.0
    bin_factor: float = Field(1.0, ge=1.0)
    max_iterations: PositiveInt = 5
    patches_x: PositiveInt = 1
    patches_y: PositiveInt = 1
    gain_path: Path | None = None
    gain_rotation: int = Field(0, ge=0, le=3, description="Quarter turns clockwise (--gain_rot)")
    gain_flip: int = Field(0, ge=0, le=2, description="0 none, 1 upside down, 2 left-right (--gain_flip)")
    defects_path: Path | None = None
    eer_grouping: PositiveInt | None = Field(None, description="EER raw frames per fraction")
    eer_upsampling: int = Field(1, ge=1, le=2)
    threads: PositiveInt = 1


class EerGrouping(NamedTuple):
    """How an EER movie's raw frames are grouped into fractions, as RELION and MotionCor take it."""

    raw_frames: int
    grouping: int  # raw frames per fraction
    dose_per_fraction_e_a2: float


def eer_grouping(
    *, raw_frames: int, fractions: int, dose_per_fraction_e_a2: float | None, acq_dose_per_frame_e_a2: float
) -> EerGrouping:
    """The grouping of an EER movie as emlive's reader fractionates it (``MovieHeader``).

    By exposure (``dose_per_fraction_e_a2`` known): every fraction has the same raw frames.
    By count: ``raw_frames // fractions`` per fraction (the tools drop the remainder, where
    emlive's reader spreads it), and the exposure per fraction keeps the acquisition's exposure
    per raw frame (``acq_dose_per_frame_e_a2`` is per emlive fraction, ``raw_frames / fractions``
    raw frames on average).
    """
    grouping = max(1, raw_frames // fractions)
    if dose_per_fraction_e_a2 is not None:
        return EerGrouping(raw_frames, grouping, dose_per_fraction_e_a2)
    return EerGrouping(raw_frames, grouping, acq_dose_per_frame_e_a2 * fractions / raw_frames * grouping)


def relion_params(
    acq: Acquisition, params: MotionParams, *, threads: int = 1, eer: EerGrouping | None = None
) -> RelionMotionParams:
    """The RELION parameters of a session's acquisition and the step's params.

    ``eer`` (EER movies only) is the movie's grouping (:func:`eer_grouping`): RELION groups
    ``eer.grouping`` raw frames per fraction.
    """
    dose = acq.dose_per_frame_e_a2 if eer is None else eer.dose_per_fraction_e_a2
    grouping = None if eer is None else eer.grouping
    return RelionMotionParams(
        pixel_size_a=acq.pixel_size_a,
        voltage_kv=acq.voltage_kv,
        cs_mm=acq.cs_mm,
        amplitude_contrast=acq.amplitude_contrast,
        dose_per_frame_e_a2=dose,
        pre_exposure_e_a2=acq.pre_exposure_e_a2,
        bfactor_px2=params.bfactor_px2,
        bin_factor=params.bin_factor,
        max_iterations=params.max_iterations,
        patches_x=params.patches[0],
        patches_y=params.patches[1],
        gain_path=acq.gain_path,
        gain_rotation=acq.gain_rotation,
        gain_flip=GAIN_FLIP[acq.gain_flip],
        defects_path=acq.defects_path,
        eer_grouping=grouping,
        eer_upsampling=acq.eer_upsampling,
        threads=threads,
    )


def movies_star(movie_name: str, p: RelionMotionParams) -> str:
    """The RELION 3.1 movies STAR file (optics table + one movie) that ``--i`` reads."""
    return (
        "\n# version 30001\n\ndata_optics\n\nloop_\n"
        "_rlnOpticsGroupName #1\n_rlnOpticsGroup #2\n_rlnMicrographOriginalPixelSize #3\n"
        "_rlnVoltage #4\n_rlnSphericalAberration #5\n_rlnAmplitudeContrast #6\n"
        f"opticsGroup1 1 {p.pixel_size_a:.6f} {p.voltage_kv:.6f} {p.cs_mm:.6f} {p.amplitude_contrast:.6f}\n"
        "\n\n# version 30001\n\ndata_movies\n\nloop_\n"
        "_rlnMicrographMovieName #1\n_rlnOpticsGroup #2\n"
        f"{movie_name} 1\n\n"
    )


def _number(value: float) -> str:
    return f"{value:g}"


def build_command(p: RelionMotionParams, *, movies_star_path: str, out_dir: str) -> list[str]:
    """The argv of ``relion_run_motioncorr`` for one movies STAR (paths as RELION should see them)."""
    argv = [
        DEFAULT_EXECUTABLE,
        "--i", movies_star_path,
        "--o", out_dir.rstrip("/") + "/",
        "--use_own",
        "--j", str(p.threads),
        "--angpix", _number(p.pixel_size_a),
        "--voltage", _number(p.voltage_kv),
        "--dose_weighting",
        "--save_noDW",
        "--dose_per_frame", _number(p.dose_per_frame_e_a2),
        "--preexposure", _number(p.pre_exposure_e_a2),
        "--bfactor", _number(p.bfactor_px2),
        "--bin_factor", _number(p.bin_factor),
        "--max_iter", str(p.max_iterations),
        "--patch_x", str(p.patches_x),
        "--patch_y", str(p.patches_y),
        "--first_frame_sum", "1",
        "--last_frame_sum", "-1",
    ]
    if p.gain_path is not None:
        argv += ["--gainref", str(p.gain_path), "--gain_rot", str(p.gain_rotation), "--gain_flip", str(p.gain_flip)]
    if p.defects_path is not None:
        argv += ["--defect_file", str(p.defects_path)]
    if p.eer_grouping is not None:
        argv += ["--eer_grouping", str(p.eer_grouping), "--eer_upsampling", str(p.eer_upsampling)]
    return argv


def parse_version(text: str) -> Version | None:
    """``RELION version: 3.1.3`` (``--version``; RELION 4/5 add ``-commit-…``) → Version."""
    return find_version(text, r"RELION version:\s*v?(\d+\.\d+(?:\.\d+)?)")


RELION = ExternalTool("relion", DEFAULT_EXECUTABLE, parse_version, SUPPORTED_VERSIONS, label="RELION")


StarBlock = dict[str, str] | list[dict[str, str]]


def parse_star_text(text: str) -> dict[str, StarBlock]:
    """A STAR file's blocks by name: key–value blocks as dicts, loops as lists of row dicts.

    Labels lose their leading underscore and ``#n`` column numbers; values stay text.
    """
    blocks: dict[str, StarBlock] = {}
    name: str | None = None
    columns: list[str] = []
    rows: list[dict[str, str]] | None = None
    pairs: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            name, columns, rows, pairs = line[5:], [], None, {}
            blocks[name] = pairs
        elif name is None:
            raise ValueError(f"STAR text before any data_ block: {line!r}")
        elif line == "loop_" or line.startswith("loop_"):
            columns, rows = [], []
            blocks[name] = rows
        elif line.startswith("_"):
            label, _, rest = line[1:].partition(" ")
            if rows is not None and not rows:
                columns.append(label)
            else:
                pairs[label] = rest.strip()
        elif rows is not None:
            values = line.split()
            if len(values) != len(columns):
                raise ValueError(f"data_{name}: a row has {len(values)} values for {len(columns)} columns: {line!r}")
            rows.append(dict(zip(columns, values, strict=True)))
        else:
            raise ValueError(f"data_{name}: unexpected line {line!r}")
    return blocks


class RelionMotionOutput(BaseModel):
    """What RELION's per-movie STAR file says: the frames' global shifts (unbinned px)."""

    model_config = ConfigDict(frozen=True)

    shifts_px: list[tuple[float, float]]
    image_size_px: tuple[int, int] = Field(description="(x, y) of the movie frames")
    binning: float
    local_model: list[float] | None = Field(
        None, description="rlnMotionModelCoeff by index (36 for RELION's third-order polynomial), or None"
    )


def parse_output(text: str, version: Version) -> RelionMotionOutput:
    """Parse the ``<movie>.star`` that RELION 3.1–5 writes per movie.

    ``data_general`` gives the frame size and binning; ``data_global_shift`` one row per frame
    (rlnMicrographFrameNumber, rlnMicrographShiftX/Y: the correction, unbinned pixels); with
    patches, ``data_local_motion_model`` the polynomial's coefficients (``data_local_shift``
    and ``data_hot_pixels`` are kept in the copied file, not parsed).
    Raises ``ValueError`` for text that is not this format.
    """
    RELION.check(version)
    blocks = parse_star_text(text)
    general, shifts = blocks.get("general"), blocks.get("global_shift")
    if not isinstance(general, dict) or not isinstance(shifts, list):
        raise ValueError(f"not a RELION motion STAR file: blocks {sorted(blocks)}, need general and global_shift")
    try:
        rows = sorted(shifts, key=lambda row: int(row["rlnMicrographFrameNumber"]))
        frames = [int(row["rlnMicrographFrameNumber"]) for row in rows]
        values = [(float(row["rlnMicrographShiftX"]), float(row["rlnMicrographShiftY"])) for row in rows]
        size = (int(general["rlnImageSizeX"]), int(general["rlnImageSizeY"]))
        binning = float(general.get("rlnMicrographBinning", "1"))
    except (KeyError, ValueError) as err:
        raise ValueError(f"RELION motion STAR file without the expected values: {err}") from err
    first = int(general.get("rlnMicrographStartFrame", "1"))
    if frames != list(range(first, first + len(frames))) or len(frames) < 2:
        raise ValueError(f"RELION motion STAR file: frame numbers {frames} are not consecutive from {first}")
    model = blocks.get("local_motion_model")
    local_model = None
    if isinstance(model, list) and model:
        try:
            ordered = sorted(model, key=lambda row: int(row["rlnMotionModelCoeffsIdx"]))
            local_model = [float(row["rlnMotionModelCoeff"]) for row in ordered]
        except (KeyError, ValueError) as err:
            raise ValueError(f"RELION motion STAR file: unreadable local motion model: {err}") from err
    return RelionMotionOutput(shifts_px=values, image_size_px=size, binning=binning, local_model=local_model)


def movie_header(movie: Path, acq: Acquisition) -> tuple[MovieHeader, EerGrouping | None]:
    """The movie's header as emlive reads it (no pixel decoded) and, for EER, its grouping."""
    movie = Path(movie)
    with open_movie(
        movie,
        eer_fractions=acq.eer_fractions,
        eer_upsampling=acq.eer_upsampling,
        eer_dose_per_fraction_e_a2=acq.eer_dose_per_fraction_e_a2,
        eer_total_dose_e_a2=acq.eer_total_dose_e_a2,
    ) as source:
        header = source.header
    if header.n_frames < 2:
        raise ValueError(f"{movie}: has {header.n_frames} frame(s); motion correction needs at least 2")
    if movie_format(movie) != "eer":
        return header, None
    return header, eer_grouping(
        raw_frames=header.n_raw_frames,
        fractions=header.n_frames,
        dose_per_fraction_e_a2=header.dose_per_fraction_e_a2,
        acq_dose_per_frame_e_a2=acq.dose_per_frame_e_a2,
    )


def absolute_paths(acq: Acquisition) -> Acquisition:
    """``acq`` with its gain and defects paths absolute: the tools run in another folder."""
    return acq.model_copy(
        update={
            "gain_path": None if acq.gain_path is None else acq.gain_path.absolute(),
            "defects_path": None if acq.defects_path is None else acq.defects_path.absolute(),
        }
    )


def _set_movie_name(star_text: str, movie: Path) -> str:
    """RELION's STAR text with rlnMicrographMovieName pointing at the real movie."""
    pattern = re.compile(r"^(_rlnMicrographMovieName\s+)\S+", flags=re.MULTILINE)
    if not pattern.search(star_text):
        raise ValueError("RELION motion STAR file has no rlnMicrographMovieName")
    return pattern.sub(lambda m: m.group(1) + str(movie), star_text, count=1)


def motion_correct(
    movie: Path,
    out_dir: Path,
    acq: Acquisition,
    params: MotionParams,
    *,
    stem: str | None = None,
    spec: ToolSpec | None = None,
) -> MotionResult:
    """Motion-correct ``movie`` with RELION's own implementation into ``out_dir``.

    ``spec`` defaults to the configured ``[tools.relion]``. Raises
    :class:`emlive.tools.ToolError` (with RELION's stderr tail) when RELION fails or times out,
    :class:`emlive.tools.ToolNotFoundError`/:class:`emlive.tools.ToolVersionError` when it is
    missing or an unsupported release, and ``ValueError`` for unreadable input or output.
    """
    with RELION.run(movie, out_dir, stem=stem, spec=spec) as run:
        movie, out_dir, stem, version, work = run.source, run.out_dir, run.stem, run.version, run.work
        acq = absolute_paths(acq)
        header, eer = movie_header(movie, acq)
        p = relion_params(acq, params, threads=run.spec.threads, eer=eer)
        (work / _MOVIES_DIR).mkdir()
        linked = f"{_MOVIES_DIR}/{stem}{movie.suffix}"
        os.symlink(movie, work / linked)
        (work / "movies.star").write_text(movies_star(linked, p))
        argv = build_command(p, movies_star_path="movies.star", out_dir=_OUTPUT_DIR)
        run.call(argv, paths=[path.resolve().parent for path in (p.gain_path, p.defects_path) if path])
        produced = f"{_OUTPUT_DIR}/{_MOVIES_DIR}/{stem}"
        star_file, dw_file, plain_file = run.expect(
            f"{produced}.star", f"{produced}.mrc", f"{produced}_noDW.mrc", log=work / f"{produced}.log"
        )
        star_text = star_file.read_text()
        with run.reading(f"output {star_file.name}", star_text):
            parsed = parse_output(star_text, version)
        if len(parsed.shifts_px) != header.n_frames and eer is None:
            raise run.output_error(f"RELION aligned {len(parsed.shifts_px)} frames of {header.n_frames}")
        micrograph_path = out_dir / f"{stem}.mrc"
        dose_weighted_path = out_dir / f"{stem}_DW.mrc"
        star_path = out_dir / f"{stem}.star"
        os.replace(plain_file, micrograph_path)
        os.replace(dw_file, dose_weighted_path)
        atomic_write_text(star_path, _set_movie_name(star_text, movie))
    drift = drift_statistics(
        parsed.shifts_px,
        pixel_size_a=acq.pixel_size_a,
        dose_per_frame_e_a2=p.dose_per_frame_e_a2,
        pre_exposure_e_a2=acq.pre_exposure_e_a2,
    )
    log.info("%s: RELION %s, %d frames, total drift %.1f Å", movie.name, version, len(parsed.shifts_px), drift.total_a)
    return MotionResult(
        shifts_px=parsed.shifts_px,
        total_drift_a=drift.total_a,
        early_drift_a=drift.early_a,
        late_drift_a=drift.late_a,
        micrograph_path=micrograph_path,
        dose_weighted_path=dose_weighted_path,
        star_path=star_path,
        pixel_size_a=acq.pixel_size_a * parsed.binning,
        n_frames=len(parsed.shifts_px),
        local_model=parsed.local_model,
    )
