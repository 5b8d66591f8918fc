"""ctffind 4.1 and 5 engines: exact argv and stdin answers, golden results files, stand-in runs."""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from emlive.acquisition import Optics
from emlive.ctf import ctffind
from emlive.ctf.ctffind import CtffindParams, build_command, parse_output, parse_version
from emlive.ctf.types import CtfParams
from emlive.tools import ToolError, ToolOutputError, ToolSpec, ToolVersionError, Version

from ..tools.fakes import calls, fake_tool, golden

P = CtffindParams(pixel_size_a=1.06, voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07)


def test_ctffind_4_answers_in_order():
    argv, stdin = build_command(P, version=Version(4, 1, 14), executable="ctffind", micrograph="/m/a.mrc",
                                diagnostic="/w/a.mrc")
    assert argv == ["ctffind"]
    assert stdin.splitlines() == [
        "/m/a.mrc", "/w/a.mrc", "1.06", "300", "2.7", "0.07", "512", "30", "5", "5000", "50000", "100",
        "no", "no", "no", "no", "no",
    ]


def test_ctffind_5_asks_about_tilt_and_thickness_and_phase_shift_adds_its_range():
    p = P.model_copy(update={"fit_phase_shift": True, "expected_astigmatism_a": 300.0})
    _, stdin = build_command(p, version=Version(5, 0, 2), executable="ctffind5", micrograph="m.mrc", diagnostic="d.mrc")
    assert stdin.splitlines()[12:] == [
        "no",  # known astigmatism
        "no",  # slower search
        "yes", "300",  # astigmatism restraint
        "yes", "0", "3.15", "0.1",  # phase shift: min, max, step (rad)
        "no", "no",  # sample tilt, thickness (ctffind 5)
        "no",  # expert options
    ]


@pytest.mark.parametrize(
    ("sample", "version", "release", "expected"),
    [
        ("ctffind-4.1.14_diag.txt", "4.1.14", "ctffind4", (16012.335938, 14493.127930, 34.812347, 0.0, 0.128873, 4.126289)),
        ("ctffind-4.1.14_phase_diag.txt", "4.1.14", "ctffind4", (6123.500977, 5901.842285, -52.107746, 1.284552, 0.201344, 3.812771)),
        ("ctffind-5.0.2_diag.txt", "5.0.2", "ctffind5", (16004.918945, 14501.207031, 35.110432, 0.0, 0.131207, 4.088417)),
    ],
)
def test_golden_results_files_of_each_release(sample, version, release, expected):
    fit = parse_output(golden(f"ctffind/{sample}"), Version.parse(version), release=release)
    got = (fit.defocus_1_a, fit.defocus_2_a, fit.azimuth_deg, fit.phase_shift_rad, fit.cross_correlation, fit.fit_resolution_a)
    assert got == pytest.approx(expected)
    assert (fit.thickness_a is None) == (release == "ctffind4")


def test_a_10_column_file_is_not_ctffind_4_and_a_7_column_file_is_not_ctffind_5():
    with pytest.raises(ValueError, match="says ctffind 5.0.2"):
        parse_output(golden("ctffind/ctffind-5.0.2_diag.txt"), Version(4, 1, 14))
    seven_under_five = golden("ctffind/ctffind-4.1.14_diag.txt").replace("version 4.1.14", "version 5.0.2")
    with pytest.raises(ValueError, match="writes 10 columns"):
        parse_output(seven_under_five, Version(5, 0, 2), release="ctffind5")
    with pytest.raises(ValueError, match="no result line"):
        parse_output("# Output from CTFFind version 4.1.14\n", Version(4, 1, 14))
    with pytest.raises(ValueError, match="not a number"):
        parse_output("1 2 3 4 5 nan? 7\n", Version(4, 1, 14))
    with pytest.raises(ToolVersionError):
        parse_output(golden("ctffind/ctffind-4.1.14_diag.txt"), Version(4, 0, 17))


def test_versions():
    assert parse_version(golden("ctffind/ctffind-4.1.14_version.txt")) == Version(4, 1, 14)
    assert parse_version(golden("ctffind/ctffind-5.0.2_version.txt")) == Version(5, 0, 2)
    assert parse_version("ctffind: command not understood") is None


CTFFIND_BODY = """
diagnostic = Path(answers[1])
write_mrc(diagnostic, shape=(1, 128, 128))
base = diagnostic.with_suffix("")
Path(str(base) + ".txt").write_text({txt!r})
Path(str(base) + "_avrot.txt").write_text({avrot!r})
print("Estimated defocus values        : 16012.34 , 14493.13 Angstroms")
"""


def _micrograph(path: Path) -> Path:
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=(128, 128)).astype(np.float32))
        mrc.voxel_size = 1.0
    return path


@pytest.mark.parametrize(("release", "sample"), [("ctffind4", "4.1.14"), ("ctffind5", "5.0.2")])
def test_a_run_with_a_stand_in_ctffind_writes_the_ctffind_files_and_a_png(tmp_path, release, sample):
    tool = fake_tool(
        tmp_path / "ctffind",
        version=golden(f"ctffind/ctffind-{sample}_version.txt"),
        body=CTFFIND_BODY.format(
            txt=golden(f"ctffind/ctffind-{sample}_diag.txt"), avrot=golden("ctffind/ctffind-4.1.14_diag_avrot.txt")
        ),
    )
    micrograph = _micrograph(tmp_path / "mic.mrc")
    run = ctffind.estimate_ctf_ctffind4 if release == "ctffind4" else ctffind.estimate_ctf_ctffind5
    result = run(micrograph, tmp_path / "out", Optics(pixel_size_a=1.0), CtfParams(), stem="exp1",
                 spec=ToolSpec(executable=str(tool)))
    assert result.defocus_u_a == pytest.approx(16012.335938 if release == "ctffind4" else 16004.918945)
    assert result.fit_ok and result.ice_ring_ratio is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["exp1.png", "exp1.txt", "exp1_avrot.txt"]
    assert result.output_txt_path.read_text() == golden(f"ctffind/ctffind-{sample}_diag.txt")
    (call,) = calls(tool)
    answers = call["stdin"].splitlines()
    assert answers[0] == str(micrograph.resolve())
    assert len(answers) == (17 if release == "ctffind4" else 19)


def test_ctffind_that_writes_nothing_is_an_output_error_with_its_output(tmp_path):
    tool = fake_tool(tmp_path / "ctffind", version="4.1.14\n", body="print('Error: Input file does not exist')\n")
    with pytest.raises(ToolOutputError, match="without writing") as caught:
        ctffind.estimate_ctf_ctffind4(_micrograph(tmp_path / "m.mrc"), tmp_path / "out", Optics(pixel_size_a=1.0),
                                      CtfParams(), spec=ToolSpec(executable=str(tool)))
    assert "Input file does not exist" in caught.value.stderr_tail


def test_ctffind_crash_keeps_the_exit_code(tmp_path):
    tool = fake_tool(tmp_path / "ctffind", version="4.1.14\n", body="sys.stderr.write('Segmentation fault\\n')\nsys.exit(139)\n")
    with pytest.raises(ToolError) as caught:
        ctffind.estimate_ctf_ctffind4(_micrograph(tmp_path / "m.mrc"), tmp_path / "out", Optics(pixel_size_a=1.0),
                                      CtfParams(), spec=ToolSpec(executable=str(tool)))
    assert caught.value.exit_code == 139 and "Segmentation fault" in str(caught.value)


def test_phase_shift_is_kept_in_radians():
    fit = parse_output(golden("ctffind/ctffind-4.1.14_phase_diag.txt"), Version(4, 1, 14))
    assert math.degrees(fit.phase_shift_rad) == pytest.approx(73.6, abs=0.1)


def test_ctffind_writing_garbage_is_an_output_error(tmp_path):
    body = (
        "Path(answers[1]).with_suffix('.txt').write_text('\\x00\\x7f garbage')\n"
        "Path(str(Path(answers[1]).with_suffix('')) + '_avrot.txt').write_text('x')\n"
        "write_mrc(answers[1])\n"
    )
    tool = fake_tool(tmp_path / "ctffind", version="4.1.14\n", body=body)
    with pytest.raises(ToolOutputError, match="cannot read ctffind's results") as caught:
        ctffind.estimate_ctf_ctffind4(_micrograph(tmp_path / "m.mrc"), tmp_path / "out", Optics(pixel_size_a=1.0),
                                      CtfParams(), spec=ToolSpec(executable=str(tool)))
    assert isinstance(caught.value, ValueError)  # permanent: not retried
    assert list((tmp_path / "out").iterdir()) == []


def test_the_astigmatism_restraint_reaches_ctffind_and_gctf():
    from emlive.ctf import gctf

    params = CtfParams(expected_astigmatism_a=250.0)
    p = ctffind.ctffind_params(Optics(pixel_size_a=1.0), params)
    _, stdin = build_command(p, version=Version(4, 1, 14), executable="ctffind", micrograph="m", diagnostic="d")
    assert stdin.splitlines()[14:16] == ["yes", "250"]
    argv = gctf.build_command(gctf.gctf_params(Optics(pixel_size_a=1.0), params), executable="Gctf", micrograph="m")
    assert argv[argv.index("--astm") + 1] == "250"
    unrestrained = gctf.build_command(gctf.gctf_params(Optics(pixel_size_a=1.0), CtfParams()), executable="Gctf", micrograph="m")
    assert unrestrained[unrestrained.index("--astm") + 1] == "1000"
