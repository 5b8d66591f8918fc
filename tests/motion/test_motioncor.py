"""MotionCor2/3 engines: exact argv, golden logs of each release, and runs of a stand-in tool."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from emlive.acquisition import Acquisition
from emlive.motion import motioncor, relion
from emlive.motion.motioncor import MotionCorParams, build_command, fmint_text, parse_output, parse_version
from emlive.motion.types import MotionParams
from emlive.tools import ToolError, ToolOutputError, ToolSpec, ToolVersionError, Version

from ..tools.fakes import calls, fake_tool, golden

EXPECTED_1_4 = [
    (-1.811, 2.068), (-1.549, 1.869), (-0.913, 1.203), (-0.301, 0.512),
    (0.0, 0.0), (0.412, -0.655), (0.798, -1.210), (1.135, -1.701),
]


@pytest.mark.parametrize(
    ("sample", "version", "program", "first", "last"),
    [
        ("motioncor2-1.4.0_stdout.txt", "1.4.0", "motioncor2", (-1.811, 2.068), (1.135, -1.701)),
        ("motioncor2-1.5.0_stdout.txt", "1.5.0", "motioncor2", (-2.05, 1.62), (1.39, -1.08)),
        # two full-frame sections (before and after the patch alignment): the last one counts
        ("motioncor2-1.6.4_stdout.txt", "1.6.4", "motioncor2", (-3.60, 2.55), (2.57, -1.80)),
        ("motioncor3-1.0.1_stdout.txt", "1.0.1", "motioncor3", (-1.80, 2.07), (1.14, -1.70)),
    ],
)
def test_golden_logs_of_each_release_parse_to_the_frame_shifts(sample, version, program, first, last):
    shifts = parse_output(golden(f"motioncor/{sample}"), Version.parse(version), program=program)
    assert len(shifts) == 8
    assert shifts[0] == pytest.approx(first) and shifts[-1] == pytest.approx(last)
    assert shifts[4] == (0.0, 0.0)  # the reference (central) frame


def test_the_1_4_log_is_read_number_for_number():
    np.testing.assert_allclose(parse_output(golden("motioncor/motioncor2-1.4.0_stdout.txt"), Version(1, 4, 0)), EXPECTED_1_4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MotionCor2 version 1.6.4\nError: GPU 0 out of memory\n", "no 'Full-frame alignment shift'"),
        ("Full-frame alignment shift\n...... Frame (  2) shift: 1 2\n...... Frame (  1) shift: 0 0\n", "not 1, 2, 3"),
        ("Full-frame alignment shift\n\x00\x13garbage\n", "no 'Full-frame alignment shift'"),
    ],
)
def test_logs_without_shifts_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_output(text, Version(1, 6, 4))


def test_unsupported_releases_are_refused():
    with pytest.raises(ToolVersionError, match="MotionCor2 1.3.2 is not supported"):
        parse_output(golden("motioncor/motioncor2-1.4.0_stdout.txt"), Version(1, 3, 2))
    with pytest.raises(ToolVersionError, match="MotionCor3 2.0.0"):
        parse_output(golden("motioncor/motioncor3-1.0.1_stdout.txt"), Version(2, 0, 0), program="motioncor3")


def test_versions_from_the_banners():
    assert parse_version(golden("motioncor/motioncor2-1.6.4_version.txt")) == Version(1, 6, 4)
    assert parse_version(golden("motioncor/motioncor3-1.0.1_version.txt")) == Version(1, 0, 1)
    assert parse_version("Segmentation fault") is None


def test_argv_of_a_tiff_movie_with_gain_rotation_flip_and_defects():
    p = MotionCorParams(
        movie_format="tiff", pixel_size_a=0.83, voltage_kv=300, dose_per_frame_e_a2=1.2, pre_exposure_e_a2=0.5,
        bfactor_px2=150, tolerance_px=0.2, max_iterations=7, bin_factor=2, patches_x=5, patches_y=4,
        gain_path=Path("/g/gain.mrc"), gain_rotation=1, gain_flip=2, defects_path=Path("/g/defects.txt"),
    )
    argv = build_command(p, executable="MotionCor2", movie="/raw/a.tif", output_mrc="/w/a.mrc", log_dir="/w/")
    assert argv == [
        "MotionCor2", "-InTiff", "/raw/a.tif", "-OutMrc", "/w/a.mrc", "-PixSize", "0.83", "-kV", "300",
        "-FmDose", "1.2", "-InitDose", "0.5", "-Bft", "150", "-Iter", "7", "-Tol", "0.2", "-FtBin", "2",
        "-Gpu", "0", "-LogDir", "/w/", "-Patch", "5", "4", "-Gain", "/g/gain.mrc", "-RotGain", "1",
        "-FlipGain", "2", "-DefectFile", "/g/defects.txt",
    ]


def test_eer_movies_get_a_frame_integration_file_that_keeps_the_dose():
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0, eer_fractions=40)
    grouping = relion.eer_grouping(raw_frames=410, fractions=40, dose_per_fraction_e_a2=None, acq_dose_per_frame_e_a2=1.0)
    p = motioncor.motioncor_params(acq, MotionParams(), fmt="eer", eer=grouping)
    # 410 raw frames into 40 fractions: 10 raw frames per fraction, 0.0976 e/Å² per raw frame
    assert (p.eer_grouping, p.eer_raw_frames) == (10, 410)
    assert fmint_text(p) == "410 10 0.097561\n"
    argv = build_command(p, executable="MotionCor3", movie="/raw/a.eer", output_mrc="/w/a.mrc", log_dir="/w/",
                         fmint_file="/w/fmint.txt")
    assert argv[1:3] == ["-InEer", "/raw/a.eer"]
    assert argv[-4:] == ["-FmIntFile", "/w/fmint.txt", "-EerSampling", "1"]
    with pytest.raises(ValueError, match="needs its -FmIntFile"):
        build_command(p, executable="MotionCor3", movie="/raw/a.eer", output_mrc="/w/a.mrc", log_dir="/w/")


def _movie(path: Path, n_frames: int = 8) -> Path:
    rng = np.random.default_rng(1)
    with mrcfile.new(path) as mrc:
        mrc.set_data(rng.poisson(2.0, (n_frames, 64, 64)).astype(np.int8))
    return path


MOTIONCOR_BODY = """
out = flag("-OutMrc")
write_mrc(out)
write_mrc(out[:-4] + "_DW.mrc", value=0.5)
sys.stdout.write({stdout!r})
"""


def test_motioncor2_run_with_a_stand_in_tool_writes_emlive_outputs(tmp_path):
    tool = fake_tool(
        tmp_path / "MotionCor2",
        version=golden("motioncor/motioncor2-1.6.4_version.txt"),
        body=MOTIONCOR_BODY.format(stdout=golden("motioncor/motioncor2-1.4.0_stdout.txt")),
    )
    movie = _movie(tmp_path / "m.mrc")
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    out = tmp_path / "out"
    result = motioncor.motion_correct_motioncor2(movie, out, acq, MotionParams(), stem="exp1",
                                                 spec=ToolSpec(executable=str(tool)))
    np.testing.assert_allclose(result.shifts_px, EXPECTED_1_4)
    assert result.n_frames == 8
    assert sorted(p.name for p in out.iterdir()) == ["exp1.mrc", "exp1.star", "exp1_DW.mrc"]
    star = starfile.read(out / "exp1.star", always_dict=True)
    assert star["global_shift"]["rlnMicrographShiftX"].tolist() == pytest.approx([x for x, _ in EXPECTED_1_4])
    assert star["general"]["rlnMicrographMovieName"] == str(movie.resolve())
    (call,) = calls(tool)
    assert call["argv"][1:3] == ["-InMrc", str(movie.resolve())]
    assert call["argv"][call["argv"].index("-OutMrc") + 1].endswith("/exp1.mrc")
    expected_drift = sum(np.hypot(*np.diff(np.array(EXPECTED_1_4), axis=0).T))
    assert result.total_drift_a == pytest.approx(expected_drift)


def test_motioncor_that_crashes_fails_with_its_stderr_tail(tmp_path):
    tool = fake_tool(
        tmp_path / "MotionCor2",
        version="MotionCor2 version 1.6.4\n",
        body=f"sys.stderr.write({golden('motioncor/motioncor2-1.6.4_crash_stderr.txt')!r})\nsys.exit(1)\n",
    )
    with pytest.raises(ToolError, match="out of memory") as caught:
        motioncor.motion_correct_motioncor2(
            _movie(tmp_path / "m.mrc"), tmp_path / "out", Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0),
            MotionParams(), spec=ToolSpec(executable=str(tool)),
        )
    assert caught.value.exit_code == 1
    assert not [p for p in (tmp_path / "out").iterdir()], "nothing half-written is left behind"


def test_motioncor_printing_garbage_is_an_output_error(tmp_path):
    tool = fake_tool(tmp_path / "MotionCor3", version="MotionCor3 version 1.0.1\n", body="print('\\x00\\x07 ok?')\n")
    with pytest.raises(ToolOutputError, match="cannot read MotionCor3's output"):
        motioncor.motion_correct_motioncor3(
            _movie(tmp_path / "m.mrc"), tmp_path / "out", Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0),
            MotionParams(), spec=ToolSpec(executable=str(tool)),
        )


def test_motioncor_of_an_unsupported_release_is_refused_before_running(tmp_path):
    tool = fake_tool(tmp_path / "MotionCor2", version="MotionCor2 version 1.2.1\n", body="sys.exit(3)\n")
    with pytest.raises(ToolVersionError, match="1.2.1 is not supported"):
        motioncor.motion_correct_motioncor2(
            _movie(tmp_path / "m.mrc"), tmp_path / "out", Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0),
            MotionParams(), spec=ToolSpec(executable=str(tool)),
        )
    assert calls(tool) == []


def test_gain_orientation_and_defects_come_from_the_acquisition():
    acq = Acquisition(
        pixel_size_a=1.0, dose_per_frame_e_a2=1.0, gain_path=Path("/g/gain.mrc"), gain_rotation=3, gain_flip="x",
        defects_path=Path("/g/defects.txt"),
    )
    p = motioncor.motioncor_params(acq, MotionParams(), fmt="tiff")
    argv = build_command(p, executable="MotionCor2", movie="a.tif", output_mrc="o.mrc", log_dir="l/")
    assert argv[argv.index("-Gain") :] == [
        "-Gain", "/g/gain.mrc", "-RotGain", "3", "-FlipGain", "2", "-DefectFile", "/g/defects.txt",
    ]
