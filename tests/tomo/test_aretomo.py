"""AreTomo2/3 engine (emlive.tomo.aretomo): exact argv, the .aln parser on golden files, and runs
with stand-in executables (tests/tools/fakes.py) that write what AreTomo writes, crash or
write garbage. The golden .aln files (tests/data/aretomo, see tests/data/README.md) follow the
format AreTomo2's and AreTomo3's sources print."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from emlive.tomo.aretomo import (
    AreTomoParams,
    align_aretomo,
    alignment_from_aln,
    angle_file_text,
    build_command,
    parse_aln,
    parse_version,
)
from emlive.tools import ToolError, ToolOutputError, ToolSpec, ToolsSettings, ToolVersionError, Version, configure_tools
from tests.tools.fakes import calls, fake_tool, golden

ALN2 = "aretomo/aretomo2-1.1.3_TS_01.aln"
ALN3 = "aretomo/aretomo3-2.0.10_TS_01.aln"
ANGLES = np.arange(-12.0, 12.1, 3.0)
TX = [2.39, -2.193, -7.125, 0.0, -7.933, 0.481, 10.722]  # views 1..7 of the golden files
TY = [3.919, 2.855, 0.843, 0.0, -0.234, 5.562, -10.754]
PARAMS = AreTomoParams(pixel_size_a=10.8, tilt_axis_deg=85.3, align_z_px=200, vol_z_px=300, out_bin=2)


def test_versions() -> None:
    assert parse_version(golden("aretomo/aretomo2-1.1.3_version.txt")) == Version(1, 1, 3)
    assert parse_version(golden("aretomo/aretomo3-2.0.10_version.txt")) == Version(2, 0, 10)
    assert parse_version("Usage: AreTomo2 Tags") is None


def test_aretomo2_argv() -> None:
    argv = build_command(PARAMS, program="aretomo2", executable="AreTomo2", stem="TS_01", work="/w")
    assert argv == [
        "AreTomo2", "-InMrc", "TS_01.mrc", "-OutMrc", "TS_01_rec.mrc", "-AngFile", "TS_01.rawtlt",
        "-TiltAxis", "85.3", "1", "-AlignZ", "200", "-VolZ", "300", "-DarkTol", "0.7", "-FlipVol", "1",
        "-Wbp", "1", "-PixSize", "10.8", "-OutBin", "2", "-Kv", "300", "-Cs", "2.7", "-Gpu", "0",
    ]


def test_aretomo3_argv_starts_from_the_tilt_series() -> None:
    p = PARAMS.model_copy(update={"refine_tilt_axis": False, "vol_z_px": 0})
    argv = build_command(p, program="aretomo3", executable="AreTomo3", stem="TS_01", work="/w")
    assert argv == [
        "AreTomo3", "-Cmd", "1", "-InPrefix", "/w/TS_01", "-InSuffix", ".mrc", "-OutDir", "/w/out/",
        "-TiltAxis", "85.3", "-1", "-AlignZ", "200", "-VolZ", "0", "-DarkTol", "0.7", "-FlipVol", "1",
        "-Wbp", "1", "-PixSize", "10.8", "-AtBin", "2", "-kV", "300", "-Cs", "2.7", "-SplitSum", "0",
        "-CorrCTF", "0", "-Gpu", "0",
    ]


def test_angle_files() -> None:
    assert angle_file_text([-3.0, 0.0], program="aretomo2") == "   -3.00\n    0.00\n"
    assert angle_file_text([-3.0, 0.0, 3.0], program="aretomo3", acquisition_order=[2, 0, 1],
                           dose_per_tilt_e_per_a2=3.5) == "   -3.00     3      3.50\n    0.00     1      3.50\n    3.00     2      3.50\n"
    with pytest.raises(ValueError, match="acquisition_order"):
        angle_file_text([0.0, 3.0], program="aretomo3", acquisition_order=[0, 0])


@pytest.mark.parametrize("sample", [ALN2, ALN3])
def test_golden_aln_files_give_the_same_alignment(sample: str) -> None:
    """AreTomo2 numbers rows by input section, AreTomo3 by kept view: both map to the stack."""
    aln = parse_aln(golden(sample))
    assert aln.raw_size == (512, 480, 9) and len(aln.rows) == 7
    assert aln.dark == ((0, 0, -12.0), (8, 8, 12.0))
    shifts, axis, tilts, dropped = alignment_from_aln(aln)
    assert np.isnan(shifts[[0, 8]]).all() and np.isnan(tilts[[0, 8]]).all()
    np.testing.assert_allclose(shifts[1:8, 0], TX)
    np.testing.assert_allclose(shifts[1:8, 1], TY)
    np.testing.assert_allclose(tilts[1:8], ANGLES[1:8] + 0.37)
    assert dropped == ((0, "dark: AreTomo removed it (tilt -12.00°)"), (8, "dark: AreTomo removed it (tilt 12.00°)"))
    expected_axis = 85.2711 if sample == ALN2 else -94.7288
    np.testing.assert_allclose(axis[1:8], expected_axis)


def test_aretomo3_header_and_local_alignment() -> None:
    aln = parse_aln(golden(ALN3))
    assert (aln.alpha_offset_deg, aln.beta_offset_deg, aln.thickness_px) == (0.37, 0.0, 212)
    assert aln.num_patches == 2 and aln.local_lines == 14
    assert parse_aln(golden(ALN2)).alpha_offset_deg is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no '# RawSize"),
        ("# RawSize = 4 4 1\n# SEC ROT\n", "no alignment rows"),
        ("# RawSize = 4 4 2\n# SEC\n  0 1 1 0 0 1 1 1 0 0\n", "RawSize says 2"),
        ("# RawSize = 4 4 1\n  0 1 1 0 0 1 1 1 0 0\n", "before the '# SEC"),
        ("# RawSize = 4 4 1\n# SEC\n  0 1 1 nan 0 1 1 1 0 0\n", "TX 'nan' is not finite"),
        ("# RawSize = 4 4 1\n# SEC\n  0 1 1 0 0 1 1\n", "7 columns"),
        ("# RawSize = 4 x 1\n", "RawSize 'x'"),
    ],
)
def test_damaged_aln_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_aln(text)


def test_sections_that_fit_nothing_are_refused() -> None:
    aln = parse_aln("# RawSize = 4 4 2\n# SEC\n  5 1 1 0 0 1 1 1 0 0\n  7 1 1 0 0 1 1 1 0 0\n")
    with pytest.raises(ValueError, match="match neither"):
        alignment_from_aln(aln)


# --- runs with a stand-in AreTomo -------------------------------------------------------------
FAKE = """
program = {program!r}
golden = {golden!r}
if program == "aretomo2":
    stem = flag("-InMrc")[:-4]
    out = Path(".")
    assert Path(flag("-AngFile")).read_text().count("\\n") == 9
else:
    stem = Path(flag("-InPrefix")).name
    out = Path(flag("-OutDir"))
    assert (Path(flag("-InPrefix") + "_TLT.txt")).read_text().count("\\n") == 9
    assert mrcfile.open(flag("-InPrefix") + ".mrc").data.shape[0] == 9
{action}
"""
WRITE = """
(out / f"{stem}.aln").write_text(golden)
if int(flag("-VolZ")) > 0:
    write_mrc(out / (f"{stem}_rec.mrc" if program == "aretomo2" else f"{stem}_Vol.mrc"), shape=(8, 16, 16))
"""


def _stack(path: Path) -> Path:
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((9, 16, 16), dtype=np.float32))
        mrc.voxel_size = 10.8
    return path


@pytest.fixture
def use_tool():
    def use(program: str, executable: Path) -> None:
        configure_tools(ToolsSettings(**{program: ToolSpec(executable=str(executable))}), gpu_id=1)

    yield use
    configure_tools(ToolsSettings())


def _fake(tmp_path: Path, program: str, action: str = WRITE) -> Path:
    sample = ALN2 if program == "aretomo2" else ALN3
    version = golden(f"aretomo/{Path(sample).name.split('_')[0]}_version.txt")
    return fake_tool(tmp_path / program, version=version,
                     body=FAKE.format(program=program, golden=golden(sample), action=action))


@pytest.mark.parametrize("program", ["aretomo2", "aretomo3"])
def test_a_run_keeps_the_aln_and_the_tomogram(tmp_path: Path, use_tool, program: str) -> None:
    tool = _fake(tmp_path, program)
    use_tool(program, tool)
    out = tmp_path / "out"
    result = align_aretomo(_stack(tmp_path / "ts.st"), ANGLES, out, PARAMS, program=program, stem="TS_01",
                           acquisition_order=[8, 6, 4, 2, 0, 1, 3, 5, 7], dose_per_tilt_e_per_a2=3.0)
    assert sorted(p.name for p in out.iterdir()) == ["TS_01.aln", "TS_01_aretomo.mrc"]
    assert result.tomogram_path == out / "TS_01_aretomo.mrc" and result.files == (out / "TS_01.aln",)
    assert (out / "TS_01.aln").read_text() == golden(ALN2 if program == "aretomo2" else ALN3)
    np.testing.assert_allclose(result.shifts_px[1:8, 0], TX)
    assert [i for i, _ in result.dropped] == [0, 8] and result.residual_px is None
    (call,) = calls(tool)
    assert Path(call["cwd"]).parent == out.resolve() and call["cuda"] == "1"
    assert call["argv"][1:] == build_command(PARAMS, program=program, executable="x", stem="TS_01", work=call["cwd"])[1:]


def test_align_only_keeps_just_the_aln(tmp_path: Path, use_tool) -> None:
    use_tool("aretomo2", _fake(tmp_path, "aretomo2"))
    out = tmp_path / "out"
    result = align_aretomo(_stack(tmp_path / "ts.st"), ANGLES, out, PARAMS.model_copy(update={"vol_z_px": 0}), stem="TS_01")
    assert [p.name for p in out.iterdir()] == ["TS_01.aln"] and result.tomogram_path is None


def test_aretomo_writing_no_aln_is_an_output_error(tmp_path: Path, use_tool) -> None:
    use_tool("aretomo2", _fake(tmp_path, "aretomo2", action="print('GPU 0: out of memory', file=sys.stderr)"))
    with pytest.raises(ToolOutputError, match="AreTomo2 ended without writing TS_01.aln") as caught:
        align_aretomo(_stack(tmp_path / "ts.st"), ANGLES, tmp_path / "out", PARAMS, stem="TS_01")
    assert "out of memory" in caught.value.stderr_tail
    assert list((tmp_path / "out").iterdir()) == []


def test_an_aln_for_another_stack_is_an_output_error(tmp_path: Path, use_tool) -> None:
    other = WRITE.replace("write_text(golden)", "write_text(golden.replace('RawSize = 512 480 9', 'RawSize = 512 480 10').replace('# SEC', '# DarkFrame =  9 9 15.0\\n# SEC'))")
    use_tool("aretomo2", _fake(tmp_path, "aretomo2", action=other))
    with pytest.raises(ToolOutputError, match="cannot read AreTomo2's alignment TS_01.aln: it describes 10 views, the stack has 9"):
        align_aretomo(_stack(tmp_path / "ts.st"), ANGLES, tmp_path / "out", PARAMS, stem="TS_01")


def test_angles_that_do_not_fit_the_stack_are_refused_before_running(tmp_path: Path, use_tool) -> None:
    tool = _fake(tmp_path, "aretomo2")
    use_tool("aretomo2", tool)
    with pytest.raises(ValueError, match="ts.st: the stack has 9 views but 8 tilt angles"):
        align_aretomo(_stack(tmp_path / "ts.st"), ANGLES[:8], tmp_path / "out", PARAMS)
    assert calls(tool) == []


def test_garbage_aln_is_an_output_error(tmp_path: Path, use_tool) -> None:
    use_tool("aretomo2", _fake(tmp_path, "aretomo2", action="Path(f'{stem}.aln').write_text('Segmentation fault\\n'); write_mrc(f'{stem}_rec.mrc')"))
    with pytest.raises(ToolOutputError, match="before the '# SEC"):
        align_aretomo(_stack(tmp_path / "ts.st"), ANGLES, tmp_path / "out", PARAMS, stem="TS_01")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_crash_keeps_the_exit_code(tmp_path: Path, use_tool) -> None:
    use_tool("aretomo2", _fake(tmp_path, "aretomo2", action="sys.stderr.write('CUDA error: invalid device\\n'); sys.exit(3)"))
    with pytest.raises(ToolError, match="failed") as caught:
        align_aretomo(_stack(tmp_path / "ts.st"), ANGLES, tmp_path / "out", PARAMS, stem="TS_01")
    assert caught.value.exit_code == 3 and "invalid device" in caught.value.stderr_tail


def test_an_unsupported_release_is_refused_before_running(tmp_path: Path, use_tool) -> None:
    tool = fake_tool(tmp_path / "AreTomo", version="AreTomo version 1.3.4\n", body="raise SystemExit(9)")
    use_tool("aretomo3", tool)
    with pytest.raises(ToolVersionError, match="1.3.4 is not supported"):
        align_aretomo(_stack(tmp_path / "ts.st"), ANGLES, tmp_path / "out", PARAMS, program="aretomo3")
    assert calls(tool) == []
