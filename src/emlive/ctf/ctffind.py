"""ctffind 4.1 and ctffind 5 as emlive CTF engines.

The four pieces: :class:`CtffindParams` (typed, from the optics and the step's params), the
pure :func:`build_command` giving the argv and the answers ctffind reads on stdin (its
interactive questions, in the order each release asks them), one run through
:class:`emlive.tools.ExternalTool`, and the pure :func:`parse_output` of ctffind's results file:
comment lines, then one line per micrograph of 7 numbers (4.1: number, defocus 1 and 2 Å,
azimuth °, additional phase shift rad, cross-correlation, fit resolution Å) or 10 (5.x adds
sample tilt angle °, tilt axis angle ° and sample thickness Å).

ctffind names its outputs after the diagnostic image: with ``work/<stem>.mrc`` it writes
``work/<stem>.txt`` and ``work/<stem>_avrot.txt``. They are moved to ``OUT/<stem>.txt`` and
``OUT/<stem>_avrot.txt`` unchanged (ctffind 5's results keep their 10 columns: the first 7
are ctffind 4.1's), and the diagnostic image becomes ``OUT/<stem>.png``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from emlive.acquisition import Optics
from emlive.ctf.types import CtfParams, CtfResult
from emlive.io.mrc import read_mrc
from emlive.io.png import write_png_atomic
from emlive.tools import ExternalTool, ToolSpec, Version, find_version

__all__ = [
    "ENGINE_VERSION",
    "RELEASES",
    "CtffindOutput",
    "CtffindParams",
    "build_command",
    "ctffind_params",
    "estimate_ctf_ctffind4",
    "estimate_ctf_ctffind5",
    "parse_output",
    "parse_version",
]

log = logging.getLogger(__name__)

ENGINE_VERSION = "ctffind-1"


class CtffindParams(BaseModel):
    """Everything ctffind is asked, in its units (Å, kV, mm, radians)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pixel_size_a: PositiveFloat
    voltage_kv: PositiveFloat
    cs_mm: float = Field(ge=0.0)
    amplitude_contrast: float = Field(ge=0.0, lt=1.0)
    box_px: PositiveInt = Field(512, description="Size of amplitude spectrum to compute")
    min_res_a: PositiveFloat = 30.0
    max_res_a: PositiveFloat = 5.0
    min_defocus_a: PositiveFloat = 5000.0
    max_defocus_a: PositiveFloat = 50000.0
    defocus_step_a: PositiveFloat = 100.0
    slower_search: bool = False
    expected_astigmatism_a: PositiveFloat | None = Field(None, description="Restraint; None: unrestrained")
    fit_phase_shift: bool = False
    min_phase_shift_rad: float = 0.0
    max_phase_shift_rad: float = 3.15
    phase_shift_step_rad: PositiveFloat = 0.1


def ctffind_params(optics: Optics, params: CtfParams) -> CtffindParams:
    """ctffind's parameters from the micrograph's optics and the step's params."""
    return CtffindParams(
        pixel_size_a=optics.pixel_size_a,
        voltage_kv=optics.voltage_kv,
        cs_mm=optics.cs_mm,
        amplitude_contrast=optics.amplitude_contrast,
        box_px=params.tile_size_px,
        min_res_a=params.min_res_a,
        max_res_a=params.max_res_a,
        min_defocus_a=params.min_defocus_a,
        max_defocus_a=params.max_defocus_a,
        expected_astigmatism_a=params.expected_astigmatism_a,
        fit_phase_shift=params.fit_phase_shift,
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def build_command(
    p: CtffindParams, *, version: Version, executable: str, micrograph: str, diagnostic: str
) -> tuple[list[str], str]:
    """The argv and the stdin answers of ctffind 4.1 or 5 for one (single-image) micrograph.

    The questions, in order: input file, diagnostic output, pixel size, voltage, Cs, amplitude
    contrast, spectrum size, min/max resolution, min/max defocus and step, known astigmatism
    (no), slower search, astigmatism restraint (and its value), phase shift (and its range and
    step); ctffind 5 then asks whether to fit the sample tilt and thickness (no); finally the
    expert options (no).
    """
    answers = [
        micrograph,
        diagnostic,
        f"{p.pixel_size_a:g}",
        f"{p.voltage_kv:g}",
        f"{p.cs_mm:g}",
        f"{p.amplitude_contrast:g}",
        str(p.box_px),
        f"{p.min_res_a:g}",
        f"{p.max_res_a:g}",
        f"{p.min_defocus_a:g}",
        f"{p.max_defocus_a:g}",
        f"{p.defocus_step_a:g}",
        "no",  # Do you know what astigmatism is present?
        _yes(p.slower_search),
        _yes(p.expected_astigmatism_a is not None),
    ]
    if p.expected_astigmatism_a is not None:
        answers.append(f"{p.expected_astigmatism_a:g}")
    answers.append(_yes(p.fit_phase_shift))
    if p.fit_phase_shift:
        answers += [f"{p.min_phase_shift_rad:g}", f"{p.max_phase_shift_rad:g}", f"{p.phase_shift_step_rad:g}"]
    if version >= Version(5, 0, 0):
        answers += ["no", "no"]  # Determine sample tilt? Determine sample thickness?
    answers.append("no")  # Do you want to set expert options?
    return [executable], "\n".join(answers) + "\n"


def parse_version(text: str) -> Version | None:
    """The version ``ctffind --version`` prints (``4.1.14``; ctffind 5: ``5.0.2``)."""
    return find_version(text, r"(?:^|[\s:v])(\d+\.\d+\.\d+)\b")


RELEASES = {  # the ctffind generations: [tools.<name>], usual executable, releases read
    name: ExternalTool(name, executable, parse_version, supported, label="ctffind")
    for name, executable, supported in (
        ("ctffind4", "ctffind", (Version(4, 1, 0), Version(5, 0, 0))),
        ("ctffind5", "ctffind5", (Version(5, 0, 0), Version(6, 0, 0))),
    )
}
N_COLUMNS = {"ctffind4": 7, "ctffind5": 10}  # per micrograph in the results file


class CtffindOutput(BaseModel):
    """The numbers of one micrograph in ctffind's results file."""

    model_config = ConfigDict(frozen=True)

    defocus_1_a: float
    defocus_2_a: float
    azimuth_deg: float
    phase_shift_rad: float
    cross_correlation: float
    fit_resolution_a: float
    tilt_angle_deg: float | None = None
    tilt_axis_deg: float | None = None
    thickness_a: float | None = None


_FILE_VERSION = re.compile(r"CTFFind version\s+(\d+\.\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_output(text: str, version: Version, *, release: str = "ctffind4") -> CtffindOutput:
    """Parse ctffind's ``<diagnostic>.txt``: 7 columns for 4.1, 10 for 5.x.

    The release the file says wrote it (``# Output from CTFFind version …``) must be of the
    same generation as ``version``. Raises ``ValueError`` otherwise, or for a file with no
    result line or a result line of the wrong width.
    """
    RELEASES[release].check(version)
    n_columns = N_COLUMNS[release]
    stated = _FILE_VERSION.search(text)
    if stated is not None and Version.parse(stated.group(1)).major != version.major:
        raise ValueError(f"the results file says ctffind {stated.group(1)}, but ctffind {version} ran")
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise ValueError("no result line in the ctffind results file")
    values = rows[0]
    if len(values) != n_columns:
        raise ValueError(f"ctffind {version} writes {n_columns} columns per micrograph; the results file has {len(values)}")
    try:
        numbers = [float(value) for value in values]
    except ValueError as err:
        raise ValueError(f"not a number in the ctffind results line {' '.join(values)!r}") from err
    extra = {}
    if n_columns == 10:
        extra = {"tilt_angle_deg": numbers[7], "tilt_axis_deg": numbers[8], "thickness_a": numbers[9]}
    return CtffindOutput(
        defocus_1_a=numbers[1],
        defocus_2_a=numbers[2],
        azimuth_deg=numbers[3],
        phase_shift_rad=numbers[4],
        cross_correlation=numbers[5],
        fit_resolution_a=numbers[6],
        **extra,
    )


def _estimate(
    tool: ExternalTool, micrograph: Path, out_dir: Path, optics: Optics, params: CtfParams, *, stem: str | None,
    spec: ToolSpec | None,
) -> CtfResult:
    with tool.run(micrograph, out_dir, stem=stem, spec=spec) as run:
        micrograph, out_dir, stem, version = run.source, run.out_dir, run.stem, run.version
        p = ctffind_params(optics, params)
        argv, answers = build_command(
            p, version=version, executable=tool.executable, micrograph=str(micrograph),
            diagnostic=str(run.work / f"{stem}.mrc"),
        )
        run.call(argv, stdin=answers)
        txt, avrot, diagnostic = run.expect(f"{stem}.txt", f"{stem}_avrot.txt", f"{stem}.mrc")
        text = txt.read_text(errors="replace")
        with run.reading(f"results {txt.name}", text):
            fit = parse_output(text, version, release=tool.name)
        image, _ = read_mrc(diagnostic)
        txt_path, avrot_path, png_path = out_dir / f"{stem}.txt", out_dir / f"{stem}_avrot.txt", out_dir / f"{stem}.png"
        os.replace(avrot, avrot_path)
        write_png_atomic(png_path, image[0] if image.ndim == 3 else image, max_size_px=512)
        os.replace(txt, txt_path)  # last: its presence means the other outputs are complete
    log.info(
        "%s: ctffind %s: defocus %.0f/%.0f Å, azimuth %.1f°, fit to %.1f Å",
        micrograph.name, version, fit.defocus_1_a, fit.defocus_2_a, fit.azimuth_deg, fit.fit_resolution_a,
    )
    return CtfResult(
        defocus_u_a=fit.defocus_1_a,
        defocus_v_a=fit.defocus_2_a,
        azimuth_deg=fit.azimuth_deg,
        phase_shift_rad=fit.phase_shift_rad,
        cross_correlation=fit.cross_correlation,
        fit_resolution_a=fit.fit_resolution_a,
        # ctffind reports how far it fitted, not whether the fit is significant: a fit
        # resolution inside the fitted band means rings were found
        fit_ok=math.isfinite(fit.fit_resolution_a) and fit.fit_resolution_a < params.min_res_a,
        ice_ring_ratio=None,
        output_txt_path=txt_path,
        avrot_path=avrot_path,
        diagnostic_png_path=png_path,
    )


def estimate_ctf_ctffind4(
    micrograph: Path, out_dir: Path, optics: Optics, params: CtfParams, *, stem: str | None = None,
    spec: ToolSpec | None = None,
) -> CtfResult:
    """Estimate the CTF of ``micrograph`` with ctffind 4.1 (``[tools.ctffind4]``)."""
    return _estimate(RELEASES["ctffind4"], micrograph, out_dir, optics, params, stem=stem, spec=spec)


def estimate_ctf_ctffind5(
    micrograph: Path, out_dir: Path, optics: Optics, params: CtfParams, *, stem: str | None = None,
    spec: ToolSpec | None = None,
) -> CtfResult:
    """Estimate the CTF of ``micrograph`` with ctffind 5 (``[tools.ctffind5]``)."""
    return _estimate(RELEASES["ctffind5"], micrograph, out_dir, optics, params, stem=stem, spec=spec)
