"""The CTF step, declared once (DESIGN §6): fitted on motion correction's aligned (not
dose-weighted) sum, at its pixel size after binning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from emlive.ctf import ctffind, gctf
from emlive.ctf import native as ctf_native
from emlive.ctf.types import CtfParams, CtfResult
from emlive.motion.step import micrograph_of
from emlive.pipeline.step import Engine, Inputs, Step


def on_micrograph(run: Callable[..., CtfResult]) -> Callable[[Inputs, Path, CtfParams], CtfResult]:
    """A CTF engine ``run(micrograph, out_dir, optics, params, *, stem)`` as a step's engine."""

    def run_step(inputs: Inputs, out_dir: Path, params: CtfParams) -> CtfResult:
        micrograph, optics = micrograph_of(inputs)
        return run(micrograph, out_dir, optics, params, stem=inputs.stem)

    return run_step


CTF = Step(
    name="ctf",
    params=CtfParams,
    result=CtfResult,
    needs={"motion": ("micrograph_path", "pixel_size_a")},
    engines={
        "native": Engine(on_micrograph(ctf_native.estimate_ctf), ctf_native.ENGINE_VERSION),
        "ctffind4": Engine(on_micrograph(ctffind.estimate_ctf_ctffind4), ctffind.ENGINE_VERSION),
        "ctffind5": Engine(on_micrograph(ctffind.estimate_ctf_ctffind5), ctffind.ENGINE_VERSION),
        "gctf": Engine(on_micrograph(gctf.estimate_ctf), gctf.ENGINE_VERSION, gpu=True),
    },
    on_failure="exposure",
    description="Estimate defocus, astigmatism and fit resolution from the aligned sum (ctffind 4.1 outputs)",
)
