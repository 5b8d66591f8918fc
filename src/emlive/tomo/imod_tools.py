"""IMOD (4.10–5.x) as a tilt-series alignment and reconstruction engine, through ``batchruntomo``.

The four pieces: :class:`ImodParams`, the pure :func:`build_command` and :func:`directives_text`
(the directive file batchruntomo follows), one run through :class:`emlive.tools.ExternalTool`
(``[tools.imod]``: ``executable`` names ``batchruntomo``, the other IMOD programs it starts are
found beside it), and the pure parsers of what it leaves: :func:`emlive.tomo.imod.parse_xf`
(``<stem>.xf``, the final transforms of the raw stack), :func:`emlive.tomo.imod.parse_tlt`
(``<stem>.tlt``, the refined tilt angles) and :func:`parse_align_log` (tiltalign's
``align.log``: ``Residual error mean and sd:   0.360   0.457 nm``).

The run, in a temporary folder inside the output folder holding ``<stem>.st`` (a link to the
stack, views sorted by tilt angle) and ``<stem>.rawtlt``::

    batchruntomo -DirectiveFile <stem>.adoc -CurrentLocation <work> -RootName <stem> -EndingStep 14

Patch tracking (no gold needed): the coarse cross-correlation (tiltxcorr), a prealigned stack,
patch tracking (tiltxcorr with patches), the fine alignment (tiltalign, one rotation for all
views, or none with ``refine_tilt_axis=False``), then with ``reconstruct`` the aligned stack
(newstack) and the tomogram (tilt, weighted back-projection). batchruntomo's step numbers (its
man page): 6 ends after the fine alignment, 14 after the reconstruction.

Directive keys are IMOD's (``IMOD/com/directives.csv``): ``setupset.copyarg.*`` (rotation =
the tilt axis angle, pixel in nm, gold in nm), ``runtime.Fiducials.any.trackingMethod = 1``
(patch tracking), ``comparam.<com file>.<program>.<option>``.

Outputs kept: ``OUT/<stem>.xf``, ``OUT/<stem>.tlt``, ``OUT/<stem>_align.log`` and with
``reconstruct`` ``OUT/<stem>_imod.mrc`` (the tomogram, ``<stem>_rec.mrc`` or ``<stem>.rec`` as
IMOD names it). The shifts and the axis come from the .xf (:func:`emlive.tomo.imod.alignment_from_xf`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from emlive.tomo.external import ExternalAlignment, check_views
from emlive.tomo.imod import alignment_from_xf, parse_tlt, parse_xf, tlt_text
from emlive.tools import ExternalTool, ToolSpec, Version, tool_spec

__all__ = [
    "ALIGN_ENDING_STEP",
    "IMOD",
    "RECONSTRUCT_ENDING_STEP",
    "AlignLog",
    "ImodParams",
    "align_imod",
    "build_command",
    "directives_text",
    "imod_spec",
    "imod_version_file",
    "parse_align_log",
    "parse_version",
]

log = logging.getLogger(__name__)

ALIGN_ENDING_STEP = 6
"""batchruntomo's step 6: fine alignment (tiltalign)."""
RECONSTRUCT_ENDING_STEP = 14
"""batchruntomo's step 14: reconstruction (tilt)."""


def parse_version(text: str) -> Version | None:
    """IMOD's version: the ``VERSION`` file of an installation (``4.11.24``) or a line naming IMOD."""
    stripped = text.strip()
    if re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,4}", stripped):
        return Version.parse(stripped)
    match = re.search(r"IMOD\b[^\n\d]{0,40}(\d{1,3}\.\d{1,3}\.\d{1,4})", text)
    return Version.parse(match.group(1)) if match else None


IMOD = ExternalTool(
    name="imod", executable="batchruntomo", parse_version=parse_version, label="IMOD batchruntomo",
    supported=(Version(4, 10, 0), Version(6, 0, 0)), version_args=("-help",),
)


def imod_version_file(spec: ToolSpec) -> Path | None:
    """The ``VERSION`` file of the IMOD installation a binary-mode spec runs (``IMOD_DIR`` from
    the tool's environment or this process', else the folder above batchruntomo's)."""
    if spec.mode != "binary":
        return None
    candidates = []
    imod_dir = spec.environment.get("IMOD_DIR") or os.environ.get("IMOD_DIR")
    if imod_dir:
        candidates.append(Path(imod_dir) / "VERSION")
    found = shutil.which(spec.command(IMOD.executable))
    if found:
        candidates.append(Path(found).resolve().parent.parent / "VERSION")
    return next((c for c in candidates if c.is_file()), None)


class ImodParams(BaseModel):
    """What batchruntomo is told. Sizes in pixels of the stack given unless said otherwise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pixel_size_a: PositiveFloat = Field(description="setupset.copyarg.pixel (written in nm)")
    tilt_axis_deg: float = Field(description="setupset.copyarg.rotation: the nominal axis angle")
    refine_tilt_axis: bool = Field(True, description="tiltalign RotOption -1 (one rotation) or 0 (fixed)")
    coarse_bin: PositiveInt = Field(1, description="prenewst BinByFactor: binning of the prealigned stack")
    patch_size_px: PositiveInt = Field(100, description="tiltxcorr SizeOfPatchesXandY, px of the prealigned stack")
    patch_overlap: float = Field(0.33, ge=0.0, lt=1.0, description="tiltxcorr OverlapOfPatchesXandY")
    gold_nm: PositiveFloat = Field(10.0, description="setupset.copyarg.gold (unused by patch tracking)")
    reconstruct: bool = Field(True, description="run to step 14 (tomogram) or stop after alignment (step 6)")
    aligned_bin: PositiveInt = Field(1, description="runtime.AlignedStack.any.binByFactor for the tomogram")
    thickness_px: PositiveInt = Field(600, description="tilt THICKNESS, px of the aligned (binned) stack")
    exclude_views: tuple[int, ...] = Field((), description="stack indices (0-based) tiltalign and tilt leave out")


def directives_text(p: ImodParams) -> str:
    """The directive file (``key = value`` lines, IMOD's autodoc)."""
    lines = [
        "setupset.copyarg.userawtlt = 1",
        "setupset.copyarg.stackext = st",
        "setupset.copyarg.dual = 0",
        f"setupset.copyarg.rotation = {p.tilt_axis_deg:g}",
        f"setupset.copyarg.pixel = {p.pixel_size_a / 10.0:g}",
        f"setupset.copyarg.gold = {p.gold_nm:g}",
        "runtime.Fiducials.any.trackingMethod = 1",
        "runtime.Positioning.any.wholeTomogram = 1",
        "runtime.PatchTracking.any.adjustTiltAngles = 0",
        "runtime.Excludeviews.any.deleteOldFiles = 0",
        f"runtime.AlignedStack.any.binByFactor = {p.aligned_bin}",
        f"comparam.prenewst.newstack.BinByFactor = {p.coarse_bin}",
        f"comparam.xcorr_pt.tiltxcorr.SizeOfPatchesXandY = {p.patch_size_px},{p.patch_size_px}",
        f"comparam.xcorr_pt.tiltxcorr.OverlapOfPatchesXandY = {p.patch_overlap:g},{p.patch_overlap:g}",
        "comparam.xcorr_pt.tiltxcorr.IterateCorrelations = 4",
        f"comparam.align.tiltalign.RotOption = {-1 if p.refine_tilt_axis else 0}",
        "comparam.align.tiltalign.TiltOption = 0",
        "comparam.align.tiltalign.MagOption = 0",
        f"comparam.tilt.tilt.THICKNESS = {p.thickness_px}",
    ]
    if p.exclude_views:
        views = ",".join(str(v + 1) for v in sorted(set(p.exclude_views)))  # IMOD numbers views from 1
        lines += [f"comparam.align.tiltalign.ExcludeList = {views}", f"comparam.tilt.tilt.EXCLUDELIST2 = {views}"]
    return "\n".join(lines) + "\n"


def build_command(p: ImodParams, *, executable: str, stem: str, work: str) -> list[str]:
    """batchruntomo's argv for ``<work>/<stem>.st`` with ``<work>/<stem>.adoc``."""
    step = RECONSTRUCT_ENDING_STEP if p.reconstruct else ALIGN_ENDING_STEP
    return [executable, "-DirectiveFile", f"{stem}.adoc", "-CurrentLocation", work, "-RootName", stem,
            "-EndingStep", str(step)]


@dataclass(frozen=True)
class AlignLog:
    """tiltalign's summary: the mean residual and its sd, in ``unit`` ("nm" or "px"), and the
    weighted mean (robust fitting) where printed."""

    residual_mean: float
    residual_sd: float
    unit: str
    weighted_mean: float | None = None

    def mean_px(self, pixel_size_a: float) -> float:
        """The mean residual in pixels of ``pixel_size_a`` (Å)."""
        return self.residual_mean * 10.0 / pixel_size_a if self.unit == "nm" else self.residual_mean


_RESIDUAL = re.compile(r"Residual error mean and sd:\s+(\S+)\s+(\S+)[ \t]*(nm|pixels?|)")
_WEIGHTED = re.compile(r"Residual error weighted mean:\s+(\S+)")


def parse_align_log(text: str) -> AlignLog:
    """The last residual summary tiltalign printed in ``align.log`` (ValueError if none)."""
    found = list(_RESIDUAL.finditer(text))
    if not found:
        raise ValueError("no 'Residual error mean and sd' line: tiltalign did not finish")
    last = found[-1]
    try:
        mean, sd = float(last.group(1)), float(last.group(2))
    except ValueError:
        raise ValueError(f"the residual line {last.group(0)[:80]!r} has no numbers") from None
    if not (math.isfinite(mean) and math.isfinite(sd)) or mean < 0:
        raise ValueError(f"the residual line {last.group(0)[:80]!r} is not a residual")
    weighted = None
    w = list(_WEIGHTED.finditer(text))
    if w:
        try:
            weighted = float(w[-1].group(1))
        except ValueError:
            weighted = None
        if weighted is not None and not math.isfinite(weighted):
            weighted = None
    return AlignLog(residual_mean=mean, residual_sd=sd, unit="nm" if last.group(3) == "nm" else "px",
                    weighted_mean=weighted)


def align_imod(
    stack: Path,
    tilt_angles_deg: Sequence[float] | np.ndarray,
    out_dir: Path,
    params: ImodParams,
    *,
    stem: str | None = None,
) -> ExternalAlignment:
    """Align (and with ``params.reconstruct`` reconstruct) ``stack`` (MRC, views sorted by tilt
    angle, ``tilt_angles_deg`` in that order) with IMOD's batchruntomo, patch tracking.

    Writes ``out_dir/<stem>.xf``, ``<stem>.tlt``, ``<stem>_align.log`` and ``<stem>_imod.mrc``.
    Errors as the other engines: :class:`emlive.tools.ToolError` with batchruntomo's last
    words, :class:`emlive.tools.ToolOutputError` for outputs missing or unreadable.
    """
    angles = np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1)
    check_views(stack, angles.size)
    spec = imod_spec()
    with IMOD.run(stack, out_dir, stem=stem, spec=spec) as run:
        stack, out_dir, stem = run.source, run.out_dir, run.stem
        os.symlink(stack, run.work / f"{stem}.st")
        (run.work / f"{stem}.rawtlt").write_text(tlt_text(angles))
        (run.work / f"{stem}.adoc").write_text(directives_text(params))
        run.call(build_command(params, executable=IMOD.executable, stem=stem, work=str(run.work)))
        xf_path, tlt_path, log_path = run.expect(f"{stem}.xf", f"{stem}.tlt", "align.log")
        xf_text, tlt_text_, log_text = (p.read_text(errors="replace") for p in (xf_path, tlt_path, log_path))
        with run.reading(f"transforms {xf_path.name}", xf_text):
            xf = parse_xf(xf_text)
            if len(xf) != angles.size:
                raise ValueError(f"{len(xf)} transforms for a stack of {angles.size} views")
            axis, shifts = alignment_from_xf(xf)
        with run.reading(f"tilt angles {tlt_path.name}", tlt_text_):
            tilts = parse_tlt(tlt_text_)
            if tilts.size != angles.size:
                raise ValueError(f"{tilts.size} tilt angles for a stack of {angles.size} views")
        with run.reading("tiltalign log align.log", log_text):
            residual = parse_align_log(log_text)
        tomogram_work = None
        if params.reconstruct:
            tomogram_work = next((run.work / n for n in (f"{stem}_rec.mrc", f"{stem}.rec") if (run.work / n).is_file()), None)
            if tomogram_work is None:
                raise run.output_error(f"{IMOD.title} ended without writing the tomogram {stem}_rec.mrc (or {stem}.rec)")
        kept = []
        for source, name in ((xf_path, f"{stem}.xf"), (tlt_path, f"{stem}.tlt"), (log_path, f"{stem}_align.log")):
            os.replace(source, out_dir / name)
            kept.append(out_dir / name)
        tomogram = None
        if tomogram_work is not None:
            tomogram = out_dir / f"{stem}_imod.mrc"
            os.replace(tomogram_work, tomogram)
    excluded = sorted(set(params.exclude_views))
    for i in excluded:
        shifts[i] = np.nan
        tilts[i] = np.nan
    residual_px = residual.mean_px(params.pixel_size_a)
    log.info("%s: IMOD %s aligned %d views, residual %.2f px", stack.name, run.version, angles.size, residual_px)
    return ExternalAlignment(
        shifts_px=shifts, tilt_axis_deg=axis, tilt_angles_deg=tilts,
        dropped=tuple((i, "excluded from IMOD's alignment") for i in excluded),
        residual_px=residual_px, tomogram_path=tomogram, files=tuple(kept),
    )


def imod_spec() -> ToolSpec:
    """``[tools.imod]``, with the version from the installation's VERSION file when it has one."""
    spec = tool_spec(IMOD.name)
    if spec.version is None:
        version_file = imod_version_file(spec)
        if version_file is not None:
            found = parse_version(version_file.read_text(errors="replace")[:100])
            if found is not None:
                spec = spec.model_copy(update={"version": str(found)})
    return spec
