"""AreTomo2 (1.x) and AreTomo3 (2.x) as tilt-series alignment and reconstruction engines (GPU).

The four pieces: :class:`AreTomoParams`, the pure :func:`build_command` (and the angle files it
reads: :func:`angle_file_text`), one run through :class:`emlive.tools.ExternalTool`
(``[tools.aretomo2]`` / ``[tools.aretomo3]``), and the pure :func:`parse_aln` of the ``.aln``
file both write (read from their sources, ``MrcUtil/CSaveAlnFile.cpp`` in AreTomo2 and
``AreTomo/MrcUtil/CSaveAlignFile.cpp`` in AreTomo3)::

    # AreTomo Alignment / Priims bprmMn
    # RawSize = 1024 1024 41            nx ny views of the input stack
    # NumPatches = 0
    # DarkFrame =     0    0   -60.00   dark views removed: sorted index, input section, tilt
    # AlphaOffset =     0.00            (AreTomo3) tilt-angle offset, beta offset, thickness
    # BetaOffset =     0.00
    # Thickness = 300
    # SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT
        1    85.2711    1.00000     12.380     -3.204     1.00     1.00     1.00     0.00    -57.00
    ...
    # Local Alignment                   (with patches) view, patch, x, y, shift x, shift y, good
       0   0 -1537.16  -1363.14     -6.93    -36.22   1.0

One row per kept view (``%5d  %9.4f  %9.5f  %9.3f  %9.3f  %7.2f  %7.2f  %7.2f  %7.2f  %8.2f``):
SEC the view's section (AreTomo2: in the input stack; AreTomo3 may number the kept views from
0), ROT the tilt axis angle (°), TX, TY the view's shift in pixels of the input stack, TILT the
refined tilt angle. RELION 5's own AreTomo wrapper takes rlnTomoZRot = ROT, rlnTomoYTilt = TILT
and the shifts (TX, TY) × pixel size: ROT is emlive's tilt axis angle and (TX, TY) emlive's
content shift (:mod:`emlive.tomo.geometry`), so they are kept as they are (AreTomo measures
from the image centre ``n/2``, emlive from ``(n − 1)/2``: half a pixel, below what an
alignment resolves).

Runs, in a temporary folder inside the output folder, on a link ``<stem>.mrc`` to the stack:

- AreTomo2: ``AreTomo2 -InMrc <stem>.mrc -OutMrc <stem>_rec.mrc -AngFile <stem>.rawtlt
  -TiltAxis A R -AlignZ Z -VolZ Z -OutBin B -DarkTol T -FlipVol 1 -Wbp 1 -PixSize P -Gpu 0``;
  it writes ``<stem>.aln`` beside the output (its name from the input's, ``.mrc`` → ``.aln``)
  and the tomogram ``<stem>_rec.mrc`` (or, with ``-VolZ 0``, the aligned stack).
- AreTomo3: ``AreTomo3 -Cmd 1 -InPrefix <work>/<stem> -InSuffix .mrc -OutDir <work>/out/ ...``
  starting from a tilt series: it reads ``<stem>_TLT.txt`` (tilt angle, 1-based acquisition
  index, dose per view) beside the stack and writes ``out/<stem>.aln`` and
  ``out/<stem>_Vol.mrc``.

``R`` is 1 to refine the axis, -1 to keep it. The outputs kept are moved to
``OUT/<stem>.aln`` and ``OUT/<stem>_aretomo.mrc`` (the tomogram).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from emlive.tomo.external import ExternalAlignment, check_views
from emlive.tools import ExternalTool, Version, find_version

__all__ = [
    "ARETOMO2",
    "ARETOMO3",
    "AlnFile",
    "AlnRow",
    "AreTomoParams",
    "align_aretomo",
    "alignment_from_aln",
    "angle_file_text",
    "build_command",
    "parse_aln",
    "parse_version",
]

log = logging.getLogger(__name__)

Program = Literal["aretomo2", "aretomo3"]


def parse_version(text: str) -> Version | None:
    """``AreTomo2 version 1.1.3`` / AreTomo3's ``version 2.3.1, built on …``."""
    return find_version(text, r"version\s+v?(\d+\.\d+(?:\.\d+)?)")


ARETOMO2 = ExternalTool(
    name="aretomo2", executable="AreTomo2", parse_version=parse_version,
    supported=(Version(1, 0, 0), Version(2, 0, 0)), needs_gpu=True,
)
ARETOMO3 = ExternalTool(
    name="aretomo3", executable="AreTomo3", parse_version=parse_version,
    supported=(Version(2, 0, 0), Version(3, 0, 0)), needs_gpu=True,
)
_TOOLS: dict[str, ExternalTool] = {"aretomo2": ARETOMO2, "aretomo3": ARETOMO3}


class AreTomoParams(BaseModel):
    """What AreTomo is told, in its units (thicknesses in pixels of the input stack)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pixel_size_a: PositiveFloat = Field(description="-PixSize, Å, of the input stack")
    tilt_axis_deg: float = Field(description="-TiltAxis: the nominal axis angle (SerialEM's)")
    refine_tilt_axis: bool = Field(True, description="-TiltAxis A 1 refines it, A -1 keeps it")
    align_z_px: PositiveInt = Field(300, description="-AlignZ: specimen thickness for alignment, px")
    vol_z_px: int = Field(600, ge=0, description="-VolZ: tomogram thickness, px; 0: align only")
    out_bin: float = Field(1.0, ge=1.0, description="-OutBin (AreTomo2) / -AtBin (AreTomo3)")
    dark_tol: float = Field(0.7, gt=0.0, lt=1.0, description="-DarkTol: higher drops more dark views")
    voltage_kv: PositiveFloat = Field(300.0, description="-Kv / -kV")
    cs_mm: float = Field(2.7, ge=0.0, description="-Cs, mm")
    gpu: int = Field(0, ge=0, description="-Gpu: as the program sees it (the worker's GPU is device 0)")


def _g(value: float) -> str:
    return f"{value:g}"


def build_command(p: AreTomoParams, *, program: Program, executable: str, stem: str, work: str) -> list[str]:
    """The argv of one AreTomo2/3 run on ``<work>/<stem>.mrc`` (see the module doc)."""
    axis = ["-TiltAxis", _g(p.tilt_axis_deg), "1" if p.refine_tilt_axis else "-1"]
    common = [
        *axis, "-AlignZ", str(p.align_z_px), "-VolZ", str(p.vol_z_px),
        "-DarkTol", _g(p.dark_tol), "-FlipVol", "1", "-Wbp", "1", "-PixSize", _g(p.pixel_size_a),
    ]
    if program == "aretomo2":
        return [
            executable, "-InMrc", f"{stem}.mrc", "-OutMrc", f"{stem}_rec.mrc", "-AngFile", f"{stem}.rawtlt",
            *common, "-OutBin", _g(p.out_bin), "-Kv", _g(p.voltage_kv), "-Cs", _g(p.cs_mm), "-Gpu", str(p.gpu),
        ]
    return [
        executable, "-Cmd", "1", "-InPrefix", os.path.join(work, stem), "-InSuffix", ".mrc",
        "-OutDir", os.path.join(work, "out") + os.sep, *common, "-AtBin", _g(p.out_bin),
        "-kV", _g(p.voltage_kv), "-Cs", _g(p.cs_mm), "-SplitSum", "0", "-CorrCTF", "0", "-Gpu", str(p.gpu),
    ]


def angle_file_text(
    tilt_angles_deg: Sequence[float] | np.ndarray,
    *,
    program: Program,
    acquisition_order: Sequence[int] | np.ndarray | None = None,
    dose_per_tilt_e_per_a2: float | None = None,
) -> str:
    """AreTomo2's ``-AngFile`` (one angle per line) or AreTomo3's ``<stem>_TLT.txt``
    (``%8.2f  %4d  %8.2f``: angle, 1-based acquisition index, dose of that view), in the
    stack's order."""
    angles = np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1)
    if angles.size == 0 or not np.all(np.isfinite(angles)):
        raise ValueError("tilt angles must be finite, at least one")
    if program == "aretomo2":
        return "".join(f"{a:8.2f}\n" for a in angles)
    order = np.arange(angles.size) if acquisition_order is None else np.asarray(acquisition_order, dtype=int)
    if sorted(order.tolist()) != list(range(angles.size)):
        raise ValueError("acquisition_order must give each view its index 0..n-1")
    dose = 0.0 if dose_per_tilt_e_per_a2 is None else float(dose_per_tilt_e_per_a2)
    return "".join(f"{a:8.2f}  {int(o) + 1:4d}  {dose:8.2f}\n" for a, o in zip(angles, order, strict=True))


@dataclass(frozen=True)
class AlnRow:
    section: int
    rotation_deg: float
    magnification: float
    shift_x_px: float
    shift_y_px: float
    tilt_deg: float


@dataclass(frozen=True)
class AlnFile:
    """A parsed ``.aln``: ``raw_size`` (nx, ny, views) of the input stack, ``dark`` (sorted
    index, input section, tilt °) per removed view, the global ``rows``, the offsets (AreTomo3),
    and how many local-alignment lines follow (``num_patches`` per kept view)."""

    raw_size: tuple[int, int, int]
    rows: tuple[AlnRow, ...]
    dark: tuple[tuple[int, int, float], ...] = ()
    num_patches: int = 0
    alpha_offset_deg: float | None = None
    beta_offset_deg: float | None = None
    thickness_px: int | None = None
    local_lines: int = 0


def _finite(token: str, what: str, number: int) -> float:
    try:
        if len(token) > 40:
            raise ValueError
        value = float(token)
    except ValueError:
        raise ValueError(f"line {number}: {what} {token[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"line {number}: {what} {token[:40]!r} is not finite")
    return value


def _whole(token: str, what: str, number: int) -> int:
    if not re.fullmatch(r"[-+]?\d{1,9}", token):
        raise ValueError(f"line {number}: {what} {token[:40]!r} is not a whole number")
    return int(token)


def parse_aln(text: str, version: Version | None = None) -> AlnFile:
    """Parse an AreTomo2/3 ``.aln`` file (pure); ValueError naming the line otherwise."""
    del version  # one format in AreTomo2 1.x and AreTomo3 2.x (AreTomo3 adds header keys)
    raw_size: tuple[int, int, int] | None = None
    header: dict[str, float] = {}
    dark: list[tuple[int, int, float]] = []
    rows: list[AlnRow] = []
    num_patches = 0
    local = 0
    in_local = False
    seen_columns = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            body = line[1:].strip()
            key, eq, value = body.partition("=")
            key = key.strip()
            if body.startswith("SEC"):
                seen_columns = True
            elif body.startswith("Local Alignment"):
                in_local = True
            elif eq and key == "RawSize":
                parts = value.split()
                if len(parts) != 3:
                    raise ValueError(f"line {number}: RawSize needs 3 numbers, got {value.strip()[:40]!r}")
                nx, ny, nz = (_whole(v, "RawSize", number) for v in parts)
                if min(nx, ny, nz) <= 0:
                    raise ValueError(f"line {number}: RawSize {nx} {ny} {nz} must be positive")
                raw_size = (nx, ny, nz)
            elif eq and key == "NumPatches":
                num_patches = _whole(value.strip(), "NumPatches", number)
            elif eq and key == "DarkFrame":
                parts = value.split()
                if len(parts) != 3:
                    raise ValueError(f"line {number}: DarkFrame needs index, section and tilt, got {value.strip()[:40]!r}")
                dark.append((_whole(parts[0], "DarkFrame index", number), _whole(parts[1], "DarkFrame section", number),
                             _finite(parts[2], "DarkFrame tilt", number)))
            elif eq and key in ("AlphaOffset", "BetaOffset", "Thickness"):
                header[key] = _finite(value.strip(), key, number)
            continue
        if in_local:
            local += 1
            continue
        if not seen_columns:
            raise ValueError(f"line {number}: {line[:60]!r} before the '# SEC ROT ...' column line")
        fields = line.split()
        if len(fields) != 10:
            raise ValueError(f"line {number}: {len(fields)} columns, not SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT")
        rows.append(AlnRow(
            section=_whole(fields[0], "SEC", number),
            rotation_deg=_finite(fields[1], "ROT", number),
            magnification=_finite(fields[2], "GMAG", number),
            shift_x_px=_finite(fields[3], "TX", number),
            shift_y_px=_finite(fields[4], "TY", number),
            tilt_deg=_finite(fields[9], "TILT", number),
        ))
    if raw_size is None:
        raise ValueError("no '# RawSize = nx ny views' line: not an AreTomo .aln file")
    if not rows:
        raise ValueError("no alignment rows (SEC ROT ... TILT): AreTomo aligned no view")
    if len(rows) + len(dark) != raw_size[2]:
        raise ValueError(f"{len(rows)} aligned and {len(dark)} dark views, but RawSize says {raw_size[2]}")
    thickness = header.get("Thickness")
    return AlnFile(
        raw_size=raw_size, rows=tuple(rows), dark=tuple(dark), num_patches=num_patches,
        alpha_offset_deg=header.get("AlphaOffset"), beta_offset_deg=header.get("BetaOffset"),
        thickness_px=None if thickness is None else int(thickness), local_lines=local,
    )


def alignment_from_aln(aln: AlnFile) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[tuple[int, str], ...]]:
    """Per view of the input stack: (shifts_px (n, 2), tilt_axis_deg (n,), tilt_angles_deg (n,),
    dropped views with the reason); NaN for dark views. SEC is read as the input section when
    the rows' sections are exactly the views that are not dark, else as the kept views' order."""
    n = aln.raw_size[2]
    dark_sections = sorted({section for _, section, _ in aln.dark})
    if any(not 0 <= s < n for s in dark_sections):
        raise ValueError(f"a dark section is outside the stack's {n} views: {dark_sections}")
    kept = [i for i in range(n) if i not in set(dark_sections)]
    sections = [row.section for row in aln.rows]
    if sorted(sections) == kept:
        index = sections
    elif sorted(sections) == list(range(len(kept))):
        index = [kept[s] for s in sections]
    else:
        raise ValueError(f"the sections {sections[:8]}... match neither the stack's kept views nor their order")
    shifts = np.full((n, 2), np.nan)
    axis = np.full(n, np.nan)
    tilts = np.full(n, np.nan)
    for i, row in zip(index, aln.rows, strict=True):
        shifts[i] = (row.shift_x_px, row.shift_y_px)
        axis[i] = row.rotation_deg
        tilts[i] = row.tilt_deg
    dropped = tuple((s, f"dark: AreTomo removed it (tilt {t:.2f}°)") for _, s, t in sorted(aln.dark, key=lambda d: d[1]))
    return shifts, axis, tilts, dropped


def align_aretomo(
    stack: Path,
    tilt_angles_deg: Sequence[float] | np.ndarray,
    out_dir: Path,
    params: AreTomoParams,
    *,
    program: Program = "aretomo2",
    stem: str | None = None,
    acquisition_order: Sequence[int] | np.ndarray | None = None,
    dose_per_tilt_e_per_a2: float | None = None,
) -> ExternalAlignment:
    """Align (and with ``vol_z_px`` > 0 reconstruct) the tilt series ``stack`` (MRC, views in
    the order of ``tilt_angles_deg``, normally sorted by angle) with AreTomo2 or AreTomo3.

    Writes ``out_dir/<stem>.aln`` and ``out_dir/<stem>_aretomo.mrc`` (the tomogram). Raises
    :class:`emlive.tools.ToolError` when the program fails (with its stderr tail),
    :class:`emlive.tools.ToolNotFoundError` / :class:`emlive.tools.ToolVersionError` when it
    is missing or an unsupported release, :class:`emlive.tools.ToolOutputError` for output it
    cannot read.
    """
    tool = _TOOLS[program]
    angles = np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1)
    check_views(stack, angles.size)
    with tool.run(stack, out_dir, stem=stem) as run:
        stack, out_dir, stem = run.source, run.out_dir, run.stem
        os.symlink(stack, run.work / f"{stem}.mrc")
        angle_text = angle_file_text(angles, program=program, acquisition_order=acquisition_order,
                                     dose_per_tilt_e_per_a2=dose_per_tilt_e_per_a2)
        angle_name = f"{stem}.rawtlt" if program == "aretomo2" else f"{stem}_TLT.txt"
        (run.work / angle_name).write_text(angle_text)
        if program == "aretomo3":
            (run.work / "out").mkdir()
        run.call(build_command(params, program=program, executable=tool.executable, stem=stem, work=str(run.work)))
        produced = {"aretomo2": (f"{stem}.aln", f"{stem}_rec.mrc"), "aretomo3": (f"out/{stem}.aln", f"out/{stem}_Vol.mrc")}
        names = produced[program] if params.vol_z_px > 0 else produced[program][:1]
        found = run.expect(*names)
        text = found[0].read_text(errors="replace")
        with run.reading(f"alignment {found[0].name}", text):
            aln = parse_aln(text, run.version)
            if aln.raw_size[2] != angles.size:
                raise ValueError(f"it describes {aln.raw_size[2]} views, the stack has {angles.size}")
            shifts, axis, tilts, dropped = alignment_from_aln(aln)
        aln_path = out_dir / f"{stem}.aln"
        os.replace(found[0], aln_path)
        tomogram = None
        if params.vol_z_px > 0:
            tomogram = out_dir / f"{stem}_aretomo.mrc"
            os.replace(found[1], tomogram)
    log.info("%s: %s %s aligned %d of %d views (axis %.2f°)", stack.name, tool.title, run.version,
             len(aln.rows), angles.size, float(np.nanmean(axis)))
    return ExternalAlignment(
        shifts_px=shifts, tilt_axis_deg=axis, tilt_angles_deg=tilts, dropped=dropped,
        tomogram_path=tomogram, files=(aln_path,),
    )
