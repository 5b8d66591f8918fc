"""cryoSPARC's .cs exports, read back as cryoSPARC reads them: cryoSPARC-tools' own
``Dataset.load``, the documented field names, dtypes and units, against the STAR exports."""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from cryosparc import dataset  # cryoSPARC's own reader (cryosparc-tools, a test dependency)

from emlive.sinks.cryosparc import CryosparcMicrograph, CryosparcOptics, exposure_table, particle_table, uid_of

OPTICS = CryosparcOptics(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1, dose_per_frame_e_a2=1.25)


def _micrograph(name: str, shape_px: tuple[int, int]) -> CryosparcMicrograph:
    return CryosparcMicrograph(
        dose_weighted_path=f"/data/motion/{name}_DW.mrc", micrograph_path=f"/data/motion/{name}.mrc",
        shape_px=shape_px, pixel_size_a=0.83, defocus_u_a=15000.0, defocus_v_a=14000.0, azimuth_deg=30.0,
        phase_shift_rad=0.0, cross_correlation=0.2, fit_resolution_a=3.5, total_dose_e_a2=50.0,
    )


def test_picks_become_fractions_of_width_and_height_of_their_micrograph(tmp_path):
    micrographs = [_micrograph("a", (400, 600)), _micrograph("b", (512, 512))]
    picks = [
        pd.DataFrame({"rlnCoordinateX": [60.0, 300.0], "rlnCoordinateY": [100.0, 200.0],
                      "rlnAutopickFigureOfMerit": [1.5, 2.5]}),
        pd.DataFrame({"rlnCoordinateX": [256.0], "rlnCoordinateY": [128.0], "rlnAutopickFigureOfMerit": [3.0]}),
    ]
    table = particle_table(micrographs, picks)
    assert table["location/center_x_frac"].tolist() == pytest.approx([0.1, 0.5, 0.5])
    assert table["location/center_y_frac"].tolist() == pytest.approx([0.25, 0.5, 0.25])
    assert table["location/micrograph_shape"].tolist() == [[400, 600], [400, 600], [512, 512]]
    assert table["location/micrograph_uid"].tolist() == [uid_of("/data/motion/a_DW.mrc")] * 2 + [
        uid_of("/data/motion/b_DW.mrc")]
    assert len(set(table["uid"].tolist())) == 3
    exposures = exposure_table(micrographs, OPTICS)
    assert set(table["location/micrograph_uid"]) <= set(exposures["uid"])
    assert exposures["ctf/df_angle_rad"][0] == pytest.approx(math.radians(30.0))
    assert exposures["mscope_params/accel_kv"].tolist() == [300.0, 300.0]
    assert exposures["ctf/amp_contrast"][0] == pytest.approx(0.1)


def _cs(path: Path):
    data = np.load(path, allow_pickle=False)  # numpy's .npy format, no pickled objects
    assert data.dtype.names is not None
    return dataset.Dataset.load(path), data


def test_a_processed_sessions_cs_files_load_in_cryosparc_tools_with_the_star_values(processed):
    exports = processed / "exports"
    ctf = starfile.read(exports / "micrographs_ctf.star", always_dict=True)
    mics, optics = ctf["micrographs"], ctf["optics"]
    exposures, raw = _cs(exports / "cryosparc" / "exposures.cs")
    assert len(exposures) == len(mics) == 2
    # the documented fields, with cryoSPARC's dtypes
    for name, kind in [("uid", "<u8"), ("micrograph_blob/psize_A", "<f4"), ("ctf/df1_A", "<f4"),
                       ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"), ("ctf/accel_kv", "<f4"),
                       ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"), ("ctf/phase_shift_rad", "<f4"),
                       ("mscope_params/accel_kv", "<f4"), ("ctf_stats/ctf_fit_to_A", "<f4")]:
        assert raw.dtype[name].str == kind, name
    assert raw.dtype["micrograph_blob/shape"].shape == (2,)
    paths = [str(p) for p in exposures["micrograph_blob/path"]]
    assert paths == mics["rlnMicrographName"].tolist()
    assert [str(p) for p in exposures["micrograph_blob_non_dw/path"]] == mics["rlnMicrographNameNoDW"].tolist()
    np.testing.assert_allclose(exposures["ctf/df1_A"], mics["rlnDefocusU"], rtol=1e-6)
    np.testing.assert_allclose(exposures["ctf/df2_A"], mics["rlnDefocusV"], rtol=1e-6)
    np.testing.assert_allclose(exposures["ctf/df_angle_rad"], np.radians(mics["rlnDefocusAngle"]), atol=1e-6)
    np.testing.assert_allclose(exposures["ctf_stats/ctf_fit_to_A"], mics["rlnCtfMaxResolution"], rtol=1e-6)
    np.testing.assert_allclose(exposures["ctf/accel_kv"], optics["rlnVoltage"][0])
    np.testing.assert_allclose(exposures["ctf/cs_mm"], optics["rlnSphericalAberration"][0], rtol=1e-6)
    np.testing.assert_allclose(exposures["ctf/amp_contrast"], optics["rlnAmplitudeContrast"][0], rtol=1e-6)
    np.testing.assert_allclose(exposures["micrograph_blob/psize_A"], optics["rlnMicrographPixelSize"][0])
    np.testing.assert_allclose(exposures["mscope_params/total_dose_e_per_A2"], 8 * 1.0)  # 8 frames of 1 e/Å²
    for path, shape in zip(paths, exposures["micrograph_blob/shape"], strict=True):
        with mrcfile.open(path, header_only=True) as mrc:
            assert shape.tolist() == [int(mrc.header.ny), int(mrc.header.nx)]

    particles, _ = _cs(exports / "cryosparc" / "particles.cs")
    star = starfile.read(exports / "particles.star")
    assert len(particles) == len(star) > 0
    by_uid = dict(zip(exposures["uid"].tolist(), paths, strict=True))
    assert {by_uid[int(uid)] for uid in particles["location/micrograph_uid"]} == set(star["rlnMicrographName"])
    shape = particles["location/micrograph_shape"]
    np.testing.assert_allclose(particles["location/center_x_frac"] * shape[:, 1], star["rlnCoordinateX"], atol=1e-3)
    np.testing.assert_allclose(particles["location/center_y_frac"] * shape[:, 0], star["rlnCoordinateY"], atol=1e-3)
    assert [str(p) for p in particles["location/micrograph_path"]] == star["rlnMicrographName"].tolist()
