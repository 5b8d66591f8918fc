"""Classic Appion's command-line flags (``appion/base/cli.py``, ``motioncorrection/cli``,
classic ``ctffind4.py``), parsed with argparse as Appion does: ``--flag value`` and
``--flag=value`` both work, an unknown flag is an error that names it.

Flags that steer an engine emlive does not have (a GPU program's internals, e.g.
``--alignoffset``) are accepted so the web UI's command lines run, and logged as having no
effect when given a value other than their default.
"""

from __future__ import annotations

import argparse
import logging
import os

from emlive.sources.leginon import TILT_CHOICES

log = logging.getLogger(__name__)



def global_parser() -> argparse.ArgumentParser:
    """The flags every classic Appion loop takes."""
    parser = argparse.ArgumentParser(add_help=False)
    add = parser.add_argument
    add("-R", "--rundir", "--outdir", dest="rundir", default=os.getcwd(), help="Run folder for the outputs")
    add("-s", "--session", dest="sessionname", help="Leginon session name, e.g. 06mar12a")
    add("--expid", "--expId", dest="expid", type=int, help="Leginon session id (instead of --session)")
    add("--preset", dest="preset", help="Images of this preset, e.g. enn (default: every image)")
    add("-n", "--runname", dest="runname", help="Name of the processing run, e.g. ddstack1")
    add("-d", "--description", dest="description", help="Description of the run")
    add("-p", "--projectid", dest="projectid", type=int, help="Project id (default: the session's project)")
    add("-C", "--commit", dest="commit", default=True, action="store_true", help="Write results to the database")
    add("--no-commit", dest="commit", action="store_false", help="Process without writing to the database")
    add("--continue", dest="continue_run", default=True, action="store_true",
        help="Continue the run from where it stopped (always: done images are never redone)")
    add("--no-wait", dest="wait", default=True, action="store_false",
        help="Stop once every image there is done, instead of waiting for new ones")
    add("--no-rejects", dest="no_rejects", default=False, action="store_true",
        help="Also skip images rejected in Appion's assessment (hidden and trashed ones are always skipped)")
    add("--reverse", dest="reverse", default=False, action="store_true", help="Newest images first")
    add("--limit", dest="limit", type=int, help="Process at most this many images, then stop")
    add("--tiltangle", dest="tiltangle", default="all", choices=TILT_CHOICES,
        help="Only images of this tilt: notilt (|a| <= 3°), hightilt (|a| >= 30°), lowtilt, minustilt, plustilt")
    add("--jobid", dest="jobid", type=int, default=0, help="ApAppionJobData id to set R while running, D when done")
    add("--jobtype", dest="jobtype", help="Job type recorded in ApAppionJobData")
    add("--nproc", dest="nproc", type=int, help="Dask worker processes on this machine (default: emlive's)")
    add("--parallel", dest="parallel", default=False, action="store_true", help="(no effect: emlive runs on Dask)")
    add("--clean", dest="clean", default=True, action="store_true", help="(no effect)")
    add("--no-clean", dest="clean", action="store_false", help="(no effect)")
    add("--config", dest="config", help="emlive TOML settings (engines, cluster, [leginon] databases)")
    return parser


NO_EFFECT_MOTION = {"fod": 2, "pbx": 128, "square": False, "trim": 0, "refimgid": None, "nrw": 1, "FmRef": 0,
                    "MaskCentrow": 0, "MaskCentcol": 0, "MaskSizecols": 1.0, "MaskSizerows": 1.0,
                    "force_cpu_flat": False, "Bft_local": None, "gpuid": 0}


def motion_parser() -> argparse.ArgumentParser:
    """``makeDDAlignMotionCor2_UCSF.py``'s own flags."""
    parser = argparse.ArgumentParser(add_help=False)
    add = parser.add_argument
    add("--align", dest="align", default=False, action="store_true", help="Align the frames (emlive always does)")
    add("--doseweight", dest="doseweight", default=False, action="store_true",
        help="Also register the dose-weighted sum (<preset>-a-DW)")
    add("--ddstartframe", dest="startframe", type=int, default=0, help="First frame summed (emlive: 0 only)")
    add("--alignlabel", dest="alignlabel", default="a", help="Aligned preset label: <preset>-<label>")
    add("--bin", dest="bin", type=float, default=1.0, help="Output binning (Fourier cropping)")
    add("--totaldose", dest="totaldose", type=float, help="Total dose of a movie, e/Å² (default: the preset's)")
    add("--Patchrows", dest="Patchrows", type=int, default=0, help="Patches along y (0: whole-frame alignment only)")
    add("--Patchcols", dest="Patchcols", type=int, default=0, help="Patches along x (0: whole-frame alignment only)")
    add("--Iter", dest="Iter", type=int, help="Most alignment iterations (default: the engine's)")
    add("--Tol", dest="Tol", type=float, help="Alignment tolerance, px (default: the engine's)")
    add("--Bft_global", dest="Bft_global", type=float, help="B-factor for alignment, px² (default: the engine's)")
    add("--Bft_local", dest="Bft_local", type=float, help="(no effect: one B-factor in emlive's engines)")
    add("--rendered_frame_size", dest="rendered_frame_size", type=int, default=1,
        help="EER: raw frames summed into one fraction")
    add("--eer_sampling", dest="eer_sampling", type=int, default=1, choices=(1, 2), help="EER: 1 = 4K, 2 = 8K")
    add("--gpuids", dest="gpuids", default="0", help="GPUs for GPU engines (MotionCor2/3), e.g. 0,1")
    add("--gpuid", dest="gpuid", type=int, default=0, help="(no effect: see --gpuids)")
    add("--engine", dest="engine", help="emlive's motion engine: native (default), motioncor2, motioncor3, relion")
    add("--alignoffset", dest="fod", type=int, default=2, help="(no effect)")
    add("--alignccbox", dest="pbx", type=int, default=128, help="(no effect)")
    add("--square", dest="square", default=False, action="store_true", help="(no effect)")
    add("--trim", dest="trim", type=int, default=0, help="(no effect)")
    add("--refimgid", dest="refimgid", type=int, help="(no effect)")
    add("--nrw", dest="nrw", type=int, default=1, help="(no effect)")
    add("--FmRef", dest="FmRef", type=int, default=0, help="(no effect: shifts are relative to frame 0)")
    for name in ("MaskCentrow", "MaskCentcol"):
        add(f"--{name}", dest=name, type=int, default=0, help="(no effect)")
    for name in ("MaskSizecols", "MaskSizerows"):
        add(f"--{name}", dest=name, type=float, default=1.0, help="(no effect)")
    add("--force_cpu_flat", dest="force_cpu_flat", default=False, action="store_true", help="(no effect)")
    return parser


NO_EFFECT_CTF = {"ddstackid": None, "num_frame_avg": 7, "bestdb": False}


def ctffind4_parser() -> argparse.ArgumentParser:
    """Classic ``ctffind4.py``'s own flags (defocus values in µm, as there)."""
    parser = argparse.ArgumentParser(add_help=False)
    add = parser.add_argument
    add("--ampcontrast", dest="ampcontrast", type=float, default=0.07, help="Amplitude contrast fraction")
    add("--fieldsize", dest="fieldsize", type=int, default=1024, help="Box of the power spectrum, px")
    add("--nominal", dest="nominal", type=float, help="Nominal defocus, µm (default: the scope's)")
    add("--resmin", dest="resmin", type=float, default=50.0, help="Lowest resolution fitted, Å")
    add("--resmax", dest="resmax", type=float, default=15.0, help="Highest resolution fitted, Å")
    add("--defstep", dest="defstep", type=float, default=0.1, help="Defocus search step, µm")
    add("--numstep", dest="numstep", type=int, default=25, help="Search steps either side of the nominal defocus")
    add("--dast", dest="dast", type=float, default=0.01, help="Expected astigmatism, µm (a restraint)")
    add("--minphaseshift", "--min_phase_shift", dest="min_phase_shift", type=float, default=10.0, help="Degrees")
    add("--maxphaseshift", "--max_phase_shift", dest="max_phase_shift", type=float, default=170.0, help="Degrees")
    add("--phasestep", "--phase_search_step", dest="phase_search_step", type=float, default=10.0, help="Degrees")
    add("--phaseplate", "--phase_plate", dest="shift_phase", default=False, action="store_true",
        help="Fit a phase-plate phase shift")
    add("--exhaust", "--exhaustive-search", dest="exhaustive", default=False, action="store_true",
        help="(emlive's search is always exhaustive over the range)")
    add("--bestdb", "--best-database", dest="bestdb", default=False, action="store_true", help="(no effect)")
    add("--ddstackid", dest="ddstackid", type=int, help="(no effect: the aligned preset's images are used)")
    add("--num_frame_avg", dest="num_frame_avg", type=int, default=7, help="(no effect)")
    add("--engine", dest="engine", help="emlive's CTF engine: native (default), ctffind4, ctffind5, gctf")
    return parser


def parse(prog: str, parsers: list[argparse.ArgumentParser], argv: list[str] | None,
          no_effect: dict[str, object]) -> argparse.Namespace:
    """Parse ``argv`` with the classic parsers; flags without effect here are logged."""
    parser = argparse.ArgumentParser(prog=prog, parents=parsers,
                                     description="emlive's drop-in replacement for classic Appion's " + prog)
    args = parser.parse_args(argv)
    if not args.sessionname and not args.expid:
        parser.error("give the session: --session NAME or --expid ID")
    if not args.runname:
        args.runname = os.path.basename(os.path.normpath(args.rundir))
    for name, default in no_effect.items():
        if getattr(args, name, default) != default:
            log.warning("%s: flag for %s has no effect with emlive's engines (ignored)", prog, name)
    return args
