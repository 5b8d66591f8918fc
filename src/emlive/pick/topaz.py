"""topaz (0.3.x, its pretrained general model, CPU) as an emlive particle-picking engine.

The four pieces: :class:`TopazParams` (typed, from the step's params and the micrograph's pixel
size), the pure :func:`build_command` giving topaz's two commands, one run through
:class:`emlive.tools.ExternalTool` (``[tools.topaz]``), and the pure :func:`parse_output` of the
table ``topaz extract`` writes.

The workflow topaz documents for picking with a pretrained model, in a temporary folder inside
the output folder, on a link ``<stem>.mrc`` to the micrograph (topaz reads a file as MRC only by
its ``.mrc`` suffix):

1. ``topaz preprocess -s SCALE -d -1 -j THREADS -o pre <stem>.mrc`` Fourier-crops the
   micrograph by the integer ``SCALE`` and normalizes it (a Gaussian-mixture fit), writing
   ``pre/<stem>.mrc``. ``SCALE`` brings the particle diameter to about
   :data:`TARGET_DIAMETER_PX` pixels.
2. ``topaz extract -m resnet16 -r RADIUS -t THRESHOLD -x SCALE -d -1 -j THREADS
   -o <stem>_topaz.txt pre/<stem>.mrc`` scores every pixel with the pretrained ResNet16
   classifier, keeps local maxima at least ``RADIUS`` downsampled pixels apart whose score
   exceeds ``THRESHOLD``, multiplies their coordinates by ``SCALE`` and rounds them to whole
   pixels of the given micrograph.

The table (tab-separated, one header line ``image_name x_coord y_coord score``): ``x_coord`` is
the column and ``y_coord`` the row of the micrograph's array as stored in the MRC file, row 0
first (topaz reads MRC rows in file order and numbers a pixel ``i`` as ``x = i % width``,
``y = i // width``) — emlive's convention, kept unchanged. ``score`` is the classifier's
log-likelihood ratio (a logit: 0 is p = 0.5, -6 is p ≈ 0.0025).

emlive then writes, as the native engine does, ``OUT/<stem>_picks.png`` (the micrograph
low-passed, picks circled) and last ``OUT/<stem>_autopick.star`` (RELION's coordinate file:
rlnCoordinateX/Y in pixels, rlnClassNumber 0 and rlnAnglePsi -999 as RELION's reference-free
picker writes them, rlnAutopickFigureOfMerit = topaz's score).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt

from emlive.acquisition import Optics
from emlive.ctf.types import CtfResult
from emlive.io.mrc import read_mrc
from emlive.pick.outputs import write_autopick_star, write_picks_png
from emlive.pick.types import PickParams, PickResult
from emlive.tools import ExternalTool, Version, find_version

__all__ = [
    "DEFAULT_EXECUTABLE",
    "DEFAULT_MIN_DISTANCE_D",
    "DEFAULT_THRESHOLD",
    "ENGINE_VERSION",
    "SUPPORTED_VERSIONS",
    "TARGET_DIAMETER_PX",
    "TOPAZ",
    "TopazParams",
    "TopazPicks",
    "build_command",
    "parse_output",
    "parse_version",
    "pick_particles_topaz",
    "topaz_params",
]

log = logging.getLogger(__name__)

ENGINE_VERSION = "topaz-1"
DEFAULT_EXECUTABLE = "topaz"
SUPPORTED_VERSIONS = (Version(0, 3, 0), Version(0, 4, 0))
# The particle diameter in topaz's downsampled pixels that SCALE aims at. On emlive's synthetic
# micrographs (2048², 1 Å/px; 100, 150 and 250 Å particles; normal, crowded and carbon-edge
# kinds) 16 px gave the best F1 of 16, 20 and 28 px (28 px, about what topaz's tutorial picks
# at, lost most 250 Å particles).
TARGET_DIAMETER_PX = 16.0
# Picks must score above this logit (p ≈ 0.27) unless PickParams.threshold says otherwise.
# topaz's own default, -6, keeps every plausible candidate for later curation; on the same
# micrographs -1 kept 90-100 % of the particles at 96-100 % precision, and 2-3 candidates in
# 2048² of empty ice (-2: 4-5, -3: 12).
DEFAULT_THRESHOLD = -1.0
# Closest two picks may be, in diameters, unless PickParams.min_distance_a says otherwise (the
# native engine's default too). topaz's advice, the particle's radius (0.5), let it pick 100 Å
# particles twice: 404 picks for 387 particles in a normal micrograph, 1109 for 868 crowded ones;
# 0.75 picked each once and lost none (crowded particles are 1.05 diameters apart).
DEFAULT_MIN_DISTANCE_D = 0.75
_PREPROCESSED_DIR = "pre"
_HEADER = ["image_name", "x_coord", "y_coord", "score"]


class TopazParams(BaseModel):
    """Everything topaz is told, in its units (downsampled pixels for the radius, logits)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale: PositiveInt = Field(description="preprocess -s / extract -x: integer downsampling factor")
    radius_px: PositiveInt = Field(description="extract -r: closest two picks may be, downsampled px")
    threshold: float = Field(DEFAULT_THRESHOLD, description="extract -t: lowest score kept (log-likelihood ratio)")
    model: str = Field("resnet16", description="extract -m: a pretrained model's name or a model file")
    device: int = Field(-1, ge=-1, description="-d: -1 CPU, else the GPU number as topaz sees it")
    threads: NonNegativeInt = Field(1, description="-j: PyTorch threads (0: PyTorch's default)")


def topaz_params(params: PickParams, *, pixel_size_a: float, threads: int = 1) -> TopazParams:
    """topaz's parameters for a micrograph of ``pixel_size_a`` Å/px and the step's params.

    The scale brings the diameter to about :data:`TARGET_DIAMETER_PX` downsampled pixels; the
    suppression radius is ``min_distance_a`` if given, else :data:`DEFAULT_MIN_DISTANCE_D`
    diameters; the threshold is ``params.threshold`` or :data:`DEFAULT_THRESHOLD`.
    """
    if params.diameter_a is None:
        raise ValueError("picking with topaz needs the particle diameter (diameter_a, --particle-diameter)")
    if not pixel_size_a > 0:
        raise ValueError(f"the micrograph's pixel size must be positive, got {pixel_size_a} Å")
    diameter_px = params.diameter_a / pixel_size_a
    scale = max(1, round(diameter_px / TARGET_DIAMETER_PX))
    distance_a = params.min_distance_a or DEFAULT_MIN_DISTANCE_D * params.diameter_a
    return TopazParams(
        scale=scale,
        radius_px=max(1, round(distance_a / (pixel_size_a * scale))),
        threshold=DEFAULT_THRESHOLD if params.threshold is None else params.threshold,
        threads=threads,
    )


def build_command(
    p: TopazParams, *, executable: str, micrograph: str, preprocessed_dir: str, output: str
) -> tuple[list[str], list[str]]:
    """The argv of ``topaz preprocess`` and of ``topaz extract`` for one micrograph.

    ``micrograph`` must end in ``.mrc``; preprocess writes ``preprocessed_dir/<its name>``, which
    extract reads; extract writes its table to ``output``.
    """
    if not micrograph.endswith(".mrc"):
        raise ValueError(f"topaz reads a micrograph as MRC only by its .mrc suffix: {micrograph}")
    common = ["-d", str(p.device), "-j", str(p.threads)]
    preprocess = [executable, "preprocess", "-s", str(p.scale), *common, "-o", preprocessed_dir, micrograph]
    extract = [
        executable, "extract",
        "-m", p.model,
        "-r", str(p.radius_px),
        "-t", f"{p.threshold:g}",
        "-x", str(p.scale),
        *common,
        "-o", output,
        f"{preprocessed_dir.rstrip('/')}/{Path(micrograph).name}",
    ]
    return preprocess, extract


def parse_version(text: str) -> Version | None:
    """What ``topaz --version`` prints (``0.3.20``) → Version."""
    return find_version(text, r"(?:^|\s|v)(\d+\.\d+\.\d+)\b")


TOPAZ = ExternalTool("topaz", DEFAULT_EXECUTABLE, parse_version, SUPPORTED_VERSIONS, label="topaz")


class TopazPicks(BaseModel):
    """The picks of one micrograph in topaz's table, best first as topaz lists them."""

    model_config = ConfigDict(frozen=True)

    image_name: str | None = Field(description="topaz's name of the micrograph (None: no picks)")
    coordinates_px: list[tuple[float, float]] = Field(description="(x, y): column, row of the micrograph, px")
    scores: list[float] = Field(description="log-likelihood ratio of each pick")


def parse_output(text: str, version: Version) -> TopazPicks:
    """Parse the table ``topaz extract -o`` writes for one micrograph.

    A header line ``image_name x_coord y_coord score``, then one tab-separated row per pick.
    Raises ``ValueError`` for an unsupported version, another header, a row of another width,
    a value that is not a number, or rows of more than one micrograph.
    """
    TOPAZ.check(version)
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines or lines[0].split() != _HEADER:
        first = lines[0][:80] if lines else "nothing"
        raise ValueError(f"not a topaz extract table: expected the header {' '.join(_HEADER)!r}, found {first!r}")
    names: set[str] = set()
    coordinates: list[tuple[float, float]] = []
    scores: list[float] = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(_HEADER):
            raise ValueError(f"line {number} of the topaz table has {len(fields)} fields, not 4: {line[:80]!r}")
        try:
            x, y, score = (float(value) for value in fields[1:])
        except ValueError as err:
            raise ValueError(f"line {number} of the topaz table: not a number in {line[:80]!r}") from err
        if not all(math.isfinite(v) for v in (x, y, score)):
            raise ValueError(f"line {number} of the topaz table: a value is not finite: {line[:80]!r}")
        names.add(fields[0])
        coordinates.append((x, y))
        scores.append(score)
    if len(names) > 1:
        raise ValueError(f"the topaz table holds picks of {len(names)} micrographs, expected one: {sorted(names)[:4]}")
    return TopazPicks(image_name=next(iter(names), None), coordinates_px=coordinates, scores=scores)


def pick_particles_topaz(
    micrograph: Path, out_dir: Path, params: PickParams, *, pixel_size_a: float,
    stem: str | None = None, optics: Optics | None = None, ctf: CtfResult | None = None,
) -> PickResult:
    """Pick particles of ``params.diameter_a`` on ``micrograph`` (MRC, ``pixel_size_a`` Å/px)
    with topaz's pretrained general model (``[tools.topaz]``); ``optics`` and ``ctf`` are not used.

    Writes ``out_dir/<stem>_picks.png`` and then ``out_dir/<stem>_autopick.star`` (see the module
    doc). Raises ``ValueError`` without a diameter, :class:`emlive.tools.ToolError` (with topaz's
    stderr tail) when topaz fails, :class:`emlive.tools.ToolNotFoundError` or
    :class:`emlive.tools.ToolVersionError` when it is missing or an unsupported release, and
    :class:`emlive.tools.ToolOutputError` for output it cannot read.
    """
    del optics, ctf  # the pretrained model needs neither
    with TOPAZ.run(micrograph, out_dir, stem=stem) as run:
        micrograph, out_dir, stem = run.source, run.out_dir, run.stem
        p = topaz_params(params, pixel_size_a=pixel_size_a, threads=run.spec.threads)
        linked = f"{stem}.mrc"
        os.symlink(micrograph, run.work / linked)
        preprocess, extract = build_command(
            p, executable=DEFAULT_EXECUTABLE, micrograph=linked, preprocessed_dir=_PREPROCESSED_DIR,
            output=f"{stem}_topaz.txt",
        )
        run.call(preprocess)
        run.expect(f"{_PREPROCESSED_DIR}/{linked}")
        run.call(extract)
        (table,) = run.expect(f"{stem}_topaz.txt")
        text = table.read_text(errors="replace")
        with run.reading(f"picks {table.name}", text):
            picks = parse_output(text, run.version)
    image, _ = read_mrc(micrograph)
    image = image[0] if image.ndim == 3 else image
    coordinates = np.asarray(picks.coordinates_px, dtype=np.float64).reshape(-1, 2)
    png_path, star_path = out_dir / f"{stem}_picks.png", out_dir / f"{stem}_autopick.star"
    diameter_px = float(params.diameter_a or 0.0) / pixel_size_a
    write_picks_png(png_path, image, coordinates, diameter_px=diameter_px)
    write_autopick_star(star_path, coordinates, np.asarray(picks.scores, dtype=np.float64))  # last
    log.info(
        "%s: topaz %s: %d particles (scale %d, radius %d px, threshold %g)",
        micrograph.name, run.version, len(coordinates), p.scale, p.radius_px, p.threshold,
    )
    return PickResult(coordinates_path=star_path, picks_png_path=png_path, n_particles=len(coordinates))
