"""``makeDDAlignMotionCor2_UCSF.py``: align a Leginon session's movies of a preset with
emlive's motion engine (native by default) and register the results as classic Appion does.

Reads ``sinedon.cfg`` (or emlive's ``[leginon]``), takes classic Appion's flags
(:mod:`emlive.appion.flags`), holds the run folder's lock, runs emlive's per-exposure pipeline
(:func:`emlive.pipeline.exposure.process_exposure`, motion step only) on the configured Dask
cluster, and writes each result with the Appion sink as it comes back. Outputs of the engine
go to ``<rundir>/motion/``; the aligned sums are copied into the session's image path.
"""

from __future__ import annotations

import getpass
import logging
import socket
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from emlive.acquisition import Acquisition
from emlive.appion import flags
from emlive.appion.command import EXIT_FAILED_IMAGES, configure_logging, run_main
from emlive.appion.databases import Connections, connect
from emlive.appion.loop import Task, cluster_settings, follow_on_cluster, run_lock
from emlive.config import Settings, load_settings
from emlive.pipeline.exposure import ExposureResult, ExposureSpec, PipelineParams, process_exposure
from emlive.pipeline.params import step_params
from emlive.sinks import appion as sink
from emlive.sources import leginon
from emlive.tools import configure_tools

PROG = "makeDDAlignMotionCor2_UCSF.py"
JOBTYPE = "makeddrawframestack"
log = logging.getLogger(PROG)


def motion_overrides(args: Namespace) -> dict[str, Any]:
    """The motion step's params from the classic flags that emlive's engines have."""
    values: dict[str, Any] = {"bin_factor": args.bin, "patches": (max(1, args.Patchcols), max(1, args.Patchrows))}
    if args.engine:
        values["engine"] = args.engine
    if args.Iter is not None:
        values["max_iterations"] = args.Iter
    if args.Tol is not None:
        values["tolerance_px"] = args.Tol
    if args.Bft_global is not None:
        values["bfactor_px2"] = args.Bft_global
    return values


def acquisition_of(image: leginon.LeginonImage, args: Namespace) -> Acquisition:
    """The image's acquisition in emlive's terms; ValueError names what Leginon lacks."""
    total = args.totaldose or image.total_dose_e_a2
    if not total:
        raise ValueError(f"{image.filename}: preset {image.preset_name} has no dose in Leginon: give --totaldose")
    if not image.n_frames:
        raise ValueError(f"{image.filename}: CameraEMData has no frame count (nframes)")
    if image.gain_path is not None and not image.gain_path.is_file():
        raise ValueError(f"{image.filename}: its gain reference {image.gain_path} (NormImageData) is missing")
    eer = image.frames_format == "eer"
    frames = image.n_frames // args.rendered_frame_size if eer else image.n_frames
    if frames < 1:
        raise ValueError(f"{image.filename}: --rendered_frame_size {args.rendered_frame_size} is more than the "
                         f"{image.n_frames} EER frames")
    return Acquisition(
        pixel_size_a=image.pixel_size_a, voltage_kv=image.voltage_kv, cs_mm=image.cs_mm,
        dose_per_frame_e_a2=total / frames, eer_fractions=frames if eer else 40, eer_upsampling=args.eer_sampling,
        gain_path=image.gain_path, gain_rotation=image.gain_rotation, gain_flip=image.gain_flip,
    )


def run(args: Namespace) -> int:
    if args.startframe != 0:
        raise ValueError("--ddstartframe other than 0 is not supported by emlive's engines")
    settings = load_settings(Path(args.config) if args.config else None)
    gpu_ids = [int(i) for i in str(args.gpuids).split(",") if i.strip()] if args.engine in ("motioncor2", "motioncor3") else None
    settings = cluster_settings(settings, nproc=args.nproc, gpu_ids=gpu_ids)
    configure_tools(settings.tools)
    motion = step_params("motion", settings, {"motion": motion_overrides(args)})
    rundir = Path(args.rundir).resolve()
    db = connect(settings.leginon, session_name=args.sessionname, session_id=args.expid, project_id=args.projectid)
    try:
        with run_lock(rundir, PROG):
            return _loop(args, settings, motion, rundir, db)
    finally:
        db.close()


def _loop(args: Namespace, settings: Settings, motion: BaseModel, rundir: Path, db: Connections) -> int:
    from emlive.pipeline.registry import registry

    run = job = None
    done: set[int] = set()
    if args.commit:
        run = sink.start_motion_run(
            db.appion, session=db.session, preset=args.preset or "", rundir=rundir, runname=args.runname,
            binning=max(1, round(args.bin)), align_label=args.alignlabel, doseweight=args.doseweight,
        )
        job = sink.start_job(db.appion, job_id=args.jobid or None, path_id=run.path_id, runname=args.runname,
                             jobtype=args.jobtype or JOBTYPE, session=db.session, user=getpass.getuser(),
                             cluster=socket.gethostname())
        done = sink.done_motion_images(db.appion, run)
    images: dict[int, leginon.LeginonImage] = {}
    waiting_for_frames: set[int] = set()
    skipped: set[int] = set()
    unusable: dict[int, str] = {}

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
                acquisition = acquisition_of(image, args) if image.frames_path is not None else None
            except ValueError as err:  # this image's rows are incomplete: the others go on
                log.error("image %d: %s", image_id, err)
                unusable[image_id] = str(err)
                continue
            if leginon.skipped_for_tilt(image.tilt_deg, args.tiltangle):
                skipped.add(image_id)
                continue
            if acquisition is None:
                if image_id not in waiting_for_frames:
                    log.info("%s: no frames in %s yet", image.filename, db.session.frame_path)
                waiting_for_frames.add(image_id)
                continue
            waiting_for_frames.discard(image_id)
            images[image_id] = image
            spec = ExposureSpec(movie_path=image.frames_path, name=image.filename, out_dir=rundir)
            params = PipelineParams(acquisition=acquisition, steps={"motion": motion})
            tasks.append(Task(image_id, process_exposure, (spec, params)))
        return tasks

    def store(image_id: int, result: ExposureResult) -> None:
        image = images.pop(image_id)
        if run is not None:
            sink.store_motion(db.leginon, db.appion, run, image, result.results["motion"])
        done.add(image_id)
        log.info("%s: aligned (%d frames)", image.filename, result.results["motion"].n_frames)

    registry().step("motion").engine(str(getattr(motion, "engine")))  # an unknown engine fails here, before the cluster starts
    outcome = follow_on_cluster(settings, pending=pending, store=store, wait_for_new=args.wait, limit=args.limit)
    if job is not None:
        sink.finish_job(db.appion, job)
    failed = len(outcome.failed) + len(unusable)
    log.info("%d images aligned, %d failed%s", outcome.done, failed,
             f", {len(waiting_for_frames)} still without frames" if waiting_for_frames else "")
    return EXIT_FAILED_IMAGES if failed else 0


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    args = flags.parse(PROG, [flags.global_parser(), flags.motion_parser()], argv, flags.NO_EFFECT_MOTION)
    sys.exit(run_main(PROG, lambda: run(args)))


if __name__ == "__main__":
    main()
