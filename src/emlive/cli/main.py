"""The ``emlive`` command line (typer). Logging is configured here and nowhere else."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from emlive.acquisition import Acquisition, Optics
from emlive.config import ConfigError, Settings, load_settings
from emlive.pipeline.exposure import PipelineParams
from emlive.ctf.types import CtfParams
from emlive.motion.types import MotionParams
from emlive.tools import ToolError, configure_tools

app = typer.Typer(
    name="emlive",
    help="Near-real-time cryo-EM preprocessing: motion correction, CTF, database, exports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # tables stay whole in logs and pipes
log = logging.getLogger("emlive")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="TOML settings file (default: $EMLIVE_CONFIG or ~/.config/emlive/emlive.toml)"),
]
Apix = Annotated[float, typer.Option("--apix", help="Pixel size of the movie/micrograph, Å")]
Kv = Annotated[float, typer.Option("--kv", help="Accelerating voltage, kV")]
Cs = Annotated[float, typer.Option("--cs", help="Spherical aberration, mm")]
Amp = Annotated[float, typer.Option("--amp", help="Amplitude contrast fraction")]
Dose = Annotated[float, typer.Option("--dose-per-frame", help="Exposure per frame (EER: per fraction), e/Å²")]
Gain = Annotated[Path | None, typer.Option("--gain", help="Gain reference (MRC or TIFF), multiplied into frames")]
EerFractions = Annotated[int, typer.Option("--eer-fractions", help="EER: fractions the raw frames are summed into")]
EerDosePerFraction = Annotated[
    float | None,
    typer.Option(
        "--eer-dose-per-fraction",
        help="EER: sum raw frames into fractions of about this exposure, e/Å² (instead of --eer-fractions; "
        "needs the total exposure: --eer-total-dose or the EER's totalDose metadata); raw frames left over "
        "at the end are not used (logged)",
    ),
]
EerTotalDose = Annotated[
    float | None, typer.Option("--eer-total-dose", help="EER: total exposure of the movie, e/Å² (for --eer-dose-per-fraction)")
]
EerUpsampling = Annotated[
    int, typer.Option("--eer-upsampling", min=1, max=2, help="EER: render at 1 = native 4K or 2 = 8K super-resolution")
]
GainRot = Annotated[
    int,
    typer.Option(
        "--gain-rot",
        min=0,
        max=3,
        help="Rotate the gain reference by N quarter turns clockwise as displayed with row 0 at the top "
        "(RELION --gain_rot / MotionCor2 -RotGain); applied before --gain-flip",
    ),
]
GainFlip = Annotated[
    str | None,
    typer.Option(
        "--gain-flip",
        help="Flip the gain reference after rotating: y = upside down (RELION --gain_flip 1, MotionCor2 "
        "-FlipGain 1), x = left to right (RELION 2, MotionCor2 2)",
    ),
]
Defects = Annotated[
    Path | None,
    typer.Option(
        "--defects",
        help="Detector defects: a MotionCor2/RELION text file of 'x y w h' rectangles (pixels, 0-based), or a "
        "mask image (MRC/TIFF, non-zero = bad); bad pixels are replaced",
    ),
]
Patches = Annotated[
    tuple[int, int] | None,
    typer.Option("--patches", help="Patches X Y for local motion (default 5 5; 1 1 = global alignment only)"),
]
Float16 = Annotated[bool, typer.Option("--float16", help="Write the micrographs as float16 (MRC mode 12)")]
Workers = Annotated[int | None, typer.Option("--workers", help="Local Dask worker processes (default: CPU count)")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, markup=False)],
    )
    import distributed  # noqa: F401  (it sets its loggers' levels on import; ours win after)

    for noisy in ("distributed", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)  # brackets in it are text
    return typer.Exit(2)


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        settings = load_settings(config, **overrides)
    except ConfigError as err:
        raise _fail(str(err)) from None
    configure_tools(settings.tools)  # external tools' paths, containers, timeouts for this process
    return settings


Model = TypeVar("Model", bound=BaseModel)


def _valid(model: type[Model], **values: object) -> Model:
    """``model(**values)``, or a clear error naming each bad parameter."""
    try:
        return model(**values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise _fail(f"invalid {model.__name__} parameters: {problems}") from None


def _detector_fields(
    *,
    gain_rot: int,
    gain_flip: str | None,
    defects: Path | None,
    eer_dose_per_fraction: float | None,
    eer_total_dose: float | None,
    eer_upsampling: int,
) -> dict[str, object]:
    """Acquisition fields of the detector flags (motioncorr and process share them)."""
    return {
        "gain_rotation": gain_rot,
        "gain_flip": gain_flip,
        "defects_path": defects.resolve() if defects else None,
        "eer_dose_per_fraction_e_a2": eer_dose_per_fraction,
        "eer_total_dose_e_a2": eer_total_dose,
        "eer_upsampling": eer_upsampling,
    }


def _run_batch(
    step: str,
    sources: list[Path],
    out_dir: Path,
    acquisition: Optics,
    params: BaseModel,
    describe: Callable[[Path, Any], list[str]],
) -> None:
    """Run the engine named in ``params`` of ``step`` on each file (the step reads it itself),
    one after the other in this process: start-up is paid once. Prints the lines ``describe``
    gives for each result, or why the file failed; the others are still done, and the command
    exits 1 if any failed (2 before starting, for a bad engine or output folder)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from emlive.pipeline.registry import registry
    from emlive.pipeline.step import Inputs

    try:
        run = registry().step(step).engine(str(getattr(params, "engine"))).run
        out_dir.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as err:
        raise _fail(str(err)) from None
    failed: list[Path] = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=len(sources) < 2) as progress:
        task = progress.add_task(step, total=len(sources))
        for source in sources:
            try:
                result = run(Inputs(source_path=source, stem=source.stem, acquisition=acquisition), out_dir, params)
            except (ValueError, OSError, ToolError) as err:  # bad input or a failing tool: the message says which
                failed.append(source)
                console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
            else:
                for line in describe(source, result):
                    out.print(line, highlight=False)
            progress.advance(task)
    if failed:
        console.print(
            f"[red]{len(failed)} of {len(sources)} failed:[/red] {escape(', '.join(str(path) for path in failed))}",
            highlight=False,
        )
        raise typer.Exit(2)


@app.command()
def motioncorr(
    movies: Annotated[list[Path], typer.Argument(help="Movies: MRC/MRCS, TIFF (incl. LZW) or EER (one or more)")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder")],
    apix: Apix,
    dose_per_frame: Dose,
    kv: Kv = 300.0,
    gain: Gain = None,
    gain_rot: GainRot = 0,
    gain_flip: GainFlip = None,
    defects: Defects = None,
    patches: Patches = None,
    eer_fractions: EerFractions = 40,
    eer_dose_per_fraction: EerDosePerFraction = None,
    eer_total_dose: EerTotalDose = None,
    eer_upsampling: EerUpsampling = 1,
    bin_factor: Annotated[float, typer.Option("--bin", help="Output binning by Fourier cropping")] = 1.0,
    float16: Float16 = False,
    engine: Annotated[str, typer.Option("--engine", help="Motion-correction engine")] = "native",
    config: ConfigOption = None,
) -> None:
    """Align movies: writes OUT/<stem>.mrc, OUT/<stem>_DW.mrc, OUT/<stem>.star (RELION 3.1) and
    OUT/<stem>_shifts.png for each."""
    settings = _settings(config)
    acq = _valid(
        Acquisition, pixel_size_a=apix, dose_per_frame_e_a2=dose_per_frame, voltage_kv=kv, gain_path=gain,
        eer_fractions=eer_fractions, **_detector_fields(
            gain_rot=gain_rot, gain_flip=gain_flip, defects=defects, eer_dose_per_fraction=eer_dose_per_fraction,
            eer_total_dose=eer_total_dose, eer_upsampling=eer_upsampling,
        ),
    )
    update: dict[str, object] = {"engine": engine, "bin_factor": bin_factor}
    if patches is not None:
        update["patches"] = patches
    if float16:
        update["float16"] = True
    params = _valid(MotionParams, **settings.motion.model_dump() | update)

    def describe(movie: Path, result: Any) -> list[str]:
        return [
            f"{movie.name}: {result.n_frames} frames, total drift {result.total_drift_a:.1f} Å "
            f"(early {result.early_drift_a:.1f}, late {result.late_drift_a:.1f}) → {result.micrograph_path}"
        ]

    _run_batch("motion", movies, out_dir, acq, params, describe)


@app.command()
def ctf(
    micrographs: Annotated[list[Path], typer.Argument(help="Micrographs (MRC; one or more)")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder")],
    apix: Apix,
    kv: Kv = 300.0,
    cs: Cs = 2.7,
    amp: Amp = 0.07,
    min_res: Annotated[float | None, typer.Option("--min-res", help="Lowest resolution fitted, Å")] = None,
    max_res: Annotated[float | None, typer.Option("--max-res", help="Highest resolution fitted, Å")] = None,
    min_defocus: Annotated[float | None, typer.Option("--min-defocus", help="Search start, Å")] = None,
    max_defocus: Annotated[float | None, typer.Option("--max-defocus", help="Search end, Å")] = None,
    phase_shift: Annotated[bool, typer.Option("--phase-shift", help="Fit a phase-plate phase shift")] = False,
    expected_astigmatism: Annotated[
        float | None,
        typer.Option("--expected-astigmatism", help="Astigmatism restraint: |U - V| much above this is penalised, Å"),
    ] = None,
    engine: Annotated[str, typer.Option("--engine", help="CTF engine")] = "native",
    config: ConfigOption = None,
) -> None:
    """Estimate the CTF of micrographs: writes OUT/<stem>.txt (ctffind 4.1), _avrot.txt, .png for each."""
    settings = _settings(config)
    update = {
        "min_res_a": min_res, "max_res_a": max_res, "min_defocus_a": min_defocus,
        "max_defocus_a": max_defocus, "engine": engine, "fit_phase_shift": phase_shift or None,
        "expected_astigmatism_a": expected_astigmatism,
    }
    optics = _valid(Optics, pixel_size_a=apix, voltage_kv=kv, cs_mm=cs, amplitude_contrast=amp)
    params = _valid(CtfParams, **settings.ctf.model_dump() | {k: v for k, v in update.items() if v is not None})

    def describe(micrograph: Path, result: Any) -> list[str]:
        line = (
            f"{micrograph.name}: defocus {result.defocus_u_a:.0f} / {result.defocus_v_a:.0f} Å, "
            f"azimuth {result.azimuth_deg:.1f}°, CC {result.cross_correlation:.3f}, "
            f"fit to {result.fit_resolution_a:.1f} Å → {result.output_txt_path}"
        )
        no_fit = f"{micrograph.name}: NO FIT — no Thon rings found; the defocus above is a guess"
        return [line] if result.fit_ok else [line, no_fit]

    _run_batch("ctf", micrographs, out_dir, optics, params, describe)


@app.command()
def process(
    raw_dir: Annotated[str, typer.Argument(help="Folder the microscope writes movies to, or a URL (s3://…)")],
    out_dir: Annotated[str, typer.Option("-o", "--out", help="Output folder (results, database, exports), or a URL")],
    apix: Apix,
    dose_per_frame: Dose,
    kv: Kv = 300.0,
    cs: Cs = 2.7,
    amp: Amp = 0.07,
    gain: Gain = None,
    gain_rot: GainRot = 0,
    gain_flip: GainFlip = None,
    defects: Defects = None,
    eer_fractions: EerFractions = 40,
    eer_dose_per_fraction: EerDosePerFraction = None,
    eer_total_dose: EerTotalDose = None,
    eer_upsampling: EerUpsampling = 1,
    patches: Patches = None,
    bin_factor: Annotated[float | None, typer.Option("--bin", help="Output binning by Fourier cropping")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Keep watching for new movies until SIGTERM/SIGINT")] = False,
    settle_s: Annotated[float | None, typer.Option("--settle-s", help="Seconds a file must stay unchanged")] = None,
    workers: Workers = None,
    motion_engine: Annotated[str | None, typer.Option("--motion-engine", help="native, relion, motioncor2, motioncor3")] = None,
    ctf_engine: Annotated[str | None, typer.Option("--ctf-engine", help="native, ctffind4, ctffind5, gctf")] = None,
    gpu_ids: Annotated[str | None, typer.Option("--gpu-ids", help="GPUs for GPU engines, e.g. 0,1 (one worker each)")] = None,
    database_url: Annotated[str | None, typer.Option("--database-url", help="Default: sqlite in OUT")] = None,
    steps: Annotated[
        str | None,
        typer.Option("--steps", help="Steps to run, e.g. motion,ctf,pick (see: emlive steps); default: motion, ctf, "
                     "thumbnail, and pick when --particle-diameter is given"),
    ] = None,
    particle_diameter: Annotated[
        float | None, typer.Option("--particle-diameter", help="Particle diameter, Å: turns picking on")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the whole pipeline on RAW: motion, CTF, thumbnails (and picking), database, exports in OUT/exports."""
    from emlive.cli.report import print_exposures, run_with_progress

    acq = _valid(
        Acquisition,
        pixel_size_a=apix, dose_per_frame_e_a2=dose_per_frame, voltage_kv=kv, cs_mm=cs,
        amplitude_contrast=amp, gain_path=gain.resolve() if gain else None, eer_fractions=eer_fractions,
        **_detector_fields(
            gain_rot=gain_rot, gain_flip=gain_flip, defects=defects, eer_dose_per_fraction=eer_dose_per_fraction,
            eer_total_dose=eer_total_dose, eer_upsampling=eer_upsampling,
        ),
    )
    overrides = _overrides(settle_s=settle_s, workers=workers, database_url=database_url)
    overrides |= _engine_overrides(motion_engine=motion_engine, ctf_engine=ctf_engine, gpu_ids=gpu_ids, overrides=overrides)
    motion = {key: value for key, value in (("patches", patches), ("bin_factor", bin_factor)) if value is not None}
    if motion:
        overrides["motion"] = dict(overrides.get("motion", {})) | motion  # type: ignore[call-overload]
    settings = _settings(config, **overrides)
    if particle_diameter is not None:
        picking = settings.steps.get("pick", {}) | {"diameter_a": particle_diameter}
        settings = settings.model_copy(update={"steps": settings.steps | {"pick": picking}})
    params = _pipeline(acq, settings, steps)
    from emlive.remote.session import plan_remote

    try:  # movies or outputs at a URL: checked, and given local folders (docs/remote.md)
        remote = plan_remote(raw_dir, out_dir, settings.remote.cache_dir)
    except (ValueError, OSError) as err:
        raise _fail(str(err)) from None
    raw, out_folder = (remote.raw_dir, remote.out_dir) if remote is not None else (Path(raw_dir), Path(out_dir))
    if not raw.is_dir():
        raise _fail(f"{raw}: no such folder; give the folder the movies are written to")
    try:
        session = run_with_progress(raw, out_folder, params, settings, watch=watch, signals=_install_signal_handlers(),
                                    remote=remote)
    except ValueError as err:  # a bad database URL, or a session recorded with other parameters
        raise _fail(str(err)) from None
    print_exposures(out, session)


def _pipeline(acq: Acquisition, settings: Settings, steps: str | None) -> PipelineParams:
    """The session's steps and their params, or a clear error naming what is wrong."""
    from emlive.pipeline.params import pipeline_params

    names = None if steps is None else [name.strip() for name in steps.split(",") if name.strip()]
    try:
        return pipeline_params(acq, settings, steps=names)
    except ValueError as err:
        raise _fail(str(err)) from None


@app.command()
def pick(
    micrographs: Annotated[list[Path], typer.Argument(help="Micrographs (MRC; one or more)")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder")],
    apix: Apix,
    diameter: Annotated[float, typer.Option("--diameter", help="Particle diameter, Å")],
    min_distance: Annotated[
        float | None, typer.Option("--min-distance", help="Closest two picks may be, Å (default: from the diameter)")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Score a pick must reach (default: chosen per micrograph)")
    ] = None,
    engine: Annotated[str, typer.Option("--engine", help="Picking engine: native, topaz")] = "native",
    config: ConfigOption = None,
) -> None:
    """Pick particles on micrographs: writes OUT/<stem>_autopick.star (RELION coordinates) and
    OUT/<stem>_picks.png for each."""
    from emlive.pick.types import PickParams

    settings = _settings(config)
    update = {"diameter_a": diameter, "min_distance_a": min_distance, "threshold": threshold, "engine": engine}
    params = _valid(PickParams, **settings.steps.get("pick", {}) | {k: v for k, v in update.items() if v is not None})
    optics = _valid(Optics, pixel_size_a=apix)

    def describe(micrograph: Path, result: Any) -> list[str]:
        return [f"{micrograph.name}: {result.n_particles} particles ({result.masked_fraction:.0%} masked) → "
                f"{result.coordinates_path}"]

    _run_batch("pick", micrographs, out_dir, optics, params, describe)


@app.command()
def dataset(
    source: Annotated[
        str, typer.Argument(help="The session's output folder (emlive process -o); with --verify alone: the dataset")
    ],
    dest: Annotated[str | None, typer.Option("-o", "--out", help="Where to write the dataset (a folder)")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check a dataset against its manifest (after writing it)")] = False,
    database_url: Annotated[str | None, typer.Option("--database-url", help="Default: sqlite in the session's folder")] = None,
    config: ConfigOption = None,
) -> None:
    """Write a publish-ready dataset of a session's accepted micrographs (manifest, provenance,
    README, figures, exports, files), or check one: emlive dataset --verify DIR."""
    from emlive.sinks.dataset import DatasetError, verify_dataset, write_dataset

    if dest is None and not verify:
        raise _fail("give -o DEST to write a dataset, or --verify DIR to check one")
    if dest is not None:
        from emlive.scripting import find_session

        settings = _settings(config, **_overrides(settle_s=None, workers=None, database_url=database_url))
        from emlive.remote.session import local_output

        try:  # a session processed into a URL: its local working copy (docs/remote.md)
            summary = write_dataset(find_session(local_output(source, settings.remote.cache_dir), settings=settings), dest)
        except (DatasetError, ValueError, OSError) as err:
            raise _fail(str(err)) from None
        out.print(f"{dest}: {summary.micrographs} micrographs, {summary.files} files "
                  f"({len(summary.copied)} copied, {len(summary.hashed)} hashed, {len(summary.written)} written, "
                  f"{len(summary.removed)} removed)", highlight=False)
    if verify:
        target = dest if dest is not None else source
        try:
            checked = verify_dataset(target)
        except DatasetError as err:
            console.print(f"[red]verify failed:[/red] {escape(str(err))}", highlight=False)
            raise typer.Exit(1) from None
        out.print(f"{target}: all {checked} files match the manifest", highlight=False)


@app.command("steps")
def list_steps() -> None:
    """List every step and engine installed (emlive's own and plugins'), with versions."""
    from rich.table import Table

    from emlive.pipeline.registry import registry

    found = registry()
    table = Table(title=escape("steps (choose with --steps or [pipeline] steps)"), title_justify="left")
    for column in ("step", "needs", "engine", "engine version", "GPU", "from", "what it does"):
        table.add_column(column)
    for name, step in sorted(found.steps.items()):
        for i, (engine_name, engine) in enumerate(sorted(step.engines.items())):
            table.add_row(
                name if i == 0 else "", ", ".join(step.needs) if i == 0 else "", engine_name, engine.version,
                "yes" if engine.gpu else "", found.origins.get(f"{name}.{engine_name}", ""),
                step.description if i == 0 else "",
            )
    out.print(table)
    for problem in found.problems:
        out.print(f"[red]not loaded:[/red] {escape(problem)}", highlight=False)


@app.command()
def demo(
    directory: Annotated[Path, typer.Argument(help="Where to write the demo session")] = Path("emlive-demo"),
    movies: Annotated[int, typer.Option("--movies", min=1, help="Number of synthetic movies")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the synthetic session")] = 0,
    workers: Workers = None,
) -> None:
    """Make a synthetic session with known drift and CTF, process it, compare with the truth."""
    from emlive.cli.report import compare_with_truth, run_with_progress
    from emlive.synth.session import load_truth, write_session

    truth_path = directory / "truth.json"
    if truth_path.exists():
        log.info("%s exists: reusing the synthetic session in %s", truth_path, directory)
    else:
        log.info("writing %d synthetic movies to %s", movies, directory / "raw")
        write_session(directory, n_movies=movies, seed=seed)
    truth = load_truth(truth_path)
    acq = truth.acquisition(directory.resolve())
    settings = _settings(None, **_overrides(settle_s=1.0, workers=workers, database_url=None))
    session = run_with_progress(
        directory / "raw", directory / "processed", _pipeline(acq, settings, None), settings, watch=False, signals=_install_signal_handlers()
    )
    if not compare_with_truth(out, session, truth):
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default: web.host, 127.0.0.1; 0.0.0.0 = every interface)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to listen on (default: web.port, 8000)")] = None,
    config: ConfigOption = None,
) -> None:
    """Run the service (API, dashboard, controller of every session started, notifications) until SIGTERM/SIGINT."""
    from emlive.web.service import Service, ServiceError

    web = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    settings = _settings(config, **({"web": web} if web else {}))
    if config is not None:  # every part of the service reads the same settings
        os.environ["EMLIVE_CONFIG"] = str(config.expanduser().resolve())
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    try:
        code = Service(settings).run()
    except (ServiceError, ValueError) as err:  # no data root, a bad database URL or secret key
        raise _fail(str(err)) from None
    raise typer.Exit(code)


user_app = typer.Typer(help="Users of the service: who may see which projects.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for scripts (Authorization: Bearer TOKEN).", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="Default: database_url, else sqlite in <data_root>/.emlive (as emlive serve)"),
]


def _service_database(config: Path | None, database_url: str | None) -> None:
    """Open the database ``emlive serve`` uses (or the one given) for a user/token command."""
    from emlive.web.service import ServiceError, open_database

    settings = _settings(config, **({"database_url": database_url} if database_url else {}))
    try:
        open_database(settings, sign_logins=False)
    except (ServiceError, ValueError) as err:
        raise _fail(str(err)) from None


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, '.', '_', '-')")],
    staff: Annotated[bool, typer.Option("--staff", help="Staff see and control every project")] = False,
    project: Annotated[
        list[str] | None, typer.Option("--project", help="A project the user may see and control (repeatable)")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read a dashboard login password from the first line of stdin")
    ] = False,
    database_url: DatabaseUrl = None,
    config: ConfigOption = None,
) -> None:
    """Add a user, or update one: its staff flag is set as given, projects are added, the password
    replaced when given. Without a password the user has API tokens only, no dashboard login."""
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise _fail("--password-stdin: stdin had no password on its first line")
    _service_database(config, database_url)
    from django.contrib.auth.models import User

    from emlive.web.access import add_user

    existed = User.objects.filter(username=name).exists()
    try:
        user = add_user(name, staff=staff, password=password, projects=tuple(project or ()))
    except ValueError as err:
        raise _fail(str(err)) from None
    projects = sorted(user.emlive_projects.values_list("project__name", flat=True))
    role = "staff (every project)" if user.is_staff else f"projects: {', '.join(projects) or 'none yet'}"
    login = "dashboard login" if user.has_usable_password() else "no dashboard login (tokens only)"
    out.print(f"user {name} {'updated' if existed else 'added'}: {role}; {login}", highlight=False)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="The user the token acts for")],
    database_url: DatabaseUrl = None,
    config: ConfigOption = None,
) -> None:
    """Create an API token for a user and print it as the last line (shown once; only its hash is
    stored)."""
    _service_database(config, database_url)
    from django.contrib.auth.models import User

    from emlive.web.access import create_token

    user = User.objects.filter(username=name).first()
    if user is None:
        raise _fail(f"no user {name!r}; add it first: emlive user add {name} [--staff] [--project P]")
    if not user.is_active:
        raise _fail(f"user {name!r} is deactivated; its tokens would not be accepted")
    token = create_token(user)
    out.print(f"new token for {name} (store it now: it is not shown again):", highlight=False)
    typer.echo(token)


@token_app.command("list")
def token_list(
    name: Annotated[str, typer.Argument(help="The user whose tokens to list")],
    database_url: DatabaseUrl = None,
    config: ConfigOption = None,
) -> None:
    """List a user's tokens: key id (the part after 'emlive_'), when made, when last used."""
    _service_database(config, database_url)
    from django.contrib.auth.models import User

    from emlive.db.models import ApiToken

    if not User.objects.filter(username=name).exists():
        raise _fail(f"no user {name!r}; add it first: emlive user add {name} [--staff] [--project P]")
    for token in ApiToken.objects.filter(user__username=name).order_by("created_at"):
        used = f"last used {token.last_used_at:%Y-%m-%d %H:%M} UTC" if token.last_used_at else "never used"
        out.print(f"{token.key_id}  made {token.created_at:%Y-%m-%d %H:%M} UTC  {used}", highlight=False)


@token_app.command("revoke")
def token_revoke(
    key_id: Annotated[str, typer.Argument(help="The token's key id (from 'emlive token list'), or the whole token")],
    database_url: DatabaseUrl = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a token: requests carrying it are refused from now on."""
    _service_database(config, database_url)
    from emlive.db.models import ApiToken
    from emlive.web.access import TOKEN_PREFIX

    if key_id.startswith(TOKEN_PREFIX):
        key_id = key_id.removeprefix(TOKEN_PREFIX).split("_", 1)[0]
    token = ApiToken.objects.select_related("user").filter(key_id=key_id).first()
    if token is None:
        raise _fail(f"no token with key id {key_id!r}; see the key ids with: emlive token list USER")
    token.delete()
    out.print(f"token {key_id} of {token.user.username} revoked", highlight=False)


def _overrides(*, settle_s: float | None, workers: int | None, database_url: str | None) -> dict[str, object]:
    """CLI flags as settings overrides (unset flags leave the configured values alone)."""
    overrides: dict[str, object] = {}
    if settle_s is not None:
        overrides["watch"] = {"settle_s": settle_s}
    if workers is not None:
        overrides["cluster"] = {"n_workers": workers}
    if database_url is not None:
        overrides["database_url"] = database_url
    return overrides


def _engine_overrides(
    *, motion_engine: str | None, ctf_engine: str | None, gpu_ids: str | None, overrides: dict[str, object]
) -> dict[str, object]:
    """``--motion-engine``/``--ctf-engine``/``--gpu-ids`` as settings overrides, names checked."""
    from emlive.pipeline.registry import registry

    extra: dict[str, object] = {}
    for step, name in (("motion", motion_engine), ("ctf", ctf_engine)):
        if name is not None:
            try:
                registry().step(step).engine(name)
            except ValueError as err:
                raise _fail(str(err)) from None
            extra[step] = {"engine": name}
    if gpu_ids is not None:
        try:
            ids = [int(part) for part in gpu_ids.split(",") if part.strip()]
        except ValueError:
            raise _fail(f"--gpu-ids {gpu_ids!r}: give device numbers separated by commas, e.g. 0,1") from None
        cluster = dict(overrides.get("cluster", {}))  # type: ignore[call-overload]
        extra["cluster"] = cluster | {"gpu_ids": ids}
    return extra


def _install_signal_handlers():
    """SIGTERM/SIGINT once: finish the exposures in flight and exit 0; twice: leave them."""
    from emlive.runtime.loop import StopSignals

    signals = StopSignals(threading.Event(), threading.Event())

    def handler(signum: int, _frame: object) -> None:
        if signals.stop.is_set():
            log.warning("second %s: leaving exposures in flight to be processed next time", signal.Signals(signum).name)
            signals.abandon.set()
        else:
            log.warning(
                "%s: finishing exposures in flight (signal again to leave them for next time)",
                signal.Signals(signum).name,
            )
            signals.stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return signals


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
