"""RELION's own motion correction as an engine: golden STAR files, exact argv, and real runs.

The real runs need ``relion_run_motioncorr`` (Debian package ``relion``) on PATH; they skip
with the reason where it is missing, and fail instead under EMLIVE_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import starfile

from emlive.acquisition import Acquisition
from emlive.motion import relion
from emlive.motion.native import motion_correct as native_motion_correct
from emlive.motion.relion import RelionMotionParams, build_command, movies_star, parse_output, parse_star_text, parse_version
from emlive.motion.types import MotionParams
from emlive.synth.session import write_session
from emlive.tools import ToolError, ToolSpec, ToolVersionError, Version

from ..conftest import run_emlive, skip_or_fail
from ..tools.fakes import DATA, fake_tool, golden

V31 = Version(3, 1, 3)


def test_golden_global_star_from_relion_3_1_3():
    out = parse_output(golden("relion/relion-3.1.3_global.star"), V31)
    assert len(out.shifts_px) == 12
    assert out.shifts_px[0] == (0.0, 0.0)
    assert out.shifts_px[1] == (-2.25026, -1.52599) and out.shifts_px[-1] == (-6.78779, -7.58917)
    assert (out.image_size_px, out.binning, out.local_model) == ((512, 512), 1.0, None)


def test_golden_local_star_from_relion_3_1_3_has_36_model_coefficients():
    out = parse_output(golden("relion/relion-3.1.3_local.star"), V31)
    assert len(out.shifts_px) == 8 and out.shifts_px[0] == (0.0, 0.0)
    assert out.local_model is not None and len(out.local_model) == 36
    blocks = parse_star_text(golden("relion/relion-3.1.3_local.star"))
    assert set(blocks) == {"general", "global_shift", "local_motion_model", "hot_pixels", "local_shift"}


def test_golden_star_of_relion_5_reads_the_same():
    assert parse_output(golden("relion/relion-5.0.0_global.star"), Version(5, 0, 0)) == parse_output(
        golden("relion/relion-3.1.3_global.star"), V31
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data_general\n_rlnImageSizeX 512\n", "need general and global_shift"),
        ("garbage\n", "before any data_ block"),
        (golden("relion/relion-3.1.3_global.star").replace("           3     -3.13439", "           9     -3.13439"), "not consecutive"),
        (golden("relion/relion-3.1.3_global.star").replace("-2.25026", "NaN?"), "expected values"),
    ],
)
def test_broken_star_files_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_output(text, V31)


@pytest.mark.parametrize(
    ("sample", "version"),
    [("relion-3.1.3_version.txt", "3.1.3"), ("relion-4.0.1_version.txt", "4.0.1"), ("relion-5.0.0_version.txt", "5.0.0")],
)
def test_versions_of_relion_3_4_5(sample, version):
    assert parse_version(golden(f"relion/{sample}")) == Version.parse(version)


def test_relion_3_0_and_6_are_refused():
    with pytest.raises(ToolVersionError, match="RELION 3.0.8 is not supported"):
        parse_output(golden("relion/relion-3.1.3_global.star"), Version(3, 0, 8))
    with pytest.raises(ToolVersionError):
        parse_output(golden("relion/relion-3.1.3_global.star"), Version(6, 0, 0))


def test_argv_with_gain_rotation_flip_defects_and_eer():
    p = RelionMotionParams(
        pixel_size_a=0.83, voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.1, dose_per_frame_e_a2=0.5,
        pre_exposure_e_a2=1, bfactor_px2=150, bin_factor=2, max_iterations=5, patches_x=5, patches_y=5,
        gain_path=Path("/g/gain.tiff"), gain_rotation=1, gain_flip=2, defects_path=Path("/g/defects.txt"),
        eer_grouping=10, eer_upsampling=2, threads=4,
    )
    assert build_command(p, movies_star_path="movies.star", out_dir="MotionCorr") == [
        "relion_run_motioncorr", "--i", "movies.star", "--o", "MotionCorr/", "--use_own", "--j", "4",
        "--angpix", "0.83", "--voltage", "300", "--dose_weighting", "--save_noDW", "--dose_per_frame", "0.5",
        "--preexposure", "1", "--bfactor", "150", "--bin_factor", "2", "--max_iter", "5",
        "--patch_x", "5", "--patch_y", "5", "--first_frame_sum", "1", "--last_frame_sum", "-1",
        "--gainref", "/g/gain.tiff", "--gain_rot", "1", "--gain_flip", "2", "--defect_file", "/g/defects.txt",
        "--eer_grouping", "10", "--eer_upsampling", "2",
    ]


def test_eer_grouping_keeps_the_exposure():
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0, eer_fractions=40)
    grouping = relion.eer_grouping(raw_frames=410, fractions=40, dose_per_fraction_e_a2=None, acq_dose_per_frame_e_a2=1.0)
    p = relion.relion_params(acq, MotionParams(), eer=grouping)
    assert p.eer_grouping == 10
    assert p.dose_per_frame_e_a2 == pytest.approx(10 * 40 / 410)  # e/Å² per 10 raw frames


def test_movies_star_has_the_optics_table_relion_3_1_needs():
    p = relion.relion_params(Acquisition(pixel_size_a=1.06, dose_per_frame_e_a2=1.0), MotionParams())
    blocks = parse_star_text(movies_star("Movies/a.tif", p))
    assert blocks["optics"] == [
        {"rlnOpticsGroupName": "opticsGroup1", "rlnOpticsGroup": "1", "rlnMicrographOriginalPixelSize": "1.060000",
         "rlnVoltage": "300.000000", "rlnSphericalAberration": "2.700000", "rlnAmplitudeContrast": "0.070000"}
    ]
    assert blocks["movies"] == [{"rlnMicrographMovieName": "Movies/a.tif", "rlnOpticsGroup": "1"}]


def test_a_relion_crash_fails_with_its_stderr(tmp_path):
    tool = fake_tool(
        tmp_path / "relion_run_motioncorr",
        version=golden("relion/relion-3.1.3_version.txt"),
        body="sys.stderr.write('ERROR: \\nERROR: cannot read movie\\n=== Backtrace  ===\\n')\nsys.exit(1)\n",
    )
    session = write_session(tmp_path / "s", n_movies=1, formats=("mrc",), seed=1, shape=(64, 64), n_frames=4)
    movie = tmp_path / "s" / "raw" / session.movies[0].name
    with pytest.raises(ToolError, match="cannot read movie") as caught:
        relion.motion_correct(movie, tmp_path / "out", Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0),
                              MotionParams(), spec=ToolSpec(executable=str(tool)))
    assert caught.value.exit_code == 1
    assert list((tmp_path / "out").iterdir()) == []


# --- real RELION -----------------------------------------------------------------------------

SMALL = {"shape": (512, 512), "n_frames": 12}
ACQ = ("--apix", "1.0", "--dose-per-frame", "1.0", "--kv", "300")


@pytest.fixture
def relion_binary() -> str:
    path = shutil.which(relion.DEFAULT_EXECUTABLE)
    if path is None:
        skip_or_fail(f"{relion.DEFAULT_EXECUTABLE} is not on PATH (Debian: apt-get install relion)")
    return str(path)


def _rmsd(shifts_px, truth_px) -> float:
    measured = -np.asarray(shifts_px, dtype=float)
    measured -= measured[0]
    return float(np.sqrt(np.mean(np.sum((measured - np.asarray(truth_px)) ** 2, axis=1))))


@pytest.mark.parametrize("fmt", ["mrc", "tiff"])
def test_real_relion_recovers_the_known_drift(tmp_path, relion_binary, fmt):
    truth = write_session(tmp_path / "s", n_movies=1, formats=(fmt,), seed=4, **SMALL)
    movie = tmp_path / "s" / "raw" / truth.movies[0].name
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    result = relion.motion_correct(movie, tmp_path / "out", acq, MotionParams(), stem="exp")
    assert result.n_frames == 12
    # synth writes TIFF movies rows bottom-up, the way RELION (and emlive) read them: the known
    # trajectory holds in RELION's frame for both formats, with no sign change for TIFF
    expected = np.asarray(truth.movies[0].trajectory_px)
    assert _rmsd(result.shifts_px, expected) < 0.5
    if fmt == "tiff":  # emlive's native engine reports the same y sign as RELION for TIFF
        native = native_motion_correct(movie, tmp_path / "native", acq, MotionParams(patches=(1, 1)), stem="exp")
        assert _rmsd(native.shifts_px, expected) < 0.3
        assert float(np.abs(np.subtract(native.shifts_px, result.shifts_px)).max()) < 0.5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["exp.mrc", "exp.star", "exp_DW.mrc"]
    star = starfile.read(result.star_path, always_dict=True)
    assert star["general"]["rlnMicrographMovieName"] == str(movie.resolve())
    assert star["global_shift"]["rlnMicrographShiftX"].tolist() == pytest.approx([x for x, _ in result.shifts_px])


def test_real_relion_through_the_motioncorr_command(tmp_path, relion_binary):
    truth = write_session(tmp_path / "s", n_movies=1, formats=("mrc",), seed=8, **SMALL)
    movie = tmp_path / "s" / "raw" / truth.movies[0].name
    proc = run_emlive("motioncorr", movie, "-o", tmp_path / "out", *ACQ, "--engine", "relion")
    assert proc.returncode == 0, proc.stderr
    stem = movie.stem
    assert {p.name for p in (tmp_path / "out").iterdir()} == {f"{stem}.mrc", f"{stem}_DW.mrc", f"{stem}.star"}
    shifts = starfile.read(tmp_path / "out" / f"{stem}.star", always_dict=True)["global_shift"]
    assert _rmsd(shifts[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(), truth.movies[0].trajectory_px) < 0.5
    assert "total drift" in proc.stdout


def test_relion_golden_samples_are_where_the_readme_says():
    readme = (DATA / "README.md").read_text()
    for sample in sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*") if p.is_file() and p.name != "README.md"):
        assert sample in readme, f"tests/data/README.md does not describe {sample}"


def test_an_old_relion_is_refused_before_it_runs(tmp_path):
    tool = fake_tool(tmp_path / "relion_run_motioncorr", version="RELION version: 2.1.0 \n", body="sys.exit(0)\n")
    session = write_session(tmp_path / "s", n_movies=1, formats=("mrc",), seed=1, shape=(64, 64), n_frames=4)
    with pytest.raises(ToolVersionError, match="RELION 2.1.0 is not supported"):
        relion.motion_correct(tmp_path / "s" / "raw" / session.movies[0].name, tmp_path / "out",
                              Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0), MotionParams(),
                              spec=ToolSpec(executable=str(tool)))


def test_patches_reach_relion_and_motioncor():
    from emlive.motion import motioncor

    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    p = relion.relion_params(acq, MotionParams(patches=(5, 4)))
    argv = build_command(p, movies_star_path="m.star", out_dir="o")
    assert argv[argv.index("--patch_x") + 1 : argv.index("--patch_x") + 4] == ["5", "--patch_y", "4"]
    q = motioncor.motioncor_params(acq, MotionParams(patches=(5, 4)), fmt="mrc")
    mc = motioncor.build_command(q, executable="MotionCor2", movie="a.mrc", output_mrc="o.mrc", log_dir="l/")
    assert mc[mc.index("-Patch") + 1 : mc.index("-Patch") + 3] == ["5", "4"]
    global_only = motioncor.motioncor_params(acq, MotionParams(patches=(1, 1)), fmt="mrc")
    assert "-Patch" not in motioncor.build_command(
        global_only, executable="MotionCor2", movie="a.mrc", output_mrc="o.mrc", log_dir="l/"
    )


def test_real_relion_with_patches_returns_its_local_model(tmp_path, relion_binary):
    truth = write_session(tmp_path / "s", n_movies=1, formats=("mrc",), seed=9, shape=(1024, 1024), n_frames=8)
    movie = tmp_path / "s" / "raw" / truth.movies[0].name
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    result = relion.motion_correct(movie, tmp_path / "out", acq, MotionParams(patches=(4, 4)))
    assert result.local_model is not None and len(result.local_model) == 36
    blocks = starfile.read(result.star_path, always_dict=True)
    assert {"local_motion_model", "local_shift"} <= set(blocks)
    assert _rmsd(result.shifts_px, truth.movies[0].trajectory_px) < 0.5


def test_eer_grouping_by_exposure_uses_the_readers_fractions():
    grouping = relion.eer_grouping(raw_frames=410, fractions=13, dose_per_fraction_e_a2=0.93, acq_dose_per_frame_e_a2=1.0)
    assert grouping == (410, 31, 0.93)
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0, eer_upsampling=2)
    argv = build_command(relion.relion_params(acq, MotionParams(), eer=grouping), movies_star_path="m", out_dir="o")
    assert argv[-4:] == ["--eer_grouping", "31", "--eer_upsampling", "2"]
    assert argv[argv.index("--dose_per_frame") + 1] == "0.93"


def test_gain_orientation_and_defects_reach_relion():
    acq = Acquisition(
        pixel_size_a=1.0, dose_per_frame_e_a2=1.0, gain_path=Path("/g/gain.tiff"), gain_rotation=1, gain_flip="y",
        defects_path=Path("/g/defects.txt"),
    )
    argv = build_command(relion.relion_params(acq, MotionParams()), movies_star_path="m", out_dir="o")
    assert argv[argv.index("--gainref") :] == [
        "--gainref", "/g/gain.tiff", "--gain_rot", "1", "--gain_flip", "1", "--defect_file", "/g/defects.txt",
    ]


def test_real_relion_applies_a_gain_given_by_a_relative_path(tmp_path, relion_binary, monkeypatch):
    truth = write_session(tmp_path / "s", n_movies=1, formats=("mrc",), seed=2, gain=True, **SMALL)
    monkeypatch.chdir(tmp_path)
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0, gain_path=Path("s") / str(truth.gain_file))
    result = relion.motion_correct(Path("s/raw") / truth.movies[0].name, Path("out"), acq, MotionParams(patches=(1, 1)))
    assert _rmsd(result.shifts_px, truth.movies[0].trajectory_px) < 0.5
    general = starfile.read(result.star_path, always_dict=True)["general"]
    assert general["rlnMicrographGainName"] == str(tmp_path / "s" / str(truth.gain_file))
