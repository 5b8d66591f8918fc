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
import math
import mmap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft

from emlive.acquisition import Acquisition
from emlive.io.defects import defect_fill_values, hot_pixel_mask, read_defects, upsample_mask
from emlive.io.movie import Movie, MovieHeader, open_movie
from emlive.io.mrc import write_mrc_atomic
from emlive.io.star import write_star_atomic
from emlive.motion.align import align_frames, boundary_spectra, crop_shape_for_bfactor, fourier_crop
from emlive.motion.deform import (
    PatchShifts,
    align_patches,
    evaluate_model,
    fit_polynomial_model,
    globally_aligned_frames,
    local_sums,
    patch_windows,
    tile_size_for_model,
)
from emlive.motion.dose import aligned_sums, binned_shape, dose_weight_stack, drift_statistics
from emlive.motion.plot import write_drift_plot
from emlive.motion.types import MotionParams, MotionResult

__all__ = ["ENGINE_VERSION", "motion_correct", "motion_star_blocks"]

log = logging.getLogger(__name__)

ENGINE_VERSION = "native-local-1"

# RELION's rlnMotionModelVersion: 0 = no local model (global shifts only), 1 = third-order polynomial.
_MOTION_MODEL_NULL = 0
_MOTION_MODEL_THIRD_ORDER_POLYNOMIAL = 1
# Patches narrower than this (in the pixels of the alignment band) leave too little to align.
_MIN_PATCH_PX = 48
# Alignment band (see _alignment_binning) and the smallest short side of the binned frames.
_ALIGN_WEIGHT_FLOOR = 0.3
_ALIGN_MIN_PX = 512
# Frames read and transformed per batch: bounds the float32 copy held next to the spectra.
_READ_BATCH = 8


def motion_star_blocks(
    *,
    movie_name: str,
    shape: tuple[int, int],
    shifts_px: np.ndarray,
    acq: Acquisition,
    bin_factor: float,
    local_model: np.ndarray | None = None,
    patch_shifts: PatchShifts | None = None,
) -> dict[str, dict[str, object] | pd.DataFrame]:
    """The tables of RELION 3.1's per-micrograph motion STAR file.

    ``data_general`` is a key–value block; ``data_global_shift`` has one row per frame
    (1-based frame numbers, shifts (x, y) in unbinned movie pixels, correction convention).
    With a ``local_model`` (36 coefficients, :mod:`emlive.motion.deform`):
    rlnMotionModelVersion 1, ``data_local_motion_model`` (rlnMotionModelCoeffsIdx 0–35,
    rlnMotionModelCoeff) and, with ``patch_shifts``, ``data_local_shift`` (one row per patch
    and frame: rlnMicrographFrameNumber, rlnCoordinateX/Y of the patch centre and its
    residual rlnMicrographShiftX/Y, unbinned movie pixels), as RELION 3.1 writes them.
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
            "rlnMotionModelVersion": _MOTION_MODEL_NULL if local_model is None else _MOTION_MODEL_THIRD_ORDER_POLYNOMIAL,
        }
    )
    global_shift = pd.DataFrame(
        {
            "rlnMicrographFrameNumber": np.arange(1, shifts.shape[0] + 1),
            "rlnMicrographShiftX": shifts[:, 0],
            "rlnMicrographShiftY": shifts[:, 1],
        }
    )
    blocks: dict[str, dict[str, object] | pd.DataFrame] = {"general": general, "global_shift": global_shift}
    if local_model is not None:
        coefficients = np.asarray(local_model, dtype=np.float64)
        blocks["local_motion_model"] = pd.DataFrame(
            {"rlnMotionModelCoeffsIdx": np.arange(coefficients.size), "rlnMotionModelCoeff": coefficients}
        )
    if patch_shifts is not None:
        n_patches, n_frames, _ = patch_shifts.shifts_px.shape
        blocks["local_shift"] = pd.DataFrame(
            {
                "rlnMicrographFrameNumber": np.tile(np.arange(1, n_frames + 1), n_patches),
                "rlnCoordinateX": np.repeat(patch_shifts.centres_px[:, 0], n_frames),
                "rlnCoordinateY": np.repeat(patch_shifts.centres_px[:, 1], n_frames),
                "rlnMicrographShiftX": patch_shifts.shifts_px[:, :, 0].ravel(),
                "rlnMicrographShiftY": patch_shifts.shifts_px[:, :, 1].ravel(),
            }
        )
    return blocks


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
    alignment options (B-factor px², search range and tolerance in unbinned px, iterations),
    the patches for local motion and the output binning. ``stem`` names the outputs (default:
    the movie's file stem); ``workers`` is the FFT thread count (``-1``: all CPUs).

    Global only (``patches == (1, 1)``): the frames' half-spectra are kept and summed in
    Fourier space. With patches, the frames are kept as stored (int8/uint8/uint16; an MRC
    movie is mapped from the file), and the alignment sees them gain-corrected, repaired and
    binned in real space to the band it uses (:func:`_alignment_binning`: 4× at B = 150 px²);
    the patches are aligned on the same binned frames, globally aligned, in parallel threads;
    the local model is fitted to the patch tracks and applied by tiles, in parallel threads,
    each tile cast from the stored frames with the gain and repairs applied
    (:mod:`emlive.motion.deform`).

    Raises :class:`emlive.io.MovieFormatError` for an unreadable movie and ``ValueError`` for
    a movie with fewer than 2 frames.
    """
    movie = Path(movie)
    out_dir = Path(out_dir)
    stem = stem or movie.stem
    started = time.perf_counter()
    with open_movie(
        movie,
        gain=acq.gain_path,
        gain_rotation=acq.gain_rotation,
        gain_flip=acq.gain_flip,
        eer_fractions=acq.eer_fractions,
        eer_upsampling=acq.eer_upsampling,
        eer_dose_per_fraction_e_a2=acq.eer_dose_per_fraction_e_a2,
        eer_total_dose_e_a2=acq.eer_total_dose_e_a2,
    ) as source:
        header = source.header
        n_frames = len(source)
        ny, nx = header.shape
        if n_frames < 2:
            raise ValueError(
                f"{movie}: has {n_frames} frame(s); motion correction needs at least 2"
            )
        acq = _as_rendered(acq, header)
        static_bad = _static_defects(acq, source.gain, header)
        full_shape = (ny, nx)
        local = tuple(params.patches) != (1, 1)
        # With patches the frames are kept in real space for the sums, so the alignment may see
        # them binned in real space (b x b sums, as small as the B-factor's band allows): a
        # quarter of the transforms, and the band it uses is the same.
        align_bin = _alignment_binning(full_shape, params.bfactor_px2) if local else 1
        align_shape = _binned_even_shape(full_shape, align_bin)
        crop_shape = crop_shape_for_bfactor(align_shape, params.bfactor_px2 / align_bin**2)
        if local and min(crop_shape[0] // params.patches[1], crop_shape[1] // params.patches[0]) < _MIN_PATCH_PX:
            log.warning(
                "%s: %dx%d patches would be under %d px on the alignment band of %dx%d frames; "
                "aligning globally only",
                movie.name, params.patches[0], params.patches[1], _MIN_PATCH_PX, nx, ny,
            )
            local = False
            align_bin, align_shape = 1, full_shape
        spectra_shape = crop_shape if local else full_shape
        frames_ft = np.empty((n_frames, spectra_shape[0], spectra_shape[1] // 2 + 1), dtype=np.complex64)
        edge_rows = np.empty((n_frames, align_shape[1] // 2 + 1), dtype=np.complex64)
        edge_columns = np.empty((n_frames, align_shape[0]), dtype=np.complex64)
        stored = scale = offset = None
        if local:
            stored, scale, offset = _read_for_local(
                source, static_bad, params, movie, align_bin, align_shape, crop_shape,
                frames_ft, (edge_rows, edge_columns), workers,
            )
        else:
            _read_for_global(source, static_bad, params, movie, frames_ft, (edge_rows, edge_columns), workers)
    read_s = time.perf_counter() - started

    shifts = align_bin * align_frames(
        frames_ft,
        bfactor_px2=params.bfactor_px2 / align_bin**2,
        max_shift_px=params.max_shift_px / align_bin,
        tolerance_px=params.tolerance_px / align_bin,
        max_iterations=params.max_iterations,
        nx=spectra_shape[1],
        boundary=(edge_rows, edge_columns),
        full_shape=align_shape if local else None,
        workers=workers,
    )
    align_s = time.perf_counter() - started - read_s

    coefficients = None
    patch_shifts = None
    if local:
        assert stored is not None
        aligned = globally_aligned_frames(
            frames_ft, shifts / align_bin, crop_shape=crop_shape, full_shape=align_shape, workers=workers
        )
        del frames_ft
        patch_shifts = align_patches(
            aligned,
            patches=tuple(params.patches),
            scale_xy=(align_bin * align_shape[1] / crop_shape[1], align_bin * align_shape[0] / crop_shape[0]),
            bfactor_px2=params.bfactor_px2,
            max_shift_px=min(params.local_max_shift_px, params.max_shift_px),
            tolerance_px=params.tolerance_px,
            max_iterations=params.max_iterations,
            workers=workers,
        )
        del aligned
        coefficients = fit_polynomial_model(patch_shifts, shape=full_shape)
        tile_px = tile_size_for_model(coefficients, shape=full_shape, n_frames=n_frames)

        def dose_filters(shape: tuple[int, int]) -> np.ndarray:
            return dose_weight_stack(
                shape,
                n_frames,
                pixel_size_a=acq.pixel_size_a,
                dose_per_frame_e_a2=acq.dose_per_frame_e_a2,
                voltage_kv=acq.voltage_kv,
            )

        images = local_sums(
            stored, shifts, coefficients, tile_px=tile_px, dose_filters=dose_filters, workers=workers,
            scale=scale, offset=offset,
        )
        del stored, scale, offset
        micrograph, dose_weighted, out_pixel_a = _binned(images, params.bin_factor, acq.pixel_size_a, workers)
        del images
    else:
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
        micrograph, dose_weighted, out_pixel_a = sums.micrograph, sums.dose_weighted, sums.pixel_size_a
    sum_s = time.perf_counter() - started - read_s - align_s
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
    plot_path = out_dir / f"{stem}_shifts.png"
    out_dtype = np.float16 if params.float16 else np.float32
    write_mrc_atomic(micrograph_path, micrograph.astype(out_dtype), pixel_size_a=out_pixel_a)
    write_mrc_atomic(dose_weighted_path, dose_weighted.astype(out_dtype), pixel_size_a=out_pixel_a)
    write_star_atomic(
        star_path,
        motion_star_blocks(
            movie_name=str(movie),
            shape=full_shape,
            shifts_px=shifts,
            acq=acq,
            bin_factor=params.bin_factor,
            local_model=coefficients,
            patch_shifts=patch_shifts,
        ),
        float_format="%.9g",
    )
    write_drift_plot(
        plot_path,
        shifts,
        local=None if coefficients is None else _local_tracks(coefficients, full_shape, params.patches, n_frames, shifts),
        pixel_size_a=acq.pixel_size_a,
        shape=full_shape,
        title=f"{stem}: total {drift.total_a:.1f} Å, early {drift.early_a:.1f} Å, late {drift.late_a:.1f} Å",
    )
    log.info(
        "%s: %d frames %dx%d, total drift %.1f Å%s; read+FFT %.2f s, align %.2f s, local+sums %.2f s, total %.2f s",
        movie.name,
        n_frames,
        nx,
        ny,
        drift.total_a,
        f", {params.patches[0]}x{params.patches[1]} patches" if local else "",
        read_s,
        align_s,
        sum_s,
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
        pixel_size_a=out_pixel_a,
        n_frames=n_frames,
        local_model=None if coefficients is None else [float(c) for c in coefficients],
        drift_plot_path=plot_path,
    )


def _read_for_global(
    source: Movie,
    static_bad: np.ndarray | None,
    params: MotionParams,
    movie: Path,
    frames_ft: np.ndarray,
    boundary: tuple[np.ndarray, np.ndarray],
    workers: int,
) -> None:
    """Fill ``frames_ft`` and ``boundary`` with the full-size frames' half-spectra and edge
    jumps (global alignment only: the sums are made from these spectra)."""
    n_frames = len(source)
    edge_rows, edge_columns = boundary

    def transform(start: int, stop: int, batch: np.ndarray) -> None:
        frames_ft[start:stop] = scipy.fft.rfft2(batch, workers=workers)
        edge_rows[start:stop], edge_columns[start:stop] = boundary_spectra(batch)

    # Reading (decoding, casting, defect repair) of the next batch overlaps the transforms of
    # the previous one: one batch in flight in a helper thread.
    pending = None
    repair = None
    with ThreadPoolExecutor(max_workers=1) as helper:
        for start in range(0, n_frames, _READ_BATCH):
            stop = min(start + _READ_BATCH, n_frames)
            batch = source.frames(start, stop)
            if start == 0:
                repair = _defect_repair(batch.sum(axis=0, dtype=np.float32), len(batch), static_bad, params, movie)
            if repair is not None:
                index, values = repair
                batch.reshape(len(batch), -1)[:, index] = values
            if pending is not None:
                pending.result()
            pending = helper.submit(transform, start, stop, batch)
            del batch
        if pending is not None:
            pending.result()


def _read_for_local(
    source: Movie,
    static_bad: np.ndarray | None,
    params: MotionParams,
    movie: Path,
    align_bin: int,
    align_shape: tuple[int, int],
    crop_shape: tuple[int, int],
    frames_ft: np.ndarray,
    boundary: tuple[np.ndarray, np.ndarray],
    workers: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Read a movie for local alignment: keep its frames as stored (int8/uint8/uint16 …: a
    quarter of float32's memory and page faults; an MRC is mapped from the file, no copy) and
    fill ``frames_ft``/``boundary`` with the spectra and edge jumps of the binned, gain-
    corrected, repaired frames on the alignment band.

    Returns ``(stored, scale, offset)``: the corrected frame ``t`` is
    ``stored[t] * scale + offset`` (``scale`` the gain with zeros at bad pixels, ``offset``
    the replacement values there; either None when not needed)."""
    n_frames = len(source)
    ny, nx = source.header.shape
    edge_rows, edge_columns = boundary
    stored = source.memmap()
    mapped = stored is not None
    if stored is None:
        stored = _populated_empty((n_frames, ny, nx), source.stored_dtype)
    gain = source.gain
    scale: np.ndarray | None = gain
    offset: np.ndarray | None = None
    frame = np.empty((ny, nx), np.float32)  # one corrected frame, reused
    rows = np.empty((align_shape[0], nx), np.float32)
    binned = np.empty((_READ_BATCH, *align_shape), np.float32)

    def corrected(t: int) -> np.ndarray:
        np.copyto(frame, stored[t], casting="unsafe")
        if scale is not None:
            np.multiply(frame, scale, out=frame)
        if offset is not None:
            np.add(frame, offset, out=frame)
        return frame

    def transform(start: int, stop: int) -> None:
        for j, t in enumerate(range(start, stop)):
            _bin_into(corrected(t), align_bin, binned[j], rows)
        seen = binned[: stop - start]
        spectra = scipy.fft.rfft2(seen, workers=workers)
        frames_ft[start:stop] = fourier_crop(spectra, crop_shape) if spectra.shape[-2:] != frames_ft.shape[-2:] else spectra
        edge_rows[start:stop], edge_columns[start:stop] = boundary_spectra(seen)

    # Decoding the next batch (TIFF, EER; in threads that release the GIL) overlaps the
    # binning and transforms of the previous one.
    pending = None
    with ThreadPoolExecutor(max_workers=1) as helper:
        for start in range(0, n_frames, _READ_BATCH):
            stop = min(start + _READ_BATCH, n_frames)
            if not mapped:
                source.read_stored(start, stop, out=stored[start:stop])
            if start == 0:
                frame_sum = stored[start:stop].sum(axis=0, dtype=np.float32)
                if gain is not None:
                    frame_sum *= gain
                repair = _defect_repair(frame_sum, stop - start, static_bad, params, movie)
                del frame_sum
                if repair is not None:
                    index, values = repair
                    scale = np.ones((ny, nx), np.float32) if gain is None else gain.copy()
                    scale.reshape(-1)[index] = 0.0
                    offset = np.zeros((ny, nx), np.float32)
                    offset.reshape(-1)[index] = values
            if pending is not None:
                pending.result()
            pending = helper.submit(transform, start, stop)
        if pending is not None:
            pending.result()
    return stored, scale, offset


def _populated_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose pages the kernel maps up front (MAP_POPULATE): touching
    a fresh multi-GB array page by page costs seconds of page faults on a virtual machine."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if nbytes == 0 or not populate:
        return np.empty(shape, dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _bin_into(frame: np.ndarray, factor: int, out: np.ndarray, rows: np.ndarray) -> None:
    """Sums of factor x factor blocks of one frame (ny, nx) into ``out`` (by, bx), using
    ``rows`` (by, nx) float32 as scratch; blocks beyond (by, bx) are left out."""
    by, bx = out.shape
    if factor == 1:
        out[...] = frame[:by, :bx]
        return
    np.add(frame[0 : by * factor : factor], frame[1 : by * factor : factor], out=rows)
    for j in range(2, factor):
        rows += frame[j : by * factor : factor]
    np.add(rows[:, 0 : bx * factor : factor], rows[:, 1 : bx * factor : factor], out=out)
    for i in range(2, factor):
        out += rows[:, i : bx * factor : factor]


def _alignment_binning(shape: tuple[int, int], bfactor_px2: float) -> int:
    """The real-space binning of the frames the (local) alignment sees (1: none).

    The alignment uses the band where the cross-power weight ``exp(-B k²/2)`` is at least
    ``_ALIGN_WEIGHT_FLOOR`` (k ≤ 0.127 cycles/px at B = 150 px²: binning 4): measured on the
    benchmark movies, dropping the weaker frequencies changes the trajectory error by under
    0.002 px and makes the transforms and the alignment 4 to 8 times cheaper. The binned
    frames keep at least ``_ALIGN_MIN_PX`` px on their short side.
    """
    k_band = math.sqrt(2.0 * math.log(1.0 / _ALIGN_WEIGHT_FLOOR) / bfactor_px2)
    factor = max(1, round(0.5 / k_band))
    while factor > 1 and min(shape) // factor < _ALIGN_MIN_PX:
        factor -= 1
    return factor


def _binned_even_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """Shape of frames binned by ``factor``, each side rounded down to even (the last rows or
    columns that do not fill a whole even-sized grid are left out of the alignment)."""
    if factor == 1:
        return shape
    return (shape[0] // factor) & ~1, (shape[1] // factor) & ~1


def _bin_frames(frames: np.ndarray, factor: int, out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Sums of factor x factor pixel blocks of a stack (k, ny, nx) → (k, ny', nx') float32;
    ``out_shape`` (default ``(ny // factor, nx // factor)``) leaves out the last blocks."""
    k, ny, nx = frames.shape
    by, bx = out_shape or (ny // factor, nx // factor)
    # Strided adds, rows first (whole contiguous rows), then columns: a reshape-and-sum over
    # axes (2, 4) walks the data in an order numpy cannot vectorise, 10x slower.
    rows = frames[:, 0 : by * factor : factor].astype(np.float32)
    for j in range(1, factor):
        rows += frames[:, j : by * factor : factor]
    out = rows[:, :, 0 : bx * factor : factor].copy()
    for i in range(1, factor):
        out += rows[:, :, i : bx * factor : factor]
    return out


def _as_rendered(acq: Acquisition, header: MovieHeader) -> Acquisition:
    """The acquisition as the frames are: pixel size of an upsampled EER, exposure per fraction
    when an EER is fractionated by exposure."""
    update: dict[str, object] = {}
    if header.upsampling != 1:
        update["pixel_size_a"] = acq.pixel_size_a / header.upsampling
    if header.dose_per_fraction_e_a2 is not None:
        if abs(header.dose_per_fraction_e_a2 - acq.dose_per_frame_e_a2) > 0.01 * acq.dose_per_frame_e_a2:
            log.info(
                "%s: dose weighting with the EER fractions' %.4g e/Å² (not the %.4g e/Å² per frame given)",
                header.path.name, header.dose_per_fraction_e_a2, acq.dose_per_frame_e_a2,
            )
        update["dose_per_frame_e_a2"] = header.dose_per_fraction_e_a2
    return acq.model_copy(update=update) if update else acq


def _static_defects(acq: Acquisition, gain: np.ndarray | None, header: MovieHeader) -> np.ndarray | None:
    """Known bad pixels: the defect file or map, and zeros of the gain reference (dead pixels)."""
    bad = None
    if acq.defects_path is not None:
        up = header.upsampling
        native = (header.shape[0] // up, header.shape[1] // up)
        bad = read_defects(acq.defects_path, native)
        if up > 1:
            bad = upsample_mask(bad, up)
    if gain is not None:
        dead = gain == 0
        if dead.any():
            bad = dead if bad is None else bad | dead
    return bad


def _defect_repair(
    frame_sum: np.ndarray, n_summed: int, static_bad: np.ndarray | None, params: MotionParams, movie: Path
) -> tuple[np.ndarray, np.ndarray] | None:
    """(flat indices, per-frame values) of the pixels to replace in every frame, or None.

    ``frame_sum`` is the (gain-corrected) sum of the first ``n_summed`` frames; hot pixels are
    found on it (a hot pixel is hot in each frame).
    """
    bad = static_bad
    n_hot = 0
    if params.detect_hot_pixels:
        hot = hot_pixel_mask(frame_sum, exclude=static_bad)
        n_hot = int(np.count_nonzero(hot))
        if n_hot:
            bad = hot if bad is None else bad | hot
    if bad is None or not bad.any():
        return None
    log.info(
        "%s: replacing %d bad pixels (%d hot, %d from the defects and the gain's zeros)",
        movie.name, int(np.count_nonzero(bad)), n_hot, int(np.count_nonzero(bad)) - n_hot,
    )
    return np.flatnonzero(bad), defect_fill_values(frame_sum, bad, n_frames=n_summed)


def _binned(
    images: np.ndarray, bin_factor: float, pixel_size_a: float, workers: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """(sum, dose-weighted sum, pixel size Å) after Fourier binning of a (2, ny, nx) stack."""
    ny, nx = images.shape[1:]
    out_shape = binned_shape((ny, nx), bin_factor)
    if out_shape == (ny, nx):
        return images[0], images[1], pixel_size_a
    spectra = fourier_crop(scipy.fft.rfft2(images, workers=workers), out_shape)
    binned = scipy.fft.irfft2(spectra, s=out_shape, workers=workers).astype(np.float32)
    binned *= (out_shape[0] * out_shape[1]) / (ny * nx)
    return binned[0], binned[1], pixel_size_a * nx / out_shape[1]


def _local_tracks(
    coefficients: np.ndarray,
    shape: tuple[int, int],
    patches: tuple[int, int],
    n_frames: int,
    global_shifts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Patch centres (P, 2) and the model's total correction there (P, n, 2), unbinned px."""
    windows = patch_windows(shape, patches)
    centres = np.array([((x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0) for y0, y1, x0, x1 in windows])
    frames = np.arange(n_frames)
    tracks = evaluate_model(coefficients, centres[:, 0:1], centres[:, 1:2], frames[None, :], shape=shape)
    return centres, tracks + global_shifts[None]
