"""emlive's own motion-correction engine: global alignment and dose weighting on the CPU.

The only place the native motion step touches files: it reads a movie (MRC, TIFF or EER via
:func:`emlive.io.movie.open_movie`, gain applied), transforms the frames once (keeping the jumps
across their edges, so that the alignment can ignore the edges), aligns them
(:func:`emlive.motion.align.align_frames`), sums them with and without dose weighting
(:func:`emlive.motion.dose.aligned_sums`) and writes, each atomically:

- ``<stem>.mrc``: the aligned sum, float32, pixel size in the header;
- ``<stem>_DW.mrc``: the dose-weighted aligned sum (same scale as the plain sum);
- ``<stem>.star``: the trajectory as RELION 3.1's motion correction writes it (``data_general``
  and ``data_global_shift``, shifts in unbinned movie pixels).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft

from emlive.acquisition import Acquisition
from emlive.io.movie import open_movie
from emlive.io.mrc import write_mrc_atomic
from emlive.io.star import write_star_atomic
from emlive.motion.align import align_frames, boundary_spectra
from emlive.motion.dose import aligned_sums, drift_statistics
from emlive.motion.types import MotionParams, MotionResult

__all__ = ["ENGINE_VERSION", "motion_correct", "motion_star_blocks"]

log = logging.getLogger(__name__)

ENGINE_VERSION = "native-global-1"

# RELION's rlnMotionModelVersion for "no local model" (global shifts only).
_MOTION_MODEL_NULL = 0
# Frames read and transformed per batch: bounds the float32 copy held next to the spectra.
_READ_BATCH = 8


def motion_star_blocks(
    *,
    movie_name: str,
    shape: tuple[int, int],
    shifts_px: np.ndarray,
    acq: Acquisition,
    bin_factor: float,
) -> dict[str, dict[str, object] | pd.DataFrame]:
    """The tables of RELION 3.1's per-micrograph motion STAR file (global model).

    ``data_general`` is a key–value block; ``data_global_shift`` has one row per frame
    (1-based frame numbers, shifts (x, y) in unbinned movie pixels, correction convention).
    """
    shifts = np.asarray(shifts_px, dtype=np.float64)
    general: dict[str, object] = {
        "rlnImageSizeX": int(shape[1]),
        "rlnImageSizeY": int(shape[0]),
        "rlnImageSizeZ": int(shifts.shape[0]),
        "rlnMicrographMovieName": movie_name,
    }
    if acq.gain_path is not None:
        general["rlnMicrographGainName"] = str(acq.gain_path)
    general.update(
        {
            "rlnMicrographBinning": float(bin_factor),
            "rlnMicrographOriginalPixelSize": float(acq.pixel_size_a),
            "rlnMicrographDoseRate": float(acq.dose_per_frame_e_a2),
            "rlnMicrographPreExposure": float(acq.pre_exposure_e_a2),
            "rlnVoltage": float(acq.voltage_kv),
            "rlnMicrographStartFrame": 1,
            "rlnMotionModelVersion": _MOTION_MODEL_NULL,
        }
    )
    global_shift = pd.DataFrame(
        {
            "rlnMicrographFrameNumber": np.arange(1, shifts.shape[0] + 1),
            "rlnMicrographShiftX": shifts[:, 0],
            "rlnMicrographShiftY": shifts[:, 1],
        }
    )
    return {"general": general, "global_shift": global_shift}


def motion_correct(
    movie: Path,
    out_dir: Path,
    acq: Acquisition,
    params: MotionParams,
    *,
    stem: str | None = None,
    workers: int = -1,
) -> MotionResult:
    """Motion-correct ``movie`` into ``out_dir``; return the shifts, drift and output paths.

    ``acq`` gives the pixel size (Å, of the movie), the exposure per frame and before the first
    frame (e/Å²), the voltage, the gain reference and the EER fractionation; ``params`` the
    alignment options (B-factor px², search range and tolerance in unbinned px, iterations)
    and the output binning. ``stem`` names the outputs (default: the movie's file stem);
    ``workers`` is the FFT thread count (``-1``: all CPUs).

    Raises :class:`emlive.io.MovieFormatError` for an unreadable movie and ``ValueError`` for
    a movie with fewer than 2 frames.
    """
    movie = Path(movie)
    out_dir = Path(out_dir)
    stem = stem or movie.stem
    started = time.perf_counter()
    with open_movie(movie, gain=acq.gain_path, eer_fractions=acq.eer_fractions) as source:
        n_frames = len(source)
        ny, nx = source.header.shape
        if n_frames < 2:
            raise ValueError(
                f"{movie}: has {n_frames} frame(s); motion correction needs at least 2"
            )
        frames_ft = np.empty((n_frames, ny, nx // 2 + 1), dtype=np.complex64)
        edge_rows = np.empty((n_frames, nx // 2 + 1), dtype=np.complex64)
        edge_columns = np.empty((n_frames, ny), dtype=np.complex64)
        for start in range(0, n_frames, _READ_BATCH):
            stop = min(start + _READ_BATCH, n_frames)
            frames = source.frames(start, stop)
            frames_ft[start:stop] = scipy.fft.rfft2(frames, workers=workers)
            edge_rows[start:stop], edge_columns[start:stop] = boundary_spectra(frames)
            del frames
    read_s = time.perf_counter() - started

    shifts = align_frames(
        frames_ft,
        bfactor_px2=params.bfactor_px2,
        max_shift_px=params.max_shift_px,
        tolerance_px=params.tolerance_px,
        max_iterations=params.max_iterations,
        nx=nx,
        boundary=(edge_rows, edge_columns),
        workers=workers,
    )
    align_s = time.perf_counter() - started - read_s

    sums = aligned_sums(
        frames_ft,
        shifts,
        pixel_size_a=acq.pixel_size_a,
        dose_per_frame_e_a2=acq.dose_per_frame_e_a2,
        voltage_kv=acq.voltage_kv,
        pre_exposure_e_a2=acq.pre_exposure_e_a2,
        nx=nx,
        bin_factor=params.bin_factor,
        workers=workers,
    )
    del frames_ft
    drift = drift_statistics(
        shifts,
        pixel_size_a=acq.pixel_size_a,
        dose_per_frame_e_a2=acq.dose_per_frame_e_a2,
        pre_exposure_e_a2=acq.pre_exposure_e_a2,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    micrograph_path = out_dir / f"{stem}.mrc"
    dose_weighted_path = out_dir / f"{stem}_DW.mrc"
    star_path = out_dir / f"{stem}.star"
    write_mrc_atomic(micrograph_path, sums.micrograph, pixel_size_a=sums.pixel_size_a)
    write_mrc_atomic(dose_weighted_path, sums.dose_weighted, pixel_size_a=sums.pixel_size_a)
    write_star_atomic(
        star_path,
        motion_star_blocks(
            movie_name=str(movie),
            shape=(ny, nx),
            shifts_px=shifts,
            acq=acq,
            bin_factor=params.bin_factor,
        ),
    )
    log.info(
        "%s: %d frames %dx%d, total drift %.1f Å; read+FFT %.2f s, align %.2f s, total %.2f s",
        movie.name,
        n_frames,
        nx,
        ny,
        drift.total_a,
        read_s,
        align_s,
        time.perf_counter() - started,
    )
    return MotionResult(
        shifts_px=[(float(x), float(y)) for x, y in shifts],
        total_drift_a=drift.total_a,
        early_drift_a=drift.early_a,
        late_drift_a=drift.late_a,
        micrograph_path=micrograph_path,
        dose_weighted_path=dose_weighted_path,
        star_path=star_path,
        pixel_size_a=sums.pixel_size_a,
        n_frames=n_frames,
    )
