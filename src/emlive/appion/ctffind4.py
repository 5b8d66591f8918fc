"""``ctffind4.py``: estimate the CTF of a Leginon session's micrographs of a preset (usually
the aligned one, ``enn-a`` or ``enn-a-DW``) with emlive's CTF engine (native by default) and
write ``ApCtfData`` rows as classic ctffind4.py does.

Each image's micrograph is its MRC in the session's image path; the defocus search runs
``--numstep`` steps of ``--defstep`` either side of the nominal defocus (``--nominal`` or the
scope's), as classic ctffind4.py searches. Outputs go to ``<rundir>/opimages/``.
"""

from __future__ import annotations

import getpass
import logging
import math
import socket
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any, cast

import mrcfile

from emlive.acquisition import Optics
from emlive.appion import flags
from emlive.appion.command import EXIT_FAILED_IMAGES, configure_logging, run_main
from emlive.appion.databases import Connections, connect
from emlive.appion.loop import Task, cluster_settings, follow_on_cluster, run_lock
from emlive.config import Settings, load_settings
from emlive.ctf.types import CtfParams, CtfResult
from emlive.pipeline.params import step_params
from emlive.pipeline.step import Inputs
from emlive.sinks import appion as sink
from emlive.sources import leginon
from emlive.tools import configure_tools

PROG = "ctffind4.py"
JOBTYPE = "ctfestimate"
log = logging.getLogger(PROG)


def estimate_ctf(micrograph: Path, out_dir: Path, stem: str, optics: Optics, params: CtfParams) -> CtfResult:
    """The CTF step's engine on one micrograph (what a worker runs; as ``emlive ctf`` does)."""
    from emlive.pipeline.registry import registry

    engine = registry().step("ctf").engine(params.engine)
    out_dir.mkdir(parents=True, exist_ok=True)
    return engine.run(Inputs(source_path=micrograph, stem=stem, acquisition=optics), out_dir, params)


def search_range_a(args: Namespace, image: leginon.LeginonImage) -> tuple[float, float, float]:
    """(nominal, lowest, highest) defocus searched, Å: ``numstep`` steps of ``defstep`` (µm)
    either side of the nominal defocus, never below one step."""
    nominal_a = abs(args.nominal) * 1e4 if args.nominal is not None else image.nominal_defocus_a
    step_a = args.defstep * 1e4
    half_a = step_a * args.numstep
    return nominal_a, max(step_a, nominal_a - half_a), max(nominal_a + half_a, 2 * step_a)


def ctf_params(base: CtfParams, args: Namespace, image: leginon.LeginonImage, shape_px: tuple[int, int]) -> CtfParams:
    _, low_a, high_a = search_range_a(args, image)
    values: dict[str, Any] = {
        "min_res_a": args.resmin, "max_res_a": args.resmax, "min_defocus_a": low_a, "max_defocus_a": high_a,
        "tile_size_px": max(64, min(args.fieldsize, *shape_px)), "expected_astigmatism_a": args.dast * 1e4,
        "fit_phase_shift": args.shift_phase,
    }
    return base.model_copy(update=values)


def run(args: Namespace) -> int:
    if args.resmax >= args.resmin:
        raise ValueError(f"--resmax {args.resmax} Å must be a higher resolution (smaller) than --resmin {args.resmin} Å")
    settings = load_settings(Path(args.config) if args.config else None)
    settings = cluster_settings(settings, nproc=args.nproc)
    configure_tools(settings.tools)
    overrides = {"ctf": {"engine": args.engine}} if args.engine else {}
    base = cast(CtfParams, step_params("ctf", settings, overrides))
    rundir = Path(args.rundir).resolve()
    db = connect(settings.leginon, session_name=args.sessionname, session_id=args.expid, project_id=args.projectid)
    try:
        with run_lock(rundir, PROG):
            return _loop(args, settings, base, rundir, db)
    finally:
        db.close()


def _loop(args: Namespace, settings: Settings, base: CtfParams, rundir: Path, db: Connections) -> int:

    first = leginon.image_ids(db.leginon, db.session, args.preset)[:1]
    cs_mm = leginon.read_image(db.leginon, db.session, first[0]).cs_mm if first else leginon.DEFAULT_CS_MM
    run = job = None
    done: set[int] = set()
    if args.commit:
        recorded = sink.CtfFind4Params(
            ampcontrast=args.ampcontrast, fieldsize=args.fieldsize, cs_mm=cs_mm, resmin_a=args.resmin,
            defstep_a=args.defstep * 1e4, shift_phase=args.shift_phase,
            min_phase_shift_rad=math.radians(args.min_phase_shift) if args.shift_phase else None,
            max_phase_shift_rad=math.radians(args.max_phase_shift) if args.shift_phase else None,
            phase_search_step_rad=math.radians(args.phase_search_step) if args.shift_phase else None,
            bestdb=args.bestdb,
        )
        run = sink.start_ctf_run(db.appion, session=db.session, rundir=rundir, runname=args.runname, params=recorded)
        job = sink.start_job(db.appion, job_id=args.jobid or None, path_id=run.path_id, runname=args.runname,
                             jobtype=args.jobtype or JOBTYPE, session=db.session, user=getpass.getuser(),
                             cluster=socket.gethostname())
        done = sink.done_ctf_images(db.appion, run)
    images: dict[int, leginon.LeginonImage] = {}
    missing: set[int] = set()
    skipped: set[int] = set()
    unusable: dict[int, str] = {}
    out_dir = rundir / "opimages"

    def pending(room: int, skip: set[int]) -> list[Task]:
        db.reconnect_if_lost()
        ids = leginon.image_ids(db.leginon, db.session, args.preset, appion=db.appion, no_rejects=args.no_rejects)
        todo = [i for i in ids if i not in done and i not in skip and i not in skipped and i not in unusable]
        tasks: list[Task] = []
        for image_id in reversed(todo) if args.reverse else todo:
            if len(tasks) >= room:
                break
            try:
                image = leginon.read_image(db.leginon, db.session, image_id)
            except ValueError as err:  # this image's rows are incomplete: the others go on
                log.error("image %d: %s", image_id, err)
                unusable[image_id] = str(err)
                continue
            if leginon.skipped_for_tilt(image.tilt_deg, args.tiltangle):
                skipped.add(image_id)
                continue
            if not image.image_path.is_file():
                if image_id not in missing:
                    log.info("%s: no micrograph %s yet", image.filename, image.image_path)
                missing.add(image_id)
                continue
            missing.discard(image_id)
            with mrcfile.open(image.image_path, header_only=True, permissive=True) as mrc:
                shape_px = (int(mrc.header.ny), int(mrc.header.nx))
            images[image_id] = image
            optics = Optics(pixel_size_a=image.pixel_size_a, voltage_kv=image.voltage_kv, cs_mm=image.cs_mm,
                            amplitude_contrast=args.ampcontrast)
            params = ctf_params(base, args, image, shape_px)
            tasks.append(Task(image_id, estimate_ctf, (image.image_path, out_dir, image.filename, optics, params)))
        return tasks

    def store(image_id: int, result: CtfResult) -> None:
        image = images.pop(image_id)
        if run is not None:
            nominal_a, _, _ = search_range_a(args, image)
            sink.store_ctf(db.appion, run, image, result, amplitude_contrast=args.ampcontrast, cs_mm=image.cs_mm,
                           defocus_init_a=nominal_a)
        done.add(image_id)
        log.info("%s: defocus %.0f / %.0f Å, fit to %.1f Å", image.filename, result.defocus_u_a, result.defocus_v_a,
                 result.fit_resolution_a)

    outcome = follow_on_cluster(settings, pending=pending, store=store, wait_for_new=args.wait, limit=args.limit)
    if job is not None:
        sink.finish_job(db.appion, job)
    failed = len(outcome.failed) + len(unusable)
    log.info("%d images done, %d failed%s", outcome.done, failed,
             f", {len(missing)} micrographs missing" if missing else "")
    return EXIT_FAILED_IMAGES if failed else 0


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    args = flags.parse(PROG, [flags.global_parser(), flags.ctffind4_parser()], argv, flags.NO_EFFECT_CTF)
    sys.exit(run_main(PROG, lambda: run(args)))


if __name__ == "__main__":
    main()
