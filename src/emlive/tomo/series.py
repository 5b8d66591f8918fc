"""The tilt-series group step: what a Dask worker runs for one tilt series (DESIGN §6, groups).

Two functions, both run on workers and neither touching the database:

- :func:`prepare_tilt` — as each tilt's motion correction is stored: its aligned sum (not dose
  weighted) binned by Fourier cropping to the series' working pixel size (~10 Å), and its mean
  counts, written to ``OUT/tomo/<series>/tilts/<stem>.mrc`` (+ ``.json``). The series step then
  reads 41 small images instead of 41 full-size micrographs, so the tomogram follows the last
  tilt by seconds.
- :func:`run_series` — once the series is complete (and again when it grows): reads the prepared
  tilts, decides which views to leave out (dark or blank, failed CTF, excessive drift, a movie
  that failed or never came), weights each tilt by its accumulated dose, aligns the stack
  (sorted by tilt angle), reconstructs a tomogram by weighted back-projection, and writes
  under ``OUT/tomo/<series>/``::

      <name>.st  <name>.rawtlt  <name>.tlt  <name>.xf     IMOD: the aligned views (binned,
                                                          dose weighted, by tilt angle), the
                                                          nominal and used angles, transforms
      <name>_rec.mrc                                      the tomogram (z, y, x), Å/px in header
      <name>_slice.png  <name>_montage.png                central XY slice; every tilt that has an
                                                          image (left-out ones too), by angle
      <name>.series.json                                  the sidecar, written last

The sidecar's key hashes the parameters and every member's input (its prepared image's size
and mtime, angle, pre-exposure, motion and CTF values); a series whose sidecar matches and
whose outputs exist is not recomputed (a restart, a duplicate task).

Conventions: angles in degrees; the tilt axis angle in the image plane from +y (rows),
counter-clockwise positive (SerialEM's "Tilt axis angle", IMOD's and RELION's); shifts in px of
the binned stack, columns (x, y).
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError

import emlive
from emlive.io.atomic import atomic_write_text
from emlive.io.mrc import read_mrc, write_mrc_atomic
from emlive.io.png import write_png_atomic

__all__ = [
    "PreparedTilt",
    "SeriesParams",
    "SeriesResult",
    "SeriesSpec",
    "SeriesTilt",
    "completed_series",
    "prepare_tilt",
    "reconstruct",
    "run_series",
    "series_key",
]


class SeriesParams(BaseModel):
    """Processing options of the tilt-series step (configuration table ``[tomo.series]``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Literal["native", "aretomo2", "aretomo3", "imod"] = Field(
        "native",
        description="Alignment engine: native (cross-correlation with cosine stretching, axis refinement), AreTomo2/3 "
        "(GPU) or IMOD's batchruntomo (patch tracking), as [tools.aretomo2|aretomo3|imod] configure them; the "
        "tomogram is reconstructed natively (weighted back-projection) from the engine's alignment",
    )
    target_pixel_size_a: PositiveFloat = Field(10.0, description="Pixel size the stack is binned to, Å")
    thickness_a: PositiveFloat = Field(3000.0, description="Thickness of the reconstructed volume, Å")
    refine_axis: bool = Field(True, description="Refine the tilt-axis angle during alignment")
    fiducial_diameter_a: PositiveFloat | None = Field(
        100.0,
        description="Gold fiducials' diameter, Å (native engine): they are tracked where at least 6 are followed "
        "(the model then fits true points: the axis to a few 0.1°), else patches are (lamellae); None: patches only",
    )
    dose_weight: bool = Field(True, description="Weight each tilt by its accumulated dose")
    dark_fraction: float = Field(
        0.25, gt=0.0, lt=1.0, description="A tilt whose mean counts are below this fraction of the series' median is dark"
    )
    max_drift_a: PositiveFloat = Field(200.0, description="A tilt whose movie drifted more than this is left out, Å")
    exclude_failed_ctf: bool = Field(True, description="Leave out tilts whose CTF fit found no Thon rings")


class SeriesTilt(BaseModel):
    """One tilt of a series as the controller hands it to the worker."""

    model_config = ConfigDict(frozen=True)

    z_value: int
    movie_name: str
    tilt_angle_deg: float
    pre_exposure_e_a2: float = Field(0.0, description="Exposure accumulated before this tilt, e/Å²")
    micrograph_path: Path | None = Field(None, description="Its aligned sum (not dose weighted); None when it has none")
    reason: str | None = Field(None, description="Why the tilt cannot be used (its movie failed or never came)")
    total_drift_a: float | None = None
    ctf_fit_ok: bool | None = None
    defocus_u_a: float | None = None


class SeriesSpec(BaseModel):
    """Which series, where its outputs go, and the optics of its micrographs."""

    model_config = ConfigDict(frozen=True)

    name: str
    out_dir: Path = Field(description="OUT/tomo/<name>")
    tilts: tuple[SeriesTilt, ...]
    tilt_axis_deg: float = Field(description="Nominal tilt axis angle (the mdoc's), °")
    voltage_kv: float
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07

    @property
    def sidecar_path(self) -> Path:
        return self.out_dir / f"{self.name}.series.json"

    def prepared_path(self, tilt: SeriesTilt) -> Path:
        """Where a tilt's binned image goes: ``tilts/<movie stem>.mrc``."""
        return self.out_dir / "tilts" / f"{Path(tilt.movie_name).stem}.mrc"


class PreparedTilt(BaseModel):
    """A tilt binned for the series: its image and the numbers quality is judged on."""

    model_config = ConfigDict(frozen=True)

    path: Path
    pixel_size_a: float
    mean_counts: float = Field(description="Mean of the aligned sum (counts per pixel of the micrograph)")
    source_size_xy: tuple[int, int] = Field(description="The micrograph's size (nx, ny), px")
    source_pixel_size_a: float
    source_size_bytes: int
    source_mtime_ns: int


class SeriesResult(BaseModel):
    """What the group step found and wrote (paths absolute)."""

    model_config = ConfigDict(frozen=True)

    key: str
    engine: str
    engine_version: str
    alignment_method: str = Field("", description="What the alignment followed: beads or patches (native), or the engine")
    pixel_size_a: float = Field(description="Pixel size of the stack and tomogram, Å")
    tilt_axis_deg: float = Field(description="Tilt axis angle used (refined when refine_axis), °")
    residual_px: float | None = Field(description="Alignment residual, px of the stack (RMS; IMOD's mean; None: "
                                      "the engine reports none)")
    shifts_px: dict[int, tuple[float, float]] = Field(description="Per used tilt (z value): (x, y) shift, px")
    residual_per_tilt_px: dict[int, float]
    exclusions: dict[int, str] = Field(description="Tilts left out (z value) and why")
    used_z_values: tuple[int, ...] = Field(description="The tilts in the stack, by tilt angle")
    stack_path: Path
    rawtlt_path: Path
    tlt_path: Path
    xf_path: Path
    tomogram_path: Path
    central_slice_png_path: Path
    montage_png_path: Path
    tomogram_shape_zyx: tuple[int, int, int]
    stack_size_xy: tuple[int, int] = Field(description="The stack's image size (nx, ny), px of pixel_size_a")
    micrograph_size_xy: tuple[int, int] = Field(description="The tilts' aligned sums' size (nx, ny), px")
    micrograph_pixel_size_a: float
    voltage_kv: float
    timings_s: dict[str, float]
    started_at: datetime
    finished_at: datetime
    host: str = ""

    def output_paths(self) -> list[Path]:
        return [self.stack_path, self.rawtlt_path, self.tlt_path, self.xf_path, self.tomogram_path,
                self.central_slice_png_path, self.montage_png_path]


# --- per tilt --------------------------------------------------------------------------------


def prepare_tilt(micrograph_path: Path, out_path: Path, *, target_pixel_size_a: float) -> PreparedTilt:
    """Bin one tilt's aligned sum to ``target_pixel_size_a`` (Fourier cropping; never finer than
    it is) and measure its mean counts; write ``out_path`` (MRC) and its ``.json`` last.
    Reuses them when the json names the same source file (size, mtime) and pixel size."""
    from emlive.tomo.weighting import bin_to

    sidecar = out_path.with_suffix(".json")
    stat = micrograph_path.stat()
    try:
        done = PreparedTilt.model_validate_json(sidecar.read_bytes())
        if (done.source_size_bytes, done.source_mtime_ns) == (stat.st_size, stat.st_mtime_ns) and done.path.exists():
            return done
    except (FileNotFoundError, ValidationError, ValueError):
        pass
    image, pixel_size_a = read_mrc(micrograph_path)
    if pixel_size_a is None:
        raise ValueError(f"{micrograph_path}: the MRC header has no pixel size; cannot bin it to {target_pixel_size_a} Å")
    image = np.asarray(image, dtype=np.float32)
    mean_counts = float(image.mean())
    binned, binned_a = bin_to(image[None], pixel_size_a=pixel_size_a, target_pixel_size_a=target_pixel_size_a)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_mrc_atomic(out_path, np.asarray(binned[0], dtype=np.float32), pixel_size_a=binned_a)
    prepared = PreparedTilt(path=out_path.absolute(), pixel_size_a=float(binned_a), mean_counts=mean_counts,
                            source_size_xy=(image.shape[1], image.shape[0]), source_pixel_size_a=pixel_size_a,
                            source_size_bytes=stat.st_size, source_mtime_ns=stat.st_mtime_ns)
    atomic_write_text(sidecar, prepared.model_dump_json(indent=1))
    return prepared


def _stamp(path: Path | None) -> list[int] | None:
    try:
        stat = path.stat() if path is not None else None
    except FileNotFoundError:
        return None
    return None if stat is None else [stat.st_size, stat.st_mtime_ns]


# --- per series ------------------------------------------------------------------------------


def series_key(spec: SeriesSpec, params: SeriesParams) -> str:
    """SHA-256 of what the series' result depends on: the parameters and each member's input."""
    members = [
        {**tilt.model_dump(mode="json"), "micrograph": _stamp(tilt.micrograph_path)}
        for tilt in sorted(spec.tilts, key=lambda t: t.z_value)
    ]
    keyed = {"params": params.model_dump(mode="json"), "tilt_axis_deg": spec.tilt_axis_deg,
             "voltage_kv": spec.voltage_kv, "tilts": members, "engine_version": _engine_version()}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


def _engine_version() -> str:
    return emlive.__version__


def completed_series(spec: SeriesSpec, params: SeriesParams) -> SeriesResult | None:
    """The series' result from its sidecar when it matches the current inputs and its outputs
    exist (nothing to compute), else None."""
    try:
        result = SeriesResult.model_validate_json(spec.sidecar_path.read_bytes())
    except (FileNotFoundError, ValidationError, ValueError):
        return None
    if result.key != series_key(spec, params) or not all(p.exists() for p in result.output_paths()):
        return None
    return result


def _exclusions(spec: SeriesSpec, prepared: dict[int, PreparedTilt], params: SeriesParams) -> dict[int, str]:
    """Why each tilt that cannot be used is left out, by z value (emlive.tomo.quality's reasons
    for the tilts that have an image)."""
    from emlive.tomo.quality import exclusions

    reasons: dict[int, str] = {}
    usable = []
    for tilt in spec.tilts:
        if tilt.reason:
            reasons[tilt.z_value] = tilt.reason
        elif tilt.z_value not in prepared:
            reasons[tilt.z_value] = "no aligned sum (its motion correction did not finish)"
        else:
            usable.append(tilt)
    if usable:
        judged = exclusions(
            np.array([prepared[t.z_value].mean_counts for t in usable], dtype=np.float64),
            ctf_failed=np.array([params.exclude_failed_ctf and t.ctf_fit_ok is False for t in usable]),
            drift_a=np.array([np.nan if t.total_drift_a is None else t.total_drift_a for t in usable]),
            max_drift_a=params.max_drift_a,
            dark_fraction=params.dark_fraction,
        )
        for tilt, reason in zip(usable, judged, strict=True):
            if reason:
                reasons[tilt.z_value] = reason
    return reasons


def run_series(spec: SeriesSpec, params: SeriesParams) -> SeriesResult:
    """Align and reconstruct one tilt series (see the module doc); reuses a matching sidecar.

    Raises ``ValueError`` (the message says why) when fewer than 3 tilts can be used.
    """
    if (done := completed_series(spec, params)) is not None:
        return done
    from emlive.tomo.align import align_tilt_series
    from emlive.tomo.weighting import dose_weight

    started_at, timings = datetime.now(UTC), {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    key = series_key(spec, params)
    prepared = {
        t.z_value: prepare_tilt(t.micrograph_path, spec.prepared_path(t), target_pixel_size_a=params.target_pixel_size_a)
        for t in spec.tilts if not t.reason and t.micrograph_path is not None
    }
    lap("prepare")
    exclusions = _exclusions(spec, prepared, params)
    used = sorted((t for t in spec.tilts if t.z_value not in exclusions), key=lambda t: (t.tilt_angle_deg, t.z_value))
    if len(used) < 3:
        raise ValueError(
            f"tilt series {spec.name}: only {len(used)} of {len(spec.tilts)} tilts can be used "
            f"({'; '.join(f'z {z}: {r}' for z, r in sorted(exclusions.items())) or 'none prepared'}); "
            "a tomogram needs at least 3"
        )
    every = sorted((t for t in spec.tilts if t.z_value in prepared), key=lambda t: (t.tilt_angle_deg, t.z_value))
    read = {t.z_value: read_mrc(prepared[t.z_value].path)[0].astype(np.float32) for t in every}
    images = [read[t.z_value] for t in used]
    pixel_size_a = prepared[used[0].z_value].pixel_size_a
    if len({im.shape for im in read.values()}) != 1:
        raise ValueError(f"tilt series {spec.name}: its tilts have different sizes "
                         f"({sorted({im.shape for im in read.values()})}); all its movies must be of one camera size")
    stack = np.stack(images)
    angles = np.array([t.tilt_angle_deg for t in used], dtype=np.float64)
    lap("read")
    if params.dose_weight:
        stack = dose_weight(stack, np.array([t.pre_exposure_e_a2 for t in used]), pixel_size_a=pixel_size_a,
                            voltage_kv=spec.voltage_kv)
        lap("dose_weight")
    thickness_px = max(8, int(round(params.thickness_a / pixel_size_a)))
    if params.engine == "native":
        alignment = align_tilt_series(
            stack, angles, tilt_axis_deg=spec.tilt_axis_deg, refine_axis=params.refine_axis,
            bead_diameter_px=None if params.fiducial_diameter_a is None else params.fiducial_diameter_a / pixel_size_a,
        )
        method = alignment.method
        shifts, axis_deg = np.asarray(alignment.shifts_px), float(alignment.tilt_axis_deg)
        residual_px: float | None = float(alignment.residual_px)
        per_tilt = np.asarray(alignment.residual_per_tilt_px, dtype=np.float64)
    else:
        method = params.engine
        shifts, axis_deg, residual_px, dropped = _external_alignment(
            spec, params, stack, angles, used, pixel_size_a=pixel_size_a, thickness_px=thickness_px
        )
        per_tilt = np.full(len(used), np.nan)
        keep = [i for i in range(len(used)) if i not in dropped]
        for i, reason in dropped.items():
            exclusions[used[i].z_value] = reason
        if len(keep) < 3:
            raise ValueError(f"tilt series {spec.name}: {params.engine} aligned only {len(keep)} views; "
                             "a tomogram needs at least 3")
        used, stack, angles = [used[i] for i in keep], stack[keep], angles[keep]
        shifts, per_tilt = shifts[keep], per_tilt[keep]
    lap("align")
    volume = reconstruct(stack, angles, tilt_axis_deg=axis_deg, shifts_px=shifts, thickness_px=thickness_px,
                         workers=_dask_workers())
    lap("reconstruct")
    views = np.stack([read[t.z_value] for t in every])
    paths = _write_outputs(spec, stack, angles, shifts, axis_deg, volume, pixel_size_a, views)
    lap("write")
    z_used = tuple(t.z_value for t in used)
    result = SeriesResult(
        key=key, engine=params.engine, engine_version=_engine_version(), alignment_method=method,
        pixel_size_a=pixel_size_a,
        tilt_axis_deg=axis_deg, residual_px=residual_px,
        shifts_px={z: (float(s[0]), float(s[1])) for z, s in zip(z_used, shifts, strict=True)},
        residual_per_tilt_px={z: float(r) for z, r in zip(z_used, per_tilt, strict=True) if math.isfinite(r)},
        exclusions=exclusions, used_z_values=z_used, tomogram_shape_zyx=tuple(int(n) for n in volume.shape),
        stack_size_xy=(int(stack.shape[2]), int(stack.shape[1])),
        micrograph_size_xy=prepared[used[0].z_value].source_size_xy,
        micrograph_pixel_size_a=prepared[used[0].z_value].source_pixel_size_a, voltage_kv=spec.voltage_kv,
        timings_s=timings, started_at=started_at, finished_at=datetime.now(UTC), host=socket.gethostname(),
        **paths,
    )
    atomic_write_text(spec.sidecar_path, result.model_dump_json(indent=1))
    return result


def slab_bounds(ny: int, n_slabs: int) -> list[tuple[int, int]]:
    """``n_slabs`` row ranges ``[start, stop)`` covering ``ny`` rows, as even as can be."""
    edges = np.linspace(0, ny, max(1, min(n_slabs, ny)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def back_project_slab(
    stack: np.ndarray,
    tilt_angles_deg: np.ndarray,
    *,
    tilt_axis_deg: float,
    shifts_px: np.ndarray,
    thickness_px: int,
    rows: tuple[int, int],
) -> np.ndarray:
    """Rows ``[start, stop)`` (along the tilt axis, the volume's y) of the weighted
    back-projection of the whole stack, exactly: every row is reconstructed on its own, and a
    slab centred ``c`` rows from the volume's centre is the volume of views shifted by
    ``R(α) (0, c)`` (:mod:`emlive.tomo.geometry`), interpolated at the same image positions."""
    from emlive.tomo.geometry import rotation_matrix
    from emlive.tomo.reconstruct import back_project

    ny, nx = stack.shape[1:]
    start, stop = rows
    centre = (start + stop - 1) / 2.0 - (ny - 1) / 2.0
    offset = rotation_matrix(tilt_axis_deg) @ np.array([0.0, centre])
    return back_project(stack, tilt_angles_deg, tilt_axis_deg=tilt_axis_deg,
                        shifts_px=np.asarray(shifts_px, dtype=np.float64) + offset, thickness_px=thickness_px,
                        shape_yx=(stop - start, nx))


def reconstruct(
    stack: np.ndarray,
    tilt_angles_deg: np.ndarray,
    *,
    tilt_axis_deg: float,
    shifts_px: np.ndarray,
    thickness_px: int,
    workers: int = 1,
    slabs: int | None = None,
) -> np.ndarray:
    """The tomogram (z, y, x) by weighted back-projection, in ``slabs`` slabs along the tilt axis
    (default: one per Dask worker thread when run on a Dask worker, ``workers``), computed as
    Dask tasks on the cluster's workers when there are several, so the workers idle once the
    last tilt is in share the reconstruction; the same volume as in one piece."""
    n_slabs = slabs if slabs is not None else workers
    bounds = slab_bounds(stack.shape[1], n_slabs)
    options = {"tilt_axis_deg": tilt_axis_deg, "shifts_px": shifts_px, "thickness_px": thickness_px}
    if len(bounds) == 1:
        return back_project_slab(stack, tilt_angles_deg, rows=bounds[0], **options)
    if workers > 1:
        from distributed import worker_client

        with worker_client() as client:  # this task steps aside while its slabs run
            [data] = client.scatter([stack], broadcast=False)
            futures = [client.submit(back_project_slab, data, tilt_angles_deg, rows=rows, pure=False, **options)
                       for rows in bounds]
            parts = client.gather(futures)
    else:
        parts = [back_project_slab(stack, tilt_angles_deg, rows=rows, **options) for rows in bounds]
    return np.concatenate(parts, axis=1)


def _dask_workers() -> int:
    """Worker threads of the Dask cluster this task runs on, at most 8 (1 when not on a Dask
    worker)."""
    try:
        from distributed import get_client, get_worker

        get_worker()
    except (ImportError, ValueError):
        return 1
    return max(1, min(sum(get_client().nthreads().values()), 8))


def _external_alignment(
    spec: SeriesSpec,
    params: SeriesParams,
    stack: np.ndarray,
    angles: np.ndarray,
    used: Sequence[SeriesTilt],
    *,
    pixel_size_a: float,
    thickness_px: int,
) -> tuple[np.ndarray, float, float | None, dict[int, str]]:
    """Align the (dose-weighted, binned, angle-sorted) stack with AreTomo2/3 or IMOD: shifts
    (n, 2), the axis (their mean over views), the residual, and the views they dropped (stack
    index → reason). Their own files stay in ``<out>/<engine>/``."""
    from emlive.tomo import imod

    work = spec.out_dir / params.engine
    work.mkdir(parents=True, exist_ok=True)
    source = imod.write_stack(work / f"{spec.name}_input.st", stack, pixel_size_a=pixel_size_a)
    try:
        if params.engine == "imod":
            from emlive.tomo.imod_tools import ImodParams, align_imod

            found = align_imod(source, angles, work, ImodParams(
                pixel_size_a=pixel_size_a, tilt_axis_deg=spec.tilt_axis_deg, refine_tilt_axis=params.refine_axis,
                reconstruct=False, thickness_px=thickness_px,
            ), stem=spec.name)
        else:
            from emlive.tomo.aretomo import AreTomoParams, align_aretomo

            order = np.argsort(np.argsort([t.pre_exposure_e_a2 for t in used], kind="stable"), kind="stable")
            found = align_aretomo(source, angles, work, AreTomoParams(
                pixel_size_a=pixel_size_a, tilt_axis_deg=spec.tilt_axis_deg, refine_tilt_axis=params.refine_axis,
                align_z_px=thickness_px, vol_z_px=0, voltage_kv=spec.voltage_kv, cs_mm=spec.cs_mm,
            ), program=params.engine, stem=spec.name, acquisition_order=order)
    finally:
        source.unlink(missing_ok=True)
    dropped = {int(i): f"dropped by {params.engine}: {reason}" for i, reason in found.dropped}
    shifts = np.asarray(found.shifts_px, dtype=np.float64)
    dropped |= {i: f"{params.engine} gave it no alignment" for i in range(len(used))
                if i not in dropped and not np.all(np.isfinite(shifts[i]))}
    axis = float(np.nanmean(np.asarray(found.tilt_axis_deg, dtype=np.float64)))
    return shifts, axis, found.residual_px, dropped


def _write_outputs(
    spec: SeriesSpec,
    stack: np.ndarray,
    angles: np.ndarray,
    shifts_px: np.ndarray,
    tilt_axis_deg: float,
    volume: np.ndarray,
    pixel_size_a: float,
    views: np.ndarray,
) -> dict[str, Path]:
    """The IMOD files, the tomogram and the two pictures; their paths by SeriesResult field."""
    from emlive.tomo import imod

    out, name = spec.out_dir, spec.name
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "stack_path": out / f"{name}.st", "rawtlt_path": out / f"{name}.rawtlt", "tlt_path": out / f"{name}.tlt",
        "xf_path": out / f"{name}.xf", "tomogram_path": out / f"{name}_rec.mrc",
        "central_slice_png_path": out / f"{name}_slice.png", "montage_png_path": out / f"{name}_montage.png",
    }
    imod.write_stack(paths["stack_path"], stack, pixel_size_a=pixel_size_a)
    imod.write_rawtlt(paths["rawtlt_path"], angles)
    imod.write_tlt(paths["tlt_path"], angles)  # the angles are not refined: as measured
    imod.write_xf(paths["xf_path"], imod.xf_from_alignment(tilt_axis_deg, shifts_px))
    write_mrc_atomic(paths["tomogram_path"], volume.astype(np.float32), pixel_size_a=pixel_size_a)
    central = volume[volume.shape[0] // 2 - 2 : volume.shape[0] // 2 + 3].mean(axis=0)
    write_png_atomic(paths["central_slice_png_path"], central, max_size_px=1024)
    write_png_atomic(paths["montage_png_path"], montage(views), max_size_px=2048)
    return {k: v.absolute() for k, v in paths.items()}


def montage(stack: np.ndarray, *, tile_px: int = 160) -> np.ndarray:
    """The views side by side in rows (the order given), each scaled to ``tile_px`` on its long
    side and contrast-stretched on its own, so a dark tilt shows as dark; 8-bit grey."""
    from PIL import Image

    n = len(stack)
    columns = max(1, math.ceil(math.sqrt(n * 1.0)))
    rows = math.ceil(n / columns)
    ny, nx = stack.shape[1:]
    scale = tile_px / max(ny, nx)
    th, tw = max(1, round(ny * scale)), max(1, round(nx * scale))
    canvas = np.zeros((rows * (th + 2), columns * (tw + 2)), dtype=np.uint8)
    reference = np.percentile(stack, [0.5, 99.5])
    for i, view in enumerate(stack):
        small = np.asarray(Image.fromarray(view.astype(np.float32)).resize((tw, th), Image.Resampling.BOX))
        scaled = np.clip((small - reference[0]) * (255.0 / max(reference[1] - reference[0], 1e-12)), 0, 255)
        r, c = divmod(i, columns)
        canvas[r * (th + 2) : r * (th + 2) + th, c * (tw + 2) : c * (tw + 2) + tw] = scaled.astype(np.uint8)
    return canvas

