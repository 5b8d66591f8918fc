"""Gctf (1.06, 1.18) as an emlive CTF engine (GPU).

The four pieces: :class:`GctfParams` (typed, from the optics and the step's params), the pure
:func:`build_command`, one run through :class:`emlive.tools.ExternalTool` on a GPU worker, and the
pure :func:`parse_output` of Gctf's log (``<stem>_gctf.log``): the line ending in
``Final Values`` under its column names (``Defocus_U Defocus_V Angle [Phase_shift] CCC``), and
``RES_LIMIT`` from the equiphase-averaging (EPA) line. :func:`parse_epa` reads
``<stem>_EPA.log`` (Resolution, Ctfsim, EPA(Ln|F|), EPA(Ln|F| - Bg), CCC per row).

Gctf writes next to its input, so it runs on a link to the micrograph in a temporary folder
inside the output folder. emlive then writes, atomically:

- ``OUT/<stem>.txt``: ctffind 4.1's 7-column results file with Gctf's numbers (phase shift
  converted from degrees to radians; the fit resolution is Gctf's EPA resolution limit);
- ``OUT/<stem>_avrot.txt``: ctffind 4.1's six rows from the EPA curves — spatial frequency
  (1/Resolution), EPA(Ln|F| - Bg) for both rotational averages (Gctf's equiphase average is
  already astigmatism-corrected; it has no plain rotational average), Ctfsim as the fit, CCC,
  and 2/sqrt(number of Fourier pixels on the ring) for the noise level;
- ``OUT/<stem>.png``: Gctf's diagnostic ``.ctf`` image.
"""

from __future__ import annotations

import logging
import math
import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from emlive.acquisition import Optics
from emlive.ctf.types import CtfParams, CtfResult
from emlive.io.atomic import atomic_write_text
from emlive.io.mrc import read_mrc
from emlive.io.png import write_png_atomic
from emlive.tools import ExternalTool, ToolSpec, Version, find_version

__all__ = [
    "DEFAULT_EXECUTABLE",
    "ENGINE_VERSION",
    "GCTF",
    "SUPPORTED_VERSIONS",
    "EpaCurves",
    "GctfOutput",
    "GctfParams",
    "avrot_text",
    "build_command",
    "estimate_ctf",
    "gctf_params",
    "parse_epa",
    "parse_output",
    "parse_version",
    "results_text",
]

log = logging.getLogger(__name__)

ENGINE_VERSION = "gctf-1"
DEFAULT_EXECUTABLE = "Gctf"
SUPPORTED_VERSIONS = (Version(1, 6, 0), Version(1, 19, 0))
LOG_SUFFIX = "_gctf.log"


class GctfParams(BaseModel):
    """Everything Gctf is told, in its units (Å, kV, mm, degrees for phase shifts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pixel_size_a: PositiveFloat
    voltage_kv: PositiveFloat
    cs_mm: float = Field(ge=0.0)
    amplitude_contrast: float = Field(ge=0.0, lt=1.0)
    box_px: PositiveInt = 512
    min_res_a: PositiveFloat = 30.0
    max_res_a: PositiveFloat = 5.0
    min_defocus_a: PositiveFloat = 5000.0
    max_defocus_a: PositiveFloat = 50000.0
    defocus_step_a: PositiveFloat = 500.0
    expected_astigmatism_a: PositiveFloat = Field(1000.0, description="--astm, Å (Gctf's default unless restrained)")
    bfactor_a2: PositiveFloat = 150.0
    fit_phase_shift: bool = False
    min_phase_shift_deg: float = 0.0
    max_phase_shift_deg: float = 180.0
    phase_shift_step_deg: PositiveFloat = 10.0
    gpu: int = Field(0, ge=0, description="--gid: device number as Gctf sees it")


def gctf_params(optics: Optics, params: CtfParams) -> GctfParams:
    """Gctf's parameters from the micrograph's optics and the step's params."""
    return GctfParams(
        pixel_size_a=optics.pixel_size_a,
        voltage_kv=optics.voltage_kv,
        cs_mm=optics.cs_mm,
        amplitude_contrast=optics.amplitude_contrast,
        box_px=params.tile_size_px,
        min_res_a=params.min_res_a,
        max_res_a=params.max_res_a,
        min_defocus_a=params.min_defocus_a,
        max_defocus_a=params.max_defocus_a,
        fit_phase_shift=params.fit_phase_shift,
        **({} if params.expected_astigmatism_a is None else {"expected_astigmatism_a": params.expected_astigmatism_a}),
    )


def build_command(p: GctfParams, *, executable: str, micrograph: str) -> list[str]:
    """The argv of Gctf for one micrograph (outputs go beside it)."""
    argv = [
        executable,
        "--apix", f"{p.pixel_size_a:g}",
        "--kV", f"{p.voltage_kv:g}",
        "--Cs", f"{p.cs_mm:g}",
        "--ac", f"{p.amplitude_contrast:g}",
        "--boxsize", str(p.box_px),
        "--resL", f"{p.min_res_a:g}",
        "--resH", f"{p.max_res_a:g}",
        "--defL", f"{p.min_defocus_a:g}",
        "--defH", f"{p.max_defocus_a:g}",
        "--defS", f"{p.defocus_step_a:g}",
        "--astm", f"{p.expected_astigmatism_a:g}",
        "--bfac", f"{p.bfactor_a2:g}",
        "--do_EPA", "1",
        "--logsuffix", LOG_SUFFIX,
        "--gid", str(p.gpu),
    ]
    if p.fit_phase_shift:
        argv += [
            "--phase_shift_L", f"{p.min_phase_shift_deg:g}",
            "--phase_shift_H", f"{p.max_phase_shift_deg:g}",
            "--phase_shift_S", f"{p.phase_shift_step_deg:g}",
            "--phase_shift_T", "1",
        ]
    return [*argv, micrograph]


def parse_version(text: str) -> Version | None:
    """Gctf's banner (``Current version: 1.06``; ``Gctf v1.18``) → Version(1, 6) / Version(1, 18)."""
    # no two adjacent repeats over the same characters (`\s+(…)?\s*`): quadratic on long lines
    return find_version(text, r"(?:Current version:?\s*|Gctf\S*\s+(?:version\s*(?::\s*)?)?)v?(\d+\.\d+(?:\.\d+)?)")


GCTF = ExternalTool("gctf", DEFAULT_EXECUTABLE, parse_version, SUPPORTED_VERSIONS, label="Gctf", needs_gpu=True)


class GctfOutput(BaseModel):
    """Gctf's final values for one micrograph."""

    model_config = ConfigDict(frozen=True)

    defocus_u_a: float
    defocus_v_a: float
    azimuth_deg: float
    phase_shift_deg: float = 0.0
    cross_correlation: float
    resolution_limit_a: float
    bfactor_a2: float | None = None


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"  # not \d+\.?\d*: quadratic backtracking


def parse_output(text: str, version: Version) -> GctfOutput:
    """Parse Gctf's log: the last ``… Final Values`` line, named by the header line above it,
    ``RES_LIMIT`` (EPA resolution limit, Å) and, if present, ``B_FACTOR`` (Å²).

    Raises ``ValueError`` for an unsupported version or a log without final values.
    """
    GCTF.check(version)
    lines = text.splitlines()
    final = [i for i, line in enumerate(lines) if line.rstrip().endswith("Final Values")]
    if not final:
        raise ValueError("no 'Final Values' line in the Gctf log")
    index = final[-1]
    header = next((lines[i].split() for i in range(index - 1, -1, -1) if "Defocus_U" in lines[i]), None)
    if header is None:
        raise ValueError("no column names (Defocus_U …) above Gctf's 'Final Values'")
    values = lines[index].replace("Final Values", "").split()
    if len(values) != len(header):
        raise ValueError(f"Gctf's final values {values} do not match its columns {header}")
    try:
        named = {name: float(value) for name, value in zip(header, values, strict=True)}
    except ValueError as err:
        raise ValueError(f"not a number in Gctf's final values {values}") from err
    missing = {"Defocus_U", "Defocus_V", "Angle", "CCC"} - set(named)
    if missing:
        raise ValueError(f"Gctf's final values lack {sorted(missing)}")
    limit = re.findall(rf"RES_LIMIT\s+({_NUMBER})", text)
    if not limit:
        raise ValueError("no RES_LIMIT (EPA resolution limit) in the Gctf log")
    bfactor = re.findall(rf"B_FACTOR\s+({_NUMBER})", text)
    return GctfOutput(
        defocus_u_a=named["Defocus_U"],
        defocus_v_a=named["Defocus_V"],
        azimuth_deg=named["Angle"],
        phase_shift_deg=named.get("Phase_shift", 0.0),
        cross_correlation=named["CCC"],
        resolution_limit_a=float(limit[-1]),
        bfactor_a2=float(bfactor[-1]) if bfactor else None,
    )


class EpaCurves(BaseModel):
    """Gctf's equiphase-averaged curves, one value per resolution shell."""

    model_config = ConfigDict(frozen=True)

    resolution_a: list[float]
    ctf_sim: list[float]
    epa_ln_f: list[float]
    epa_ln_f_minus_bg: list[float]
    ccc: list[float]


def parse_epa(text: str) -> EpaCurves:
    """Parse ``<stem>_EPA.log``: a header line, then rows of Resolution, Ctfsim, EPA( Ln|F| ),
    EPA(Ln|F| - Bg), CCC (resolution in Å, from low to high)."""
    rows: list[list[float]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 5 and all(re.fullmatch(_NUMBER, field) for field in fields):
            rows.append([float(field) for field in fields])
        elif line.strip() and rows:
            raise ValueError(f"unexpected line in the Gctf EPA log: {line!r}")
    if len(rows) < 2:
        raise ValueError("the Gctf EPA log has fewer than 2 rows of numbers")
    columns = np.asarray(rows).T
    return EpaCurves(
        resolution_a=columns[0].tolist(),
        ctf_sim=columns[1].tolist(),
        epa_ln_f=columns[2].tolist(),
        epa_ln_f_minus_bg=columns[3].tolist(),
        ccc=columns[4].tolist(),
    )


def _header(micrograph: str, p: GctfParams, version: Version, run_at: datetime, rows: str) -> list[str]:
    return [
        f"# Output from CTFFind version 4.1.14 format by emlive from Gctf {version}, run on {run_at:%Y-%m-%d %H:%M:%S}",
        f"# Input file: {micrograph} ; Number of micrographs: 1",
        f"# Pixel size: {p.pixel_size_a:.3f} Angstroms ; acceleration voltage: {p.voltage_kv:.1f} keV ; "
        f"spherical aberration: {p.cs_mm:.2f} mm ; amplitude contrast: {p.amplitude_contrast:.2f}",
        f"# Box size: {p.box_px} pixels ; min. res.: {p.min_res_a:.1f} Angstroms ; max. res.: {p.max_res_a:.1f} "
        f"Angstroms ; min. def.: {p.min_defocus_a:.1f} um; max. def. {p.max_defocus_a:.1f} um",
        rows,
    ]


def results_text(fit: GctfOutput, *, micrograph: str, p: GctfParams, version: Version, run_at: datetime) -> str:
    """ctffind 4.1's results file holding Gctf's values (phase shift in radians)."""
    columns = (
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
        "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; "
        "#7 - spacing (in Angstroms) up to which CTF rings were fit successfully"
    )
    values = (
        1.0, fit.defocus_u_a, fit.defocus_v_a, fit.azimuth_deg, math.radians(fit.phase_shift_deg),
        fit.cross_correlation, fit.resolution_limit_a,
    )
    return "\n".join([*_header(micrograph, p, version, run_at, columns), " ".join(f"{v:.6f}" for v in values)]) + "\n"


def avrot_text(curves: EpaCurves, *, micrograph: str, p: GctfParams, version: Version, run_at: datetime) -> str:
    """ctffind 4.1's six ``_avrot.txt`` rows made from Gctf's EPA curves (see the module doc)."""
    rows_doc = (
        "# 6 lines per micrograph: #1 - spatial frequency (1/Angstroms); "
        "#2 - 1D rotational average of spectrum (assuming no astigmatism); "
        "#3 - 1D rotational average of spectrum; #4 - CTF fit; "
        "#5 - cross-correlation between spectrum and CTF fit; "
        "#6 - 2sigma of expected cross correlation of noise"
    )
    frequency = 1.0 / np.asarray(curves.resolution_a)
    ring_px = np.maximum(math.pi * frequency * p.box_px * p.pixel_size_a, 1.0)
    rows = (
        frequency,
        np.asarray(curves.epa_ln_f_minus_bg),
        np.asarray(curves.epa_ln_f_minus_bg),
        np.asarray(curves.ctf_sim),
        np.asarray(curves.ccc),
        2.0 / np.sqrt(ring_px),
    )
    lines = [" ".join(f"{v:.6f}" for v in row) for row in rows]
    return "\n".join([*_header(micrograph, p, version, run_at, rows_doc), *lines]) + "\n"


def estimate_ctf(
    micrograph: Path, out_dir: Path, optics: Optics, params: CtfParams, *, stem: str | None = None,
    spec: ToolSpec | None = None,
) -> CtfResult:
    """Estimate the CTF of ``micrograph`` with Gctf (``[tools.gctf]``, on a GPU worker).

    Raises :class:`emlive.tools.ToolError` with Gctf's stderr tail when it fails or times out,
    :class:`emlive.tools.ToolNotFoundError`/:class:`emlive.tools.ToolVersionError` when it is
    missing or an unsupported release.
    """
    with GCTF.run(micrograph, out_dir, stem=stem, spec=spec) as run:
        micrograph, out_dir, stem, version = run.source, run.out_dir, run.stem, run.version
        p = gctf_params(optics, params)
        linked = run.work / f"{stem}.mrc"
        os.symlink(micrograph, linked)
        run.call(build_command(p, executable=DEFAULT_EXECUTABLE, micrograph=linked.name))
        log_file, epa_file, diagnostic = run.expect(f"{stem}{LOG_SUFFIX}", f"{stem}_EPA.log", f"{stem}.ctf")
        log_text = log_file.read_text(errors="replace")
        with run.reading("output", log_text):
            fit = parse_output(log_text, version)
            curves = parse_epa(epa_file.read_text(errors="replace"))
        image, _ = read_mrc(diagnostic)
        run_at = datetime.now()
        txt_path, avrot_path, png_path = out_dir / f"{stem}.txt", out_dir / f"{stem}_avrot.txt", out_dir / f"{stem}.png"
        atomic_write_text(avrot_path, avrot_text(curves, micrograph=str(micrograph), p=p, version=version, run_at=run_at))
        write_png_atomic(png_path, image[0] if image.ndim == 3 else image, max_size_px=512)
        atomic_write_text(txt_path, results_text(fit, micrograph=str(micrograph), p=p, version=version, run_at=run_at))
    log.info(
        "%s: Gctf %s: defocus %.0f/%.0f Å, azimuth %.1f°, EPA limit %.1f Å",
        micrograph.name, version, fit.defocus_u_a, fit.defocus_v_a, fit.azimuth_deg, fit.resolution_limit_a,
    )
    return CtfResult(
        defocus_u_a=fit.defocus_u_a,
        defocus_v_a=fit.defocus_v_a,
        azimuth_deg=fit.azimuth_deg,
        phase_shift_rad=math.radians(fit.phase_shift_deg),
        cross_correlation=fit.cross_correlation,
        fit_resolution_a=fit.resolution_limit_a,
        fit_ok=math.isfinite(fit.resolution_limit_a) and fit.resolution_limit_a < params.min_res_a,
        ice_ring_ratio=None,
        output_txt_path=txt_path,
        avrot_path=avrot_path,
        diagnostic_png_path=png_path,
    )
