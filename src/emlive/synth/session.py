"""A synthetic collection session on disk: movies in ``raw/`` and the ground truth in ``truth.json``.

Layout written by :func:`write_session` under a session folder ``DIR``::

    DIR/truth.json         the ground truth (SessionTruth), written first
    DIR/gain.mrc           the gain reference, when ``gain=True`` (outside raw/, not a movie)
    DIR/raw/movie_0000.mrc counted frames, int8 (uint16 if a pixel has > 127 e), pixel size in header
    DIR/raw/movie_0001.tif LZW-compressed TIFF, one uint8 page per frame
    DIR/raw/movie_0002.eer EER (7-bit RLE), ``eer_fractions * eer_raw_frames_per_fraction`` raw frames
    ...                    (formats cycle in the order given)

Every file is written under a temporary name and renamed, so a watcher never sees half a file.
Each movie is reproducible on its own from ``(seed, index)``, whatever ``n_movies`` is.

Ground-truth conventions: ``trajectory_px[i]`` is the content displacement ``(x, y)`` in movie
pixels of frame ``i`` (for EER: of fraction ``i``), ``frame_i(r) = frame_0(r - d_i)``,
``d_0 = 0``; a motion-correction result (RELION's shifts) should be ``-trajectory_px``. Defocus in
Å, positive underfocus, ``defocus_u_a >= defocus_v_a``; ``azimuth_deg`` in [0, 180) is the angle
of the defocus-U axis from +x, counter-clockwise (as in :mod:`emlive.optics`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
from pydantic import BaseModel, ConfigDict, Field

from emlive.acquisition import Acquisition, Optics
from emlive.io.atomic import atomic_path, atomic_write_text
from emlive.io.mrc import write_mrc_atomic
from emlive.synth.eer import movie_events, write_eer
from emlive.synth.movies import movie_frames, specimen_image, trajectory

MovieFormat = Literal["mrc", "tiff", "eer"]
_SUFFIX: dict[str, str] = {"mrc": ".mrc", "tiff": ".tif", "eer": ".eer"}
_GAIN_NAME = "gain.mrc"


class MovieTruth(BaseModel):
    """What was put into one synthetic movie."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="File name under raw/")
    format: MovieFormat
    index: int = Field(ge=0, description="Position in the session (acquisition order)")
    n_frames: int = Field(ge=1, description="Frames; for EER the number of fractions")
    n_raw_frames: int | None = Field(None, description="EER raw frames (None for MRC/TIFF)")
    trajectory_px: list[tuple[float, float]] = Field(
        description="Content displacement (x, y) px of each frame/fraction; frame 0 at (0, 0)"
    )
    defocus_u_a: float = Field(description="Defocus along the U axis, Å, positive underfocus; U >= V")
    defocus_v_a: float = Field(description="Defocus along the V axis, Å")
    azimuth_deg: float = Field(ge=0.0, lt=180.0, description="Angle of the U axis from +x, degrees")
    phase_shift_rad: float = 0.0

    @property
    def trajectory(self) -> np.ndarray:
        """``trajectory_px`` as an ``(n, 2)`` float64 array."""
        return np.asarray(self.trajectory_px, dtype=np.float64).reshape(-1, 2)

    @property
    def total_drift_px(self) -> float:
        """Path length of the drift in pixels (sum of frame-to-frame displacements)."""
        return float(np.linalg.norm(np.diff(self.trajectory, axis=0), axis=1).sum())


class SessionTruth(BaseModel):
    """Ground truth of a synthetic session: acquisition values plus every movie's truth."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int
    shape: tuple[int, int] = Field(description="Frame size (ny, nx) in pixels")
    pixel_size_a: float = Field(gt=0)
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    dose_per_frame_e_a2: float = Field(gt=0, description="Per MRC/TIFF frame and per EER fraction")
    pre_exposure_e_a2: float = 0.0
    eer_fractions: int = Field(ge=1, description="Fractions an EER movie's raw frames are summed into")
    eer_raw_frames_per_fraction: int = Field(ge=1)
    gain_file: str | None = Field(None, description="Gain reference relative to the session folder")
    movies: list[MovieTruth]

    def optics(self) -> Optics:
        return Optics(
            pixel_size_a=self.pixel_size_a,
            voltage_kv=self.voltage_kv,
            cs_mm=self.cs_mm,
            amplitude_contrast=self.amplitude_contrast,
        )

    def acquisition(self, session_dir: str | os.PathLike[str] | None = None) -> Acquisition:
        """The acquisition parameters; the gain path is resolved against ``session_dir``."""
        gain_path = None
        if self.gain_file is not None:
            gain_path = Path(session_dir or ".") / self.gain_file
        return Acquisition(
            **self.optics().model_dump(),
            dose_per_frame_e_a2=self.dose_per_frame_e_a2,
            pre_exposure_e_a2=self.pre_exposure_e_a2,
            gain_path=gain_path,
            eer_fractions=self.eer_fractions,
        )

    def movie(self, name: str) -> MovieTruth:
        """The truth of the movie called ``name`` (file name, or its stem)."""
        for movie in self.movies:
            if name in (movie.name, Path(movie.name).stem):
                return movie
        raise KeyError(f"no movie {name!r} in this session")


def _movie_seed(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(0, index))


def plan_session(
    *,
    n_movies: int = 8,
    shape: tuple[int, int] = (1024, 1024),
    n_frames: int = 24,
    formats: Sequence[MovieFormat] = ("mrc", "tiff", "eer"),
    seed: int = 0,
    pixel_size_a: float = 1.0,
    dose_per_frame_e_a2: float = 1.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    eer_fractions: int = 24,
    eer_raw_frames_per_fraction: int = 20,
    gain: bool = False,
    defocus_range_a: tuple[float, float] = (8000.0, 25000.0),
    max_astigmatism_a: float = 1000.0,
    drift_range_px: tuple[float, float] = (4.0, 16.0),
) -> SessionTruth:
    """Draw the ground truth of a session without writing anything (pure and cheap).

    Per movie: a mean defocus uniform in ``defocus_range_a``, an astigmatism (U − V) uniform
    in [10 %, 100 %] of ``max_astigmatism_a``, a uniform azimuth, and a drift path of length
    uniform in ``drift_range_px`` (see :func:`emlive.synth.movies.trajectory`).
    """
    if n_movies < 0:
        raise ValueError(f"n_movies must be >= 0, got {n_movies}")
    unknown = set(formats) - set(_SUFFIX)
    if not formats or unknown:
        raise ValueError(f"formats must be a non-empty selection of {sorted(_SUFFIX)}, got {list(formats)}")
    movies = []
    for index in range(n_movies):
        fmt = formats[index % len(formats)]
        truth_rng = np.random.default_rng(_movie_seed(seed, index).spawn(2)[0])
        frames = eer_fractions if fmt == "eer" else n_frames
        mean_a = truth_rng.uniform(*defocus_range_a)
        astigmatism_a = truth_rng.uniform(0.1, 1.0) * max_astigmatism_a
        movies.append(
            MovieTruth(
                name=f"movie_{index:04d}{_SUFFIX[fmt]}",
                format=fmt,
                index=index,
                n_frames=frames,
                n_raw_frames=eer_fractions * eer_raw_frames_per_fraction if fmt == "eer" else None,
                trajectory_px=[
                    (float(x), float(y))
                    for x, y in trajectory(truth_rng, n_frames=frames, amplitude_px=truth_rng.uniform(*drift_range_px))
                ],
                defocus_u_a=mean_a + 0.5 * astigmatism_a,
                defocus_v_a=mean_a - 0.5 * astigmatism_a,
                azimuth_deg=float(truth_rng.uniform(0.0, 180.0)) % 180.0,
            )
        )
    return SessionTruth(
        seed=seed,
        shape=(int(shape[0]), int(shape[1])),
        pixel_size_a=pixel_size_a,
        voltage_kv=voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        dose_per_frame_e_a2=dose_per_frame_e_a2,
        eer_fractions=eer_fractions,
        eer_raw_frames_per_fraction=eer_raw_frames_per_fraction,
        gain_file=_GAIN_NAME if gain else None,
        movies=movies,
    )


def gain_reference(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """A known multiplicative gain (float32, mean ≈ 1): column/row banding plus 5 % pixel noise."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    ny, nx = shape
    columns = 1.0 + 0.1 * np.sin(np.linspace(0.0, 6.0 * np.pi, nx) + rng.uniform(0, 2 * np.pi))
    rows = 1.0 + 0.05 * np.cos(np.linspace(0.0, 2.0 * np.pi, ny) + rng.uniform(0, 2 * np.pi))
    gain = rows[:, None] * columns[None, :] * rng.normal(1.0, 0.05, size=(ny, nx))
    return gain.astype(np.float32)


def write_movie(
    raw_dir: str | os.PathLike[str],
    truth: SessionTruth,
    movie: MovieTruth,
    *,
    gain: np.ndarray | None = None,
    workers: int | None = None,
) -> Path:
    """Generate and write one movie of ``truth`` into ``raw_dir`` (atomically); return its path."""
    data_rng = np.random.default_rng(_movie_seed(truth.seed, movie.index).spawn(2)[1])
    image = specimen_image(
        data_rng,
        truth.shape,
        optics=truth.optics(),
        defocus_u_a=movie.defocus_u_a,
        defocus_v_a=movie.defocus_v_a,
        azimuth_deg=movie.azimuth_deg,
        phase_shift_rad=movie.phase_shift_rad,
    )
    dose_e_per_px = truth.dose_per_frame_e_a2 * truth.pixel_size_a**2
    path = Path(raw_dir) / movie.name
    if movie.format == "eer":
        _, raw_frames = movie_events(
            data_rng,
            image,
            movie.trajectory,
            dose_e_per_px_per_fraction=dose_e_per_px,
            raw_frames_per_fraction=truth.eer_raw_frames_per_fraction,
            gain=gain,
            workers=workers,
        )
        write_eer(
            path,
            raw_frames,
            shape=truth.shape,
            pixel_size_a=truth.pixel_size_a,
            metadata={"totalDose": (truth.dose_per_frame_e_a2 * truth.eer_fractions, "e/A^2")},
        )
        return path
    counts = movie_frames(
        data_rng, image, movie.trajectory, dose_e_per_px_per_frame=dose_e_per_px, gain=gain, workers=workers
    )
    if movie.format == "mrc":
        dtype = np.int8 if counts.max() <= np.iinfo(np.int8).max else np.uint16
        write_mrc_atomic(path, counts.astype(dtype), pixel_size_a=truth.pixel_size_a)
    else:
        dtype = np.uint8 if counts.max() <= np.iinfo(np.uint8).max else np.uint16
        with atomic_path(path) as tmp:
            # rows bottom-up: RELION, MotionCor2 and emlive read TIFF movies upside down
            tifffile.imwrite(tmp, counts[:, ::-1].astype(dtype), compression="lzw", photometric="minisblack")
    return path


def write_session(
    session_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    on_movie: Callable[[MovieTruth, Path], None] | None = None,
    **plan: Any,
) -> SessionTruth:
    """Write a synthetic session into ``session_dir`` and return its ground truth.

    The truth is drawn by :func:`plan_session` from the other keywords (``n_movies``, ``shape``,
    ``formats``, ``seed`` …; an unknown one is a TypeError there). ``truth.json`` and the gain
    reference are written first, then the movies in acquisition order, each atomically;
    ``on_movie(movie_truth, path)`` is called after each (for progress, or to pace a simulated
    live session). ``workers`` (default: the number of CPUs) movies are made at once. Files
    are renamed into ``raw/`` as each finishes, so with ``workers > 1`` a later movie may land
    shortly before an earlier one.
    """
    truth = plan_session(**plan)
    root = Path(session_dir)
    raw_dir = root / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "truth.json", truth.model_dump_json(indent=2) + "\n")
    gain_image = None
    if truth.gain_file is not None:
        gain_image = gain_reference(truth.seed, truth.shape)
        write_mrc_atomic(root / truth.gain_file, gain_image, pixel_size_a=truth.pixel_size_a)
    # Movies are made in parallel, one thread each (numpy, scipy.fft and the file writes
    # release the GIL); each is finished and reported in acquisition order.
    n_threads = max(1, min(workers or os.cpu_count() or 1, len(truth.movies)))
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        futures = [pool.submit(write_movie, raw_dir, truth, movie, gain=gain_image, workers=1) for movie in truth.movies]
        for movie, future in zip(truth.movies, futures, strict=True):
            path = future.result()
            if on_movie is not None:
                on_movie(movie, path)
    return truth


def load_truth(path: str | os.PathLike[str]) -> SessionTruth:
    """Read ``truth.json`` (or the session folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "truth.json"
    return SessionTruth.model_validate_json(p.read_text(encoding="utf-8"))
