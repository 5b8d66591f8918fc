"""The motion-correction step, declared once (DESIGN §6): its engines take the movie itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from emlive.acquisition import Acquisition, Optics
from emlive.motion import motioncor, relion
from emlive.motion import native as motion_native
from emlive.motion.types import MotionParams, MotionResult
from emlive.pipeline.step import Engine, Inputs, Step

def micrograph_of(inputs: Inputs, field: str = "micrograph_path") -> tuple[Path, Optics]:
    """The micrograph a step runs on and its optics: motion correction's output ``field`` at
    its pixel size, or (a single-file command, no motion result) the file given itself."""
    optics = Optics(**inputs.acquisition.model_dump(include=set(Optics.model_fields)))
    motion = inputs.results.get("motion")
    if motion is None:
        return inputs.source_path, optics
    return Path(getattr(motion, field)), optics.model_copy(update={"pixel_size_a": getattr(motion, "pixel_size_a")})



MovieEngine = Callable[..., MotionResult]


def on_movie(run: MovieEngine) -> Callable[[Inputs, Path, MotionParams], MotionResult]:
    """A motion engine ``run(movie, out_dir, acquisition, params, *, stem)`` as a step's engine."""

    def run_step(inputs: Inputs, out_dir: Path, params: MotionParams) -> MotionResult:
        if not isinstance(inputs.acquisition, Acquisition):
            raise ValueError(f"{inputs.source_path}: motion correction needs the dose per frame (an Acquisition)")
        return run(inputs.source_path, out_dir, inputs.acquisition, params, stem=inputs.stem)

    return run_step


MOTION = Step(
    name="motion",
    params=MotionParams,
    result=MotionResult,
    engines={
        "native": Engine(on_movie(motion_native.motion_correct), motion_native.ENGINE_VERSION),
        "relion": Engine(on_movie(relion.motion_correct), relion.ENGINE_VERSION),
        "motioncor2": Engine(on_movie(motioncor.motion_correct_motioncor2), motioncor.ENGINE_VERSION, gpu=True),
        "motioncor3": Engine(on_movie(motioncor.motion_correct_motioncor3), motioncor.ENGINE_VERSION, gpu=True),
    },
    on_failure="exposure",
    description="Align the movie's frames (global and local motion), write the aligned and dose-weighted sums",
)
