"""RELION 5 tomography exports of a session's processed tilt series, written from the database.

Into the session's export folder (one generation of it, see :mod:`emlive.db.export`)::

    tomograms.star              data_global: one row per processed tilt series (done or partial)
    tilt_series/<name>.star     data_<name>: one row per tilt used, by tilt angle

as :mod:`emlive.tomo.relion5` builds them. Per tilt: the movie (absolute path), its frame count,
nominal stage tilt and tilt axis angles, the pre-exposure (e/Å², acquisition order), the aligned
sum not dose weighted (``rlnMicrographName``: RELION 5 weights by the pre-exposure itself) and the
motion STAR file, the accumulated motion, the CTF fit, and the alignment (rlnTomoXTilt = 0,
rlnTomoYTilt = the nominal tilt, rlnTomoZRot = the refined tilt axis, shifts in Å of the tilt
images' pixels). Tilts left out of the reconstruction (dark, failed, never came) are left out.
``tomograms.star`` names the tomogram (``OUT/tomo/<name>/<name>_rec.mrc``) and its binning.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from emlive.db.models import Session, TiltSeries
from emlive.db.queries import series_tilts, tilt_series

__all__ = ["TILT_SERIES_FOLDER", "TOMOGRAMS_STAR", "write_tomo_exports"]

TOMOGRAMS_STAR = "tomograms.star"
TILT_SERIES_FOLDER = "tilt_series"


def write_tomo_exports(session: Session, folder: Path) -> list[Path]:
    """Write the RELION 5 files of the session's processed tilt series into ``folder``; the
    paths written (none when no series is processed). Paths in them are absolute; the tilt
    series STAR files are named through ``folder`` (the export writer makes that the published
    ``exports/`` folder)."""
    from emlive.tomo.relion5 import (
        RelionTilt,
        TomogramEntry,
        relion_shifts_a,
        tilt_series_table,
        tomogram_binning,
        write_tilt_series_star,
        write_tomograms_star,
    )

    processed = list(tilt_series(session).filter(state__in=[TiltSeries.State.DONE, TiltSeries.State.PARTIAL]))
    written: list[Path] = []
    entries: list[TomogramEntry] = []
    for series in processed:
        result = series.result_json or {}
        shifts = {int(z): xy for z, xy in (result.get("shifts_px") or {}).items()}
        tilts, xy = [], []
        pixel_size_a: float | None = None
        for tilt in series_tilts(series):
            exposure = tilt.exposure
            if tilt.excluded_reason or tilt.z_value not in shifts or exposure is None:
                continue
            motion = getattr(exposure, "motion", None)
            ctf = getattr(exposure, "ctf", None)
            if motion is None:
                continue
            pixel_size_a = motion.pixel_size_a
            tilts.append(RelionTilt(
                movie_name=str(exposure.movie_path), nominal_tilt_deg=tilt.tilt_angle_deg,
                pre_exposure_e_per_a2=tilt.pre_exposure_e_a2, frame_count=motion.n_frames,
                micrograph_name=motion.micrograph_path, micrograph_metadata=motion.star_path,
                accum_motion_total_a=motion.total_drift_a, accum_motion_early_a=motion.early_drift_a,
                accum_motion_late_a=motion.late_drift_a,
                defocus_u_a=None if ctf is None else ctf.defocus_u_a,
                defocus_v_a=None if ctf is None else ctf.defocus_v_a,
                defocus_angle_deg=None if ctf is None else ctf.azimuth_deg,
                ctf_figure_of_merit=None if ctf is None else ctf.cross_correlation,
                ctf_max_resolution_a=None if ctf is None else ctf.fit_resolution_a,
            ))
            xy.append(shifts[tilt.z_value])
        size = result.get("micrograph_size_xy")
        if not tilts or pixel_size_a is None or not size or not series.pixel_size_a:
            continue
        frames_px = (int(size[0]), int(size[1]))
        stack_size = result.get("stack_size_xy") or frames_px
        # binning rounds each side to whole pixels: the stack's pixel size per side (x, y)
        binned_a = (frames_px[0] * pixel_size_a / int(stack_size[0]), frames_px[1] * pixel_size_a / int(stack_size[1]))
        shifts_a = relion_shifts_a(
            np.asarray(xy, dtype=np.float64), pixel_size_a=binned_a,
            image_size_px=(int(stack_size[0]), int(stack_size[1])), tilt_series_pixel_size_a=pixel_size_a,
            tilt_series_image_size_px=frames_px,
        )
        axis = series.tilt_axis_refined_deg if series.tilt_axis_refined_deg is not None else series.tilt_axis_nominal_deg
        table = tilt_series_table(
            tilts, nominal_tilt_axis_deg=series.tilt_axis_nominal_deg or 0.0, tilt_axis_deg=float(axis or 0.0),
            shifts_a=shifts_a,
        )
        star = folder / TILT_SERIES_FOLDER / f"{series.name}.star"
        star.parent.mkdir(parents=True, exist_ok=True)
        written.append(write_tilt_series_star(star, series.name, table))
        binning = tomogram_binning(series.pixel_size_a, pixel_size_a)
        shape_zyx = result.get("tomogram_shape_zyx")
        entries.append(TomogramEntry(
            name=series.name, tilt_series_star=str(star), voltage_kv=float(result.get("voltage_kv") or session.voltage_kv),
            cs_mm=session.cs_mm, amplitude_contrast=session.amplitude_contrast,
            original_pixel_size_a=float(result.get("movie_pixel_size_a") or pixel_size_a),  # (motion may bin)
            tilt_series_pixel_size_a=pixel_size_a,
            tomogram_binning=binning if shape_zyx else None,
            size_xyz_px=None if not shape_zyx else tuple(  # type: ignore[arg-type]
                int(math.floor(n * binning + 0.5)) for n in (shape_zyx[2], shape_zyx[1], shape_zyx[0])),
            reconstructed_tomogram=series.tomogram_path or None,
        ))
    if entries:
        written.append(write_tomograms_star(folder / TOMOGRAMS_STAR, entries))
    for stale in [folder / TOMOGRAMS_STAR, *sorted((folder / TILT_SERIES_FOLDER).glob("*.star"))]:
        if stale not in written and stale.exists():  # carried over from the last generation
            stale.unlink()
    return written
