"""A synthetic tilt-series collection on disk, as SerialEM writes it: one movie per tilt and a
growing ``.mdoc``, tilt by tilt, with the ground truth beside them.

Layout under a session folder ``DIR``::

    DIR/raw/<name>.mdoc                          rewritten (atomically) after each tilt's movie
    DIR/raw/frames/<name>_<z:03d>_<angle>.tif    one LZW TIFF movie per tilt, counted frames
    DIR/<name>_truth.npz                         the ground truth (angles, order, shifts, axis,
                                                 defocus, dark tilts, the phantom)

Each tilt's movie is the phantom's projection (:func:`emlive.synth.tomo.tilt_series`: known
per-tilt shifts, tilt axis, two dark tilts) upsampled by Fourier padding to the movie's size,
as amplitude contrast on a specimen with the tilt's CTF (Thon rings for CTF estimation),
exposed with the tilt's dose and drifting along a known trajectory
(:func:`emlive.synth.movies.movie_frames`). Tilts are written in acquisition order
(dose-symmetric); the mdoc names a tilt only once its movie is complete, as SerialEM does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import tifffile

from emlive.acquisition import Optics
from emlive.io.atomic import atomic_path
from emlive.synth.mdoc import serialem_header, serialem_tilts, write_mdoc
from emlive.synth.movies import movie_frames, specimen_image, trajectory

__all__ = ["TomoCollection", "plan_collection", "collect", "write_tilt", "upsample"]


@dataclass(frozen=True)
class TomoCollection:
    """A planned tilt-series collection: what to write, and the truth to check results against.

    ``projections`` (the phantom's weak-phase images, zero mean, unit RMS over the series) are
    at ``projection_pixel_size_a``; movies at ``pixel_size_a``
    (= projection pixel / ``upsampling``). Per tilt (index ``i`` in angle order as the truth
    gives them): ``movie_names[i]``, ``order[i]`` (0 = acquired first = ZValue 0).
    """

    name: str
    truth: object  # emlive.synth.tomo.TiltSeriesTruth
    projections: np.ndarray
    movie_names: tuple[str, ...]
    order: np.ndarray
    movie_shape: tuple[int, int]
    upsampling: int
    pixel_size_a: float
    n_frames: int
    dose_per_tilt_e_a2: float
    drift_px: float
    seed: int
    voltage_kv: float = 300.0
    dark_dose_fraction: float = 0.06
    contrast: float = 0.25
    seconds_per_tilt: float = 8.0

    @property
    def tilt_angles_deg(self) -> np.ndarray:
        return np.asarray(self.truth.tilt_angles_deg, dtype=float)  # type: ignore[attr-defined]

    @property
    def acquisition(self) -> list[int]:
        """Tilt indices (angle order) in the order they are acquired."""
        return [int(i) for i in np.argsort(self.order, kind="stable")]

    def mdoc_tilts(self) -> tuple[object, ...]:
        truth = self.truth
        return serialem_tilts(
            self.tilt_angles_deg, self.order, list(self.movie_names), pixel_size_a=self.pixel_size_a,
            dose_per_tilt_e_per_a2=self.dose_per_tilt_e_a2, tilt_axis_deg=float(truth.tilt_axis_deg),  # type: ignore[attr-defined]
            num_subframes=self.n_frames, seconds_per_tilt=self.seconds_per_tilt,
            defocus_um=-np.asarray(truth.defocus_a, dtype=float) / 1e4,  # type: ignore[attr-defined]
        )


def plan_collection(
    seed: int,
    *,
    name: str = "TS_01",
    movie_shape: tuple[int, int] = (512, 512),
    upsampling: int = 4,
    n_frames: int = 4,
    projection_pixel_size_a: float = 10.0,
    thickness_px: int = 32,
    tilt_angles_deg: Sequence[float] | None = None,
    dose_per_tilt_e_a2: float = 3.0,
    drift_px: float = 4.0,
    tilt_axis_deg: float = 85.0,
    seconds_per_tilt: float = 8.0,
    **series_options: object,
) -> TomoCollection:
    """Plan a collection: the phantom's projections (``emlive.synth.tomo.tilt_series``) at
    ``projection_pixel_size_a`` on a grid ``movie_shape / upsampling``, and the movies' names."""
    from emlive.synth.tomo import tilt_series

    ny, nx = movie_shape[0] // upsampling, movie_shape[1] // upsampling
    options: dict[str, object] = {"shape_zyx": (thickness_px, ny, nx), "pixel_size_a": projection_pixel_size_a,
                                  "tilt_axis_deg": tilt_axis_deg, "dose_per_tilt_e_per_a2": dose_per_tilt_e_a2}
    if tilt_angles_deg is not None:
        options["tilt_angles_deg"] = tuple(float(a) for a in tilt_angles_deg)
    # a dose so high that the counts are the noise-free weak-phase images; each tilt's own dose
    # and noise come with its movie
    options["dose_per_tilt_e_per_a2"] = 1e6
    counts, truth = tilt_series(seed, **(options | series_options))
    counts = np.asarray(counts, dtype=np.float64)
    contrast = counts / counts.mean(axis=(1, 2), keepdims=True) - 1.0
    projections = contrast / max(float(contrast.std()), 1e-12)
    order = np.asarray(truth.order, dtype=int)
    names = tuple(f"{name}_{int(order[i]):03d}_{float(a):.1f}.tif" for i, a in enumerate(truth.tilt_angles_deg))
    return TomoCollection(
        name=name, truth=truth, projections=np.asarray(projections, dtype=np.float32), movie_names=names,
        order=order, movie_shape=movie_shape, upsampling=upsampling,
        pixel_size_a=projection_pixel_size_a / upsampling, n_frames=n_frames, dose_per_tilt_e_a2=dose_per_tilt_e_a2,
        drift_px=drift_px, seed=seed, seconds_per_tilt=seconds_per_tilt,
    )


def upsample(image: np.ndarray, shape: tuple[int, int], *, workers: int | None = None) -> np.ndarray:
    """A band-limited image on a finer grid ``shape`` by zero-padding its spectrum (same field).
    float32; the Nyquist row and column of the coarse spectrum are dropped (they have no
    unambiguous place on the finer grid)."""
    ny, nx = image.shape
    spectrum = scipy.fft.rfft2(np.asarray(image, dtype=np.float32), workers=workers)
    padded = np.zeros((shape[0], shape[1] // 2 + 1), dtype=np.complex64)
    half_y, half_x = (ny - 1) // 2, (nx - 1) // 2
    padded[: half_y + 1, : half_x + 1] = spectrum[: half_y + 1, : half_x + 1]
    padded[-half_y:, : half_x + 1] = spectrum[-half_y:, : half_x + 1]
    scale = shape[0] * shape[1] / (ny * nx)
    return scipy.fft.irfft2(padded * np.float32(scale), s=shape, workers=workers).astype(np.float32)


def movie_counts(plan: TomoCollection, tilt: int, *, workers: int | None = None) -> np.ndarray:
    """The counted frames (uint16, (n_frames, ny, nx)) of tilt ``tilt`` (index in angle order)."""
    truth = plan.truth
    rng = np.random.default_rng(np.random.SeedSequence([plan.seed, 7, tilt]))
    optics = Optics(pixel_size_a=plan.pixel_size_a, voltage_kv=plan.voltage_kv)
    defocus = float(np.asarray(truth.defocus_a)[tilt])  # type: ignore[attr-defined]
    specimen = specimen_image(rng, plan.movie_shape, optics=optics, defocus_u_a=defocus, defocus_v_a=defocus * 0.98,
                              azimuth_deg=30.0, contrast=0.08, texture=0.0)
    projection = upsample(plan.projections[tilt], plan.movie_shape, workers=workers)
    expected = np.clip(specimen * (1.0 + plan.contrast * projection), 0.05, None)
    dose = plan.dose_per_tilt_e_a2 * (plan.dark_dose_fraction if tilt in tuple(truth.dark) else 1.0)  # type: ignore[attr-defined]
    per_frame_e_px = dose / plan.n_frames * plan.pixel_size_a**2
    path_px = trajectory(rng, n_frames=plan.n_frames, amplitude_px=plan.drift_px)
    return movie_frames(rng, expected, path_px, dose_e_per_px_per_frame=per_frame_e_px, workers=workers)


def write_movie(path: Path, counts: np.ndarray, *, truncate: bool = False) -> Path:
    """Write counted frames as an LZW TIFF atomically (rows bottom-up, as the synthetic sessions
    write them); ``truncate`` cuts the file to half (a transfer that broke)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if counts.max() <= np.iinfo(np.uint8).max else np.uint16
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, counts[:, ::-1].astype(dtype), compression="lzw", photometric="minisblack")
        if truncate:
            with open(tmp, "r+b") as fh:
                fh.truncate(os.path.getsize(tmp) // 2)
    return path


def write_tilt(
    session_dir: Path,
    plan: TomoCollection,
    step: int,
    *,
    counts: np.ndarray | None = None,
    truncate: bool = False,
    skip_movie: bool = False,
) -> Path:
    """Acquire the ``step``-th tilt (acquisition order): write its movie under raw/frames/, then
    the mdoc naming every tilt acquired so far. Returns the movie's path."""
    tilt = plan.acquisition[step]
    movie = session_dir / "raw" / "frames" / plan.movie_names[tilt]
    if not skip_movie:
        write_movie(movie, movie_counts(plan, tilt) if counts is None else counts, truncate=truncate)
    header = serialem_header(pixel_size_a=plan.pixel_size_a, voltage_kv=plan.voltage_kv,
                             tilt_axis_deg=float(plan.truth.tilt_axis_deg),  # type: ignore[attr-defined]
                             image_size=(plan.movie_shape[1], plan.movie_shape[0]), image_file=f"{plan.name}.mrc")
    write_mdoc(session_dir / "raw" / f"{plan.name}.mrc.mdoc", header, plan.mdoc_tilts()[: step + 1])  # type: ignore[arg-type]
    return movie


def save_truth(session_dir: Path, plan: TomoCollection) -> Path:
    """The ground truth beside raw/ (``<name>_truth.npz``)."""
    truth = plan.truth
    path = session_dir / f"{plan.name}_truth.npz"
    np.savez(path, tilt_angles_deg=plan.tilt_angles_deg, order=plan.order,
             tilt_axis_deg=float(truth.tilt_axis_deg), shifts_px=np.asarray(truth.shifts_px),  # type: ignore[attr-defined]
             defocus_a=np.asarray(truth.defocus_a), dark=np.asarray(truth.dark),  # type: ignore[attr-defined]
             pixel_size_a=plan.pixel_size_a, movie_names=np.array(plan.movie_names))
    return path


def collect(
    session_dir: Path,
    plan: TomoCollection,
    *,
    interval_s: float = 0.0,
    truncate: Sequence[int] = (),
    never: Sequence[int] = (),
    on_tilt: Callable[[int, Path], None] | None = None,
) -> Iterator[Path]:
    """Collect the series tilt by tilt (acquisition order), one every ``interval_s``; yields each
    movie's path once written. ``truncate``/``never``: acquisition steps whose movie is cut short
    / never written (the mdoc names them all the same)."""
    save_truth(session_dir, plan)
    start = time.monotonic()
    for step in range(len(plan.acquisition)):
        if interval_s:
            time.sleep(max(0.0, start + step * interval_s - time.monotonic()))
        movie = write_tilt(session_dir, plan, step, truncate=step in truncate, skip_movie=step in never)
        if on_tilt is not None:
            on_tilt(step, movie)
        yield movie
