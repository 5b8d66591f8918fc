"""A tilt series stored as the controller stores one, for the web tests (API, dashboard,
browser): the series and its tilts written with the ORM, each tilt's movie recorded and its
motion and CTF results stored through ``emlive.db.store``, and the series' montage and
central slice as small generated PNGs under ``<out_dir>/tomo/<name>/``.

Seven tilts, −9…+9° in 3° steps, collected dose-symmetrically (0, +3, −3, −6, +6, +9, −9;
3 e/Å² each); the last one acquired (−9°) is dark and excluded. Defocus grows with the tilt
angle (1 000 Å per 3°), drift with the acquisition order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from emlive.ctf.types import CtfResult
from emlive.io.png import write_png_atomic
from emlive.motion.types import MotionResult

ORDER_DEG = (0.0, 3.0, -3.0, -6.0, 6.0, 9.0, -9.0)
"""Tilt angles in acquisition order (index = acquisition index = the mdoc's ZValue)."""
DOSE_PER_TILT_E_A2 = 3.0
DARK_REASON = "dark: mean 12 counts, 8% of the series median"
DARK_Z = 6
ENGINES = {"motion_engine": "native", "motion_engine_version": "t", "ctf_engine": "native", "ctf_engine_version": "t"}


def defocus_u_a(angle_deg: float) -> float:
    return 30000.0 + angle_deg / 3.0 * 1000.0


def total_drift_a(z_value: int) -> float:
    return 2.0 + z_value


def movie_name(name: str, z_value: int) -> str:
    return f"{name}_{z_value:03d}_{ORDER_DEG[z_value]:.1f}.tif"


@dataclass(frozen=True)
class StoredSeries:
    series: object  # emlive.db.models.TiltSeries
    exposure_ids: dict[int, int]  # z_value → exposure id, for the tilts whose movie came
    montage: Path | None
    central_slice: Path | None


def _results(out_dir: Path, stem: str, angle_deg: float, z_value: int) -> tuple[MotionResult, CtfResult]:
    motion_dir, ctf_dir = out_dir / "motion", out_dir / "ctf"
    motion_dir.mkdir(parents=True, exist_ok=True)
    ctf_dir.mkdir(parents=True, exist_ok=True)
    for path in (motion_dir / f"{stem}.mrc", motion_dir / f"{stem}_DW.mrc", motion_dir / f"{stem}.star",
                 ctf_dir / f"{stem}.txt", ctf_dir / f"{stem}_avrot.txt"):
        path.write_bytes(b"")
    spectrum = ctf_dir / f"{stem}.png"
    write_png_atomic(spectrum, np.random.default_rng(z_value).normal(size=(32, 32)))
    thumbnail = out_dir / "thumbnail" / f"{stem}.png"  # where the pipeline's thumbnail step puts it
    thumbnail.parent.mkdir(parents=True, exist_ok=True)
    write_png_atomic(thumbnail, np.random.default_rng(100 + z_value).normal(size=(48, 48)))
    drift = total_drift_a(z_value)
    motion = MotionResult(
        shifts_px=[(0.0, 0.0), (-0.5 * drift, 0.2), (-drift, 0.4)], total_drift_a=drift, early_drift_a=drift / 4,
        late_drift_a=drift * 3 / 4, micrograph_path=motion_dir / f"{stem}.mrc", dose_weighted_path=motion_dir / f"{stem}_DW.mrc",
        star_path=motion_dir / f"{stem}.star", pixel_size_a=1.35, n_frames=3,
    )
    ctf = CtfResult(
        defocus_u_a=defocus_u_a(angle_deg), defocus_v_a=defocus_u_a(angle_deg) - 400.0, azimuth_deg=40.0,
        cross_correlation=0.15, fit_resolution_a=8.0 + abs(angle_deg) / 3.0, fit_ok=True, ice_ring_ratio=None,
        output_txt_path=ctf_dir / f"{stem}.txt", avrot_path=ctf_dir / f"{stem}_avrot.txt", diagnostic_png_path=spectrum,
    )
    return motion, ctf


def pictures(out_dir: Path, name: str) -> tuple[Path, Path]:
    """A montage (the seven tilts side by side: bright discs that narrow with the tilt) and a
    central slice (a membrane-like ring and dots), as the series step writes them."""
    folder = out_dir / "tomo" / name
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:64, :64] - 31.5
    tiles = [np.exp(-((xx / max(np.cos(np.radians(a)), 0.2)) ** 2 + yy**2) / 300.0) for a in sorted(ORDER_DEG)]
    montage = folder / f"{name}_montage.png"
    write_png_atomic(montage, np.hstack(tiles))
    ring = np.exp(-((np.hypot(xx, yy) - 20.0) ** 2) / 4.0) + np.exp(-(((xx - 5) ** 2 + (yy + 3) ** 2) / 6.0))
    central = folder / f"{name}_central_slice.png"
    write_png_atomic(central, ring)
    return montage, central


def add_tilts(session, series, z_values, *, processed: bool = True) -> dict[int, int]:
    """The movies of tilts ``z_values`` come (and, when ``processed``, their motion and CTF
    results are stored): recorded, linked to their tilts; returns ``{z_value: exposure id}``."""
    from emlive.db import store

    exposure_ids: dict[int, int] = {}
    for z in z_values:
        exposure, _ = store.record_exposure(session, movie_name(series.name, z), 1000, time.time_ns() - (60 - z) * 10**9)
        exposure_ids[z] = exposure.pk
        if processed:
            store.mark_submitted(exposure.pk)
            stem = Path(movie_name(series.name, z)).stem
            store.store_result(exposure.pk, *_results(Path(session.out_dir), stem, ORDER_DEG[z], z), **ENGINES)
    store.link_tilts(series, exposure_ids)
    return exposure_ids


def finish_series(session, series, *, state: str = "done", with_pictures: bool = True, dark_excluded: bool = True):
    """The series' group step ran: its result stored (alignment, tomogram path, pictures, the
    dark tilt excluded); returns (series, montage, central slice)."""
    from emlive.db import store

    out_dir = Path(session.out_dir)
    store.set_tilt_series_state(series, "complete")
    montage, central = pictures(out_dir, series.name) if with_pictures else (None, None)
    tomogram = out_dir / "tomo" / series.name / f"{series.name}.mrc"
    series = store.store_tilt_series_result(
        series, state=state, result={"tomogram_path": str(tomogram)}, input_hash="0" * 64,
        exclusions={DARK_Z: DARK_REASON} if dark_excluded else {}, tilt_axis_refined_deg=84.6,
        alignment_residual_px=0.42, pixel_size_a=10.8, tomogram_path=tomogram, central_slice_png_path=central,
        montage_png_path=montage,
    )
    return series, montage, central


def store_series(
    session,
    *,
    name: str = "TS_01",
    arrived: int = len(ORDER_DEG),
    processed: int | None = None,
    state: str = "done",
    with_pictures: bool = True,
) -> StoredSeries:
    """Record the series of ``session`` through the store, as the controller does: the mdoc's
    seven tilts, the first ``arrived`` movies (acquisition order) linked to their tilts, the
    first ``processed`` of them (default: all arrived) with results; a ``done`` or ``partial``
    series has its result (alignment, tomogram path, pictures, the dark tilt excluded)."""
    from django.utils import timezone

    from emlive.db import store

    processed = arrived if processed is None else processed
    start = timezone.now() - timedelta(minutes=5)
    rows = [
        store.TiltRow(z_value=z, movie_name=movie_name(name, z), tilt_angle_deg=angle, acquisition_index=z,
                      acquired_at=start + timedelta(seconds=8 * z), dose_e_a2=DOSE_PER_TILT_E_A2,
                      pre_exposure_e_a2=DOSE_PER_TILT_E_A2 * z)
        for z, angle in enumerate(ORDER_DEG)
    ]
    series, _ = store.record_tilt_series(
        session, name=name, mdoc_path=Path(session.raw_dir) / f"{name}.mrc.mdoc", tilts=rows, tilt_axis_nominal_deg=85.0,
        n_tilts_expected=len(ORDER_DEG),
    )
    exposure_ids = add_tilts(session, series, range(processed))
    exposure_ids |= add_tilts(session, series, range(processed, arrived), processed=False)
    montage = central = None
    if state in ("done", "partial"):
        series, montage, central = finish_series(
            session, series, state=state, with_pictures=with_pictures, dark_excluded=processed > DARK_Z
        )
    else:
        series = store.set_tilt_series_state(series, state)
    return StoredSeries(series, exposure_ids, montage, central)
