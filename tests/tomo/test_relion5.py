"""RELION 5 tomography STAR files (emlive.tomo.relion5), checked against a real RELION 5 sample.

The sample: RELION's own test project for its tomography programs,
repository 3dem/relion, commit ed5780c01ed3bdb4bdb87a2b8b28ca37616ea182,
``src/tomography_python_programs/_tests/test_project_directory/tilt_series_metadata/tilt_series.star``
(the ``data_global`` table: what ``tomograms.star`` holds after ReconstructTomograms) and
``.../tilt_series/220728_TS_01.star`` (one tilt series after MotionCorr, CtfFind and
AlignTiltSeries; EMPIAR-10164's TS_01). Their column names and the first data row of TS_01 are
quoted below; the row also carries RELION 4's projection matrices (rlnTomoProjX/Y/Z/W), which
RELION 5 computes from the Euler angles and shifts (``Tomogram::setProjectionMatrix``,
src/jaz/tomography/tomogram.cpp). Rebuilding those matrices from the row's rlnTomoXTilt,
rlnTomoYTilt, rlnTomoZRot and rlnTomoX/YShiftAngst pins down the units (Å, degrees) and the
signs; the writer's output is then projected with the same formula and compared with emlive's
own geometry (emlive.tomo.geometry).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from emlive.tomo.relion5 import (
    RelionTilt,
    TomogramEntry,
    relion_shifts_a,
    tilt_series_table,
    tomogram_binning,
    tomograms_table,
    write_tilt_series_star,
    write_tomograms_star,
)

# --- the sample (3dem/relion@ed5780c, see the module doc) -------------------------------------
SAMPLE_GLOBAL_COLUMNS = [
    "rlnTomoName", "rlnTomoTiltSeriesStarFile", "rlnVoltage", "rlnSphericalAberration",
    "rlnAmplitudeContrast", "rlnMicrographOriginalPixelSize", "rlnTomoHand",
    "rlnTomoTiltSeriesPixelSize", "rlnEtomoDirectiveFile", "rlnTomoTomogramBinning",
    "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ", "rlnTomoReconstructedTomogram",
]
SAMPLE_TILT_COLUMNS = [
    "rlnMicrographMovieName", "rlnTomoTiltMovieFrameCount", "rlnTomoTiltMovieIndex",
    "rlnTomoNominalStageTiltAngle", "rlnTomoNominalTiltAxisAngle", "rlnTomoNominalDefocus",
    "rlnMicrographPreExposure", "rlnCtfPowerSpectrum", "rlnMicrographName", "rlnMicrographMetadata",
    "rlnAccumMotionTotal", "rlnAccumMotionEarly", "rlnAccumMotionLate", "rlnCtfImage",
    "rlnDefocusU", "rlnDefocusV", "rlnCtfAstigmatism", "rlnDefocusAngle", "rlnCtfFigureOfMerit",
    "rlnCtfMaxResolution", "rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst",
    "rlnTomoYShiftAngst", "rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW",
]
# rlnTomoTiltMovieIndex: the test project's own bookkeeping; rlnTomoProjX..W: RELION 4's
# matrices, which RELION 5 converts on reading and no longer writes.
NOT_WRITTEN = {"rlnTomoTiltMovieIndex", "rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW"}
# TS_01, first row (0° tilt, first acquired)
SAMPLE_ROW = {
    "rlnTomoTiltMovieFrameCount": 8, "rlnTomoNominalStageTiltAngle": 0.001,
    "rlnTomoNominalTiltAxisAngle": 85.0, "rlnTomoNominalDefocus": -4.0, "rlnMicrographPreExposure": 0.0,
    "rlnDefocusU": 39424.761719, "rlnDefocusV": 38845.8125, "rlnCtfAstigmatism": 578.949219,
    "rlnDefocusAngle": 55.762489, "rlnCtfMaxResolution": 8.63491,
    "rlnTomoXTilt": 0.0, "rlnTomoYTilt": 9.02, "rlnTomoZRot": 85.267461,
    "rlnTomoXShiftAngst": -64.15332, "rlnTomoYShiftAngst": 2.585551,
}
SAMPLE_PROJ = np.array([
    [0.0814842382114, -0.996590673923, 0.0129349948257, 3618.28940437],
    [0.984266480393, 0.0825045183301, 0.156244718125, -446.99385167],
    [-0.156779229641, 0, 0.987633645535, -1167.89200902],
    [0, 0, 0, 1],
])
# tilt_series.star row of 220728_TS_01: tilt-series pixel 1.35 Å, tomogram 4000 × 4000 × 3000 px;
# the tilt images are 3710 × 3838 px (K2 super-resolution 7420 × 7676 at 0.675 Å, binned 2)
SAMPLE_PIXEL_A, SAMPLE_TOMO_SIZE, SAMPLE_IMAGE_SIZE = 1.35, (4000, 4000, 3000), (3710, 3838)


def _rotation(axis: int, angle_deg: float) -> np.ndarray:
    """Right-handed rotation about x (0), y (1) or z (2), as RELION's t3Matrix::rotation."""
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.eye(4)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _translation(v: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = v
    return m


def relion_projection(row: pd.Series | dict, *, pixel_size_a: float, tomo_size: tuple[int, int, int],
                      image_size: tuple[int, int]) -> np.ndarray:
    """RELION 5's Tomogram::setProjectionMatrix: S(shift) S(image centre) Rz Ry Rx S(−tomogram centre)."""
    s0 = _translation(-np.floor(np.asarray(tomo_size) / 2.0))
    s1 = _translation(np.array([row["rlnTomoXShiftAngst"], row["rlnTomoYShiftAngst"], 0.0]) / pixel_size_a)
    s2 = _translation(np.array([image_size[0] // 2, image_size[1] // 2, 0.0]))
    r = _rotation(2, row["rlnTomoZRot"]) @ _rotation(1, row["rlnTomoYTilt"]) @ _rotation(0, row["rlnTomoXTilt"])
    return s1 @ s2 @ r @ s0


def test_relion_formula_reproduces_the_samples_matrices() -> None:
    """The sample's own Euler angles and shifts give back its RELION 4 matrices: shifts in Å
    divided by the tilt-series pixel size, ZRot ≈ the tilt axis angle (85° nominal), YTilt the
    tilt angle (here with a 9° pre-tilt found by the alignment)."""
    p = relion_projection(SAMPLE_ROW, pixel_size_a=SAMPLE_PIXEL_A, tomo_size=SAMPLE_TOMO_SIZE,
                          image_size=SAMPLE_IMAGE_SIZE)
    np.testing.assert_allclose(p[:, :3], SAMPLE_PROJ[:, :3], atol=1e-6)
    np.testing.assert_allclose(p[:, 3], SAMPLE_PROJ[:, 3], atol=1e-3)


# --- emlive's writer ------------------------------------------------------------------------
N_TILTS = 7
ANGLES = np.array([0.0, 3.0, -3.0, -6.0, 6.0, 9.0, -9.0])  # acquisition order
TS_PIXEL_A, TS_SIZE = 1.35, (3710, 3838)  # motion-corrected tilt images (nx, ny)
ALIGN_PIXEL_A = TS_PIXEL_A * 3710 / 371  # Fourier-cropped to 371 px wide for the alignment
ALIGN_SIZE = (371, 383)


def _tilts() -> list[RelionTilt]:
    return [
        RelionTilt(
            movie_name=f"raw/TS_01_{i:03d}_{a:.1f}.tif",
            nominal_tilt_deg=float(a),
            pre_exposure_e_per_a2=3.0 * i,
            frame_count=8,
            nominal_defocus_um=-4.0,
            micrograph_name=f"motion/TS_01_{i:03d}_{a:.1f}_DW.mrc",
            micrograph_metadata=f"motion/TS_01_{i:03d}_{a:.1f}.star",
            accum_motion_total_a=2.3 + 0.1 * i,
            accum_motion_early_a=1.0,
            accum_motion_late_a=1.3 + 0.1 * i,
            defocus_u_a=39400.0 + 10 * i,
            defocus_v_a=38800.0 + 10 * i,
            defocus_angle_deg=55.8,
            ctf_figure_of_merit=0.03,
            ctf_max_resolution_a=8.6 + 0.2 * abs(a),
        )
        for i, a in enumerate(ANGLES)
    ]


def _alignment(rng: np.random.Generator) -> tuple[float, np.ndarray]:
    return 84.7, rng.normal(0.0, 4.0, size=(N_TILTS, 2))  # axis (°), content shifts (binned px)


def test_tilt_series_star_columns_units_and_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    axis, shifts_px = _alignment(rng)
    shifts_a = relion_shifts_a(shifts_px, pixel_size_a=ALIGN_PIXEL_A, image_size_px=ALIGN_SIZE,
                               tilt_series_pixel_size_a=TS_PIXEL_A, tilt_series_image_size_px=TS_SIZE)
    table = tilt_series_table(_tilts(), nominal_tilt_axis_deg=85.0, tilt_axis_deg=axis, shifts_a=shifts_a, exclude=[5])
    path = write_tilt_series_star(tmp_path / "TS_01.star", "TS_01", table)
    back = starfile.read(path, always_dict=True)
    assert list(back) == ["TS_01"]
    ts = back["TS_01"]
    # every column of the real sample that RELION 5 reads is written, and nothing RELION lacks
    sample = set(SAMPLE_TILT_COLUMNS) - NOT_WRITTEN
    assert sample - {"rlnCtfPowerSpectrum", "rlnCtfImage"} <= set(ts.columns)
    assert set(ts.columns) <= sample | {"rlnCtfIceRingDensity", "rlnCtfScalefactor"}
    # rows: the excluded tilt (+9°) left out, sorted by tilt angle; values in RELION's units
    assert list(ts["rlnTomoNominalStageTiltAngle"]) == [-9.0, -6.0, -3.0, 0.0, 3.0, 6.0]
    assert ts["rlnTomoTiltMovieFrameCount"].dtype.kind == "i"
    by_angle = ts.set_index("rlnTomoNominalStageTiltAngle")
    assert by_angle.loc[-3.0, "rlnMicrographPreExposure"] == pytest.approx(6.0)  # 3rd acquired
    assert by_angle.loc[6.0, "rlnMicrographPreExposure"] == pytest.approx(12.0)
    assert by_angle.loc[0.0, "rlnTomoNominalDefocus"] == -4.0  # µm, negative = underfocus, as in the sample
    assert (ts["rlnCtfAstigmatism"] == (ts["rlnDefocusU"] - ts["rlnDefocusV"]).abs()).all()
    assert (ts["rlnDefocusU"] > 30000).all()  # Å, positive underfocus, as the sample's 39425
    assert (ts["rlnTomoNominalTiltAxisAngle"] == 85.0).all() and np.allclose(ts["rlnTomoZRot"], axis)
    assert (ts["rlnTomoXTilt"] == 0.0).all()
    np.testing.assert_allclose(ts["rlnTomoYTilt"], ts["rlnTomoNominalStageTiltAngle"])


def test_written_alignment_projects_like_emlive_geometry(tmp_path: Path) -> None:
    """A specimen point projected with RELION's formula from the written files lands where
    emlive's geometry puts it: ``R(α) (x cos θ + z sin θ, y) + s`` from the centre ``(n − 1)/2``
    of the binned images the alignment ran on."""
    rng = np.random.default_rng(5)
    axis, shifts_px = _alignment(rng)
    shifts_a = relion_shifts_a(shifts_px, pixel_size_a=ALIGN_PIXEL_A, image_size_px=ALIGN_SIZE,
                               tilt_series_pixel_size_a=TS_PIXEL_A, tilt_series_image_size_px=TS_SIZE)
    tomo_size = (3710, 3838, 1200)
    entry = TomogramEntry(
        name="TS_01", tilt_series_star="tilt_series/TS_01.star", voltage_kv=300, cs_mm=2.7,
        amplitude_contrast=0.1, original_pixel_size_a=0.675, tilt_series_pixel_size_a=TS_PIXEL_A,
        tomogram_binning=tomogram_binning(ALIGN_PIXEL_A, TS_PIXEL_A), size_xyz_px=tomo_size,
        reconstructed_tomogram="tomograms/TS_01.mrc",
    )
    write_tomograms_star(tmp_path / "tomograms.star", [entry])
    table = tilt_series_table(_tilts(), nominal_tilt_axis_deg=85.0, tilt_axis_deg=axis, shifts_a=shifts_a)
    write_tilt_series_star(tmp_path / "TS_01.star", "TS_01", table)
    glob = starfile.read(tmp_path / "tomograms.star", always_dict=True)["global"]
    ts = starfile.read(tmp_path / "TS_01.star", always_dict=True)["TS_01"]
    row0 = glob.iloc[0]
    size = (int(row0["rlnTomoSizeX"]), int(row0["rlnTomoSizeY"]), int(row0["rlnTomoSizeZ"]))
    pixel = float(row0["rlnTomoTiltSeriesPixelSize"])
    points_a = rng.uniform(-800, 800, size=(20, 3))  # specimen points (x, y, z) in Å from the centre
    alpha = np.deg2rad(axis)
    rot = np.array([[np.cos(alpha), -np.sin(alpha)], [np.sin(alpha), np.cos(alpha)]])
    for i, angle in enumerate(ANGLES):
        row = ts[ts["rlnTomoNominalStageTiltAngle"] == angle].iloc[0]
        p = relion_projection(row, pixel_size_a=pixel, tomo_size=size, image_size=TS_SIZE)
        tomo_px = points_a / pixel + np.floor(np.asarray(size) / 2.0)
        relion_xy_a = (p @ np.c_[tomo_px, np.ones(len(tomo_px))].T)[:2].T * pixel
        t = np.deg2rad(angle)
        uv = np.c_[points_a[:, 0] * np.cos(t) + points_a[:, 2] * np.sin(t), points_a[:, 1]] / ALIGN_PIXEL_A
        centre = (np.asarray(ALIGN_SIZE) - 1) / 2.0
        emlive_xy_a = ((rot @ uv.T).T + shifts_px[i] + centre) * ALIGN_PIXEL_A  # pixel j at j × pixel size
        np.testing.assert_allclose(relion_xy_a, emlive_xy_a, atol=1e-6)


def test_tomograms_star_columns(tmp_path: Path) -> None:
    entry = TomogramEntry(
        name="TS_01", tilt_series_star="tilt_series/TS_01.star", voltage_kv=300, cs_mm=2.7,
        amplitude_contrast=0.1, original_pixel_size_a=0.675, tilt_series_pixel_size_a=1.35,
        tomogram_binning=8.0, size_xyz_px=(3710, 3838, 1200), reconstructed_tomogram="tomograms/TS_01.mrc",
        etomo_directive_file="imod/TS_01/TS_01.edf",
    )
    unaligned = TomogramEntry(name="TS_02", tilt_series_star="tilt_series/TS_02.star", voltage_kv=300,
                              cs_mm=2.7, amplitude_contrast=0.1, original_pixel_size_a=0.675,
                              tilt_series_pixel_size_a=1.35)
    write_tomograms_star(tmp_path / "tomograms.star", [entry])
    glob = starfile.read(tmp_path / "tomograms.star", always_dict=True)["global"]
    assert set(SAMPLE_GLOBAL_COLUMNS) <= set(glob.columns)
    assert set(glob.columns) - set(SAMPLE_GLOBAL_COLUMNS) == {"rlnOpticsGroupName"}  # RELION 5's import adds it
    row = glob.iloc[0]
    assert (row["rlnVoltage"], row["rlnSphericalAberration"], row["rlnAmplitudeContrast"]) == (300, 2.7, 0.1)
    assert (row["rlnMicrographOriginalPixelSize"], row["rlnTomoTiltSeriesPixelSize"], row["rlnTomoHand"]) == (0.675, 1.35, -1)
    assert (row["rlnTomoSizeX"], row["rlnTomoSizeY"], row["rlnTomoSizeZ"], row["rlnTomoTomogramBinning"]) == (3710, 3838, 1200, 8)
    # an import before reconstruction: no reconstruction columns (RELION's ImportTomo table)
    plain = tomograms_table([unaligned])
    assert list(plain.columns) == [*SAMPLE_GLOBAL_COLUMNS[:7], "rlnOpticsGroupName", "rlnTomoTiltSeriesPixelSize"]
    assert "rlnTomoSizeX" not in tomograms_table([entry, unaligned]).columns


def test_unaligned_import_has_no_alignment_columns() -> None:
    table = tilt_series_table(_tilts(), nominal_tilt_axis_deg=85.0)
    assert not {"rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot", "rlnTomoXShiftAngst"} & set(table.columns)
    partial = [RelionTilt(movie_name="a.tif", nominal_tilt_deg=0.0, pre_exposure_e_per_a2=0.0)]
    assert list(tilt_series_table(partial, nominal_tilt_axis_deg=85.0).columns) == [
        "rlnMicrographMovieName", "rlnTomoNominalStageTiltAngle", "rlnTomoNominalTiltAxisAngle", "rlnMicrographPreExposure",
    ]


def test_refusals_name_the_problem() -> None:
    tilts = _tilts()
    with pytest.raises(ValueError, match="both tilt_axis_deg and shifts_a"):
        tilt_series_table(tilts, nominal_tilt_axis_deg=85.0, tilt_axis_deg=85.0)
    nan_shifts = np.zeros((N_TILTS, 2))
    nan_shifts[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tilt_series_table(tilts, nominal_tilt_axis_deg=85.0, tilt_axis_deg=85.0, shifts_a=nan_shifts)
    assert len(tilt_series_table(tilts, nominal_tilt_axis_deg=85.0, tilt_axis_deg=85.0, shifts_a=nan_shifts, exclude=[2])) == 6
    with pytest.raises(ValueError, match="every tilt is excluded"):
        tilt_series_table(tilts[:1], nominal_tilt_axis_deg=85.0, exclude=[0])
    with pytest.raises(ValueError, match="without spaces"):
        tomograms_table([TomogramEntry("TS 1", "x.star", 300, 2.7, 0.1, 1, 1)])
    with pytest.raises(ValueError, match="unique"):
        tomograms_table([TomogramEntry("TS_1", "x.star", 300, 2.7, 0.1, 1, 1)] * 2)


def test_relion_shifts_half_pixel_and_nan() -> None:
    """Same pixels, even size: emlive's centre (n−1)/2 is half a pixel before RELION's n/2."""
    out = relion_shifts_a(np.array([[0.0, 0.0], [2.0, -1.0], [np.nan, np.nan]]), pixel_size_a=2.0,
                          image_size_px=(100, 101), tilt_series_pixel_size_a=2.0, tilt_series_image_size_px=(100, 101))
    np.testing.assert_allclose(out[:2], [[-1.0, 0.0], [3.0, -2.0]])
    assert np.isnan(out[2]).all()


def test_relion_shifts_with_a_pixel_size_per_side() -> None:
    """Fourier-cropped 4092 × 5760 → 552 × 778: the sides' pixel sizes differ by 0.1 %; a point at
    the binned image's corner lands on the same tilt-series position either way."""
    ts_pixel, ts_size, binned = 1.35, (5760, 4092), (778, 552)
    pixel_xy = (ts_pixel * ts_size[0] / binned[0], ts_pixel * ts_size[1] / binned[1])
    corner = np.array([[binned[0] - 1 - (binned[0] - 1) / 2, binned[1] - 1 - (binned[1] - 1) / 2]])
    out = relion_shifts_a(corner, pixel_size_a=pixel_xy, image_size_px=binned,
                          tilt_series_pixel_size_a=ts_pixel, tilt_series_image_size_px=ts_size)
    # the corner pixel (binned_x - 1, binned_y - 1) is at that index × its side's pixel size
    expected = (np.array(binned) - 1) * pixel_xy - np.floor(np.array(ts_size) / 2) * ts_pixel
    np.testing.assert_allclose(out[0], expected, atol=1e-9)
    single = relion_shifts_a(corner, pixel_size_a=pixel_xy[0], image_size_px=binned,
                             tilt_series_pixel_size_a=ts_pixel, tilt_series_image_size_px=ts_size)
    assert abs(single[0, 1] - expected[1]) > 1.0  # one pixel size for both sides is off by Å in y
