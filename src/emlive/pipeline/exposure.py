"""process_exposure(): one movie through motion correction, CTF estimation and a thumbnail.

This is what a Dask worker runs. It touches files only through the steps (each writes its
outputs atomically and its sidecar last) and never the database: it returns plain data for the
controller to store.

Output layout under the session's output folder, for a movie ``raw/<name>.<ext>``::

    motion/<name>.mrc  <name>_DW.mrc  <name>.star  <name>.motion.json
    ctf/<name>.txt  <name>_avrot.txt  <name>.png  <name>.ctf.json
    thumbnails/<name>.png  <name>.thumbnail.json
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from emlive.acquisition import Acquisition, Optics
from emlive.ctf.types import CtfParams, CtfResult
from emlive.motion.types import MotionParams, MotionResult
from emlive.pipeline.steps import NeedsCompute, StepRecord, engine, run_step
from emlive.pipeline.thumbnail import Thumbnail

Result = TypeVar("Result", bound=BaseModel)


class ExposureSpec(BaseModel):
    """Which movie, and where its outputs go. ``name`` is its path under raw/ minus the suffix."""

    model_config = ConfigDict(frozen=True)

    movie_path: Path
    name: str
    out_dir: Path

    def step_dir(self, step: str) -> Path:
        return (self.out_dir / step / self.name).parent

    @property
    def stem(self) -> str:
        return Path(self.name).name

    def sidecar_path(self, step: str) -> Path:
        return self.step_dir(step) / f"{self.stem}.{step}.json"


class PipelineParams(BaseModel):
    """Everything that shapes an exposure's results: the session's acquisition and step params."""

    model_config = ConfigDict(frozen=True)

    acquisition: Acquisition
    motion: MotionParams = MotionParams()
    ctf: CtfParams = CtfParams()


class ExposureResult(BaseModel):
    motion: MotionResult
    ctf: CtfResult
    thumbnail: Thumbnail
    steps: list[StepRecord]


def process_exposure(spec: ExposureSpec, params: PipelineParams) -> ExposureResult:
    """Run (or reuse the checkpoints of) every step of one exposure."""
    return _walk(spec, params, compute=True)


def completed_result(spec: ExposureSpec, params: PipelineParams) -> ExposureResult | None:
    """The exposure's result from its checkpoints alone, or None if any step must still run."""
    try:
        return _walk(spec, params, compute=False)
    except NeedsCompute:
        return None


def _walk(spec: ExposureSpec, params: PipelineParams, *, compute: bool) -> ExposureResult:
    acq, motion_params, ctf_params = params.acquisition, params.motion, params.ctf

    def in_step_dir(step: str, run: Callable[[Path], Result]) -> Callable[[], Result] | None:
        """The step's computation (``run`` given its output folder), or None to only reuse."""
        if not compute:
            return None
        folder = spec.step_dir(step)

        def call() -> Result:
            folder.mkdir(parents=True, exist_ok=True)
            return run(folder)

        return call

    run_motion = engine("motion", motion_params.engine).run
    motion, motion_record = run_step(
        "motion",
        engine_name=motion_params.engine,
        params={"acquisition": acq.model_dump(mode="json"), "motion": motion_params.model_dump(mode="json")},
        input_path=spec.movie_path,
        sidecar_path=spec.sidecar_path("motion"),
        result_type=MotionResult,
        compute=in_step_dir("motion", lambda out: run_motion(spec.movie_path, out, acq, motion_params, stem=spec.stem)),
    )

    # The CTF is fitted on the aligned (not dose-weighted) sum, at its pixel size after binning.
    optics = Optics(**acq.model_dump(include=set(Optics.model_fields)) | {"pixel_size_a": motion.pixel_size_a})
    run_ctf = engine("ctf", ctf_params.engine).run
    ctf, ctf_record = run_step(
        "ctf",
        engine_name=ctf_params.engine,
        params={"optics": optics.model_dump(mode="json"), "ctf": ctf_params.model_dump(mode="json")},
        input_path=motion.micrograph_path,
        sidecar_path=spec.sidecar_path("ctf"),
        result_type=CtfResult,
        compute=in_step_dir("ctf", lambda out: run_ctf(motion.micrograph_path, out, optics, ctf_params, stem=spec.stem)),
    )

    run_thumbnail = engine("thumbnail", "native").run
    thumbnail, thumbnail_record = run_step(
        "thumbnail",
        engine_name="native",
        params={},
        input_path=motion.dose_weighted_path,
        sidecar_path=spec.sidecar_path("thumbnail"),
        result_type=Thumbnail,
        compute=in_step_dir("thumbnail", lambda out: run_thumbnail(motion.dose_weighted_path, out / f"{spec.stem}.png")),
    )
    return ExposureResult(
        motion=motion, ctf=ctf, thumbnail=thumbnail, steps=[motion_record, ctf_record, thumbnail_record]
    )
