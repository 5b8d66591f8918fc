"""IMOD engine through batchruntomo (emlive.tomo.imod_tools): the directive file and argv exactly,
tiltalign's log on a golden file, and runs with a stand-in batchruntomo that writes what IMOD
leaves (an .xf made from a known alignment, the .tlt, align.log, the tomogram), fails, or
leaves things out."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from emlive.tomo.imod import xf_from_alignment, xf_text
from emlive.tomo.imod_tools import (
    ImodParams,
    align_imod,
    build_command,
    directives_text,
    imod_spec,
    parse_align_log,
    parse_version,
)
from emlive.tools import ToolError, ToolOutputError, ToolSpec, ToolsSettings, Version, configure_tools
from tests.tools.fakes import calls, fake_tool, golden

ALIGN_LOG = "imod/tiltalign-4.11_align.log"
ANGLES = np.arange(-12.0, 12.1, 3.0)
PARAMS = ImodParams(pixel_size_a=10.8, tilt_axis_deg=85.3, thickness_px=300, exclude_views=(8, 0))


def test_version_from_the_installation_and_from_text() -> None:
    assert parse_version(golden("imod/imod-4.11.24_VERSION.txt")) == Version(4, 11, 24)
    assert parse_version("This is IMOD version 5.0.2\n") == Version(5, 0, 2)
    assert parse_version("Usage: batchruntomo [options] directive_files...") is None


def test_directives_and_argv() -> None:
    assert directives_text(PARAMS).splitlines() == [
        "setupset.copyarg.userawtlt = 1",
        "setupset.copyarg.stackext = st",
        "setupset.copyarg.dual = 0",
        "setupset.copyarg.rotation = 85.3",
        "setupset.copyarg.pixel = 1.08",
        "setupset.copyarg.gold = 10",
        "runtime.Fiducials.any.trackingMethod = 1",
        "runtime.Positioning.any.wholeTomogram = 1",
        "runtime.PatchTracking.any.adjustTiltAngles = 0",
        "runtime.Excludeviews.any.deleteOldFiles = 0",
        "runtime.AlignedStack.any.binByFactor = 1",
        "comparam.prenewst.newstack.BinByFactor = 1",
        "comparam.xcorr_pt.tiltxcorr.SizeOfPatchesXandY = 100,100",
        "comparam.xcorr_pt.tiltxcorr.OverlapOfPatchesXandY = 0.33,0.33",
        "comparam.xcorr_pt.tiltxcorr.IterateCorrelations = 4",
        "comparam.align.tiltalign.RotOption = -1",
        "comparam.align.tiltalign.TiltOption = 0",
        "comparam.align.tiltalign.MagOption = 0",
        "comparam.tilt.tilt.THICKNESS = 300",
        "comparam.align.tiltalign.ExcludeList = 1,9",
        "comparam.tilt.tilt.EXCLUDELIST2 = 1,9",
    ]
    assert build_command(PARAMS, executable="batchruntomo", stem="TS_01", work="/w") == [
        "batchruntomo", "-DirectiveFile", "TS_01.adoc", "-CurrentLocation", "/w", "-RootName", "TS_01",
        "-EndingStep", "14",
    ]
    fixed = PARAMS.model_copy(update={"reconstruct": False, "refine_tilt_axis": False, "exclude_views": ()})
    assert build_command(fixed, executable="b", stem="s", work="/w")[-1] == "6"
    assert "comparam.align.tiltalign.RotOption = 0" in directives_text(fixed)
    assert "ExcludeList" not in directives_text(fixed)


def test_align_log_residual() -> None:
    result = parse_align_log(golden(ALIGN_LOG))
    assert (result.residual_mean, result.residual_sd, result.unit, result.weighted_mean) == (0.54, 0.212, "nm", 0.498)
    assert result.mean_px(10.8) == pytest.approx(0.5)  # 0.54 nm = 5.4 Å = 0.5 px of 10.8 Å
    assert parse_align_log(" Residual error mean and sd:   1.25   0.80\n").mean_px(10.8) == 1.25  # no unit: px
    for bad in ("", "SUCCESSFULLY COMPLETED", " Residual error mean and sd:   nan   0.1 nm\n"):
        with pytest.raises(ValueError):
            parse_align_log(bad)


# --- runs with a stand-in batchruntomo ---------------------------------------------------------
TRUE_AXIS = 85.1
TRUE_SHIFTS = np.random.default_rng(4).normal(0.0, 6.0, size=(9, 2))
FAKE = """
stem = flag("-RootName")
work = Path(flag("-CurrentLocation"))
assert Path.cwd() == work and (work / f"{{stem}}.st").exists()
assert "setupset.copyarg.rotation = 85.3" in (work / flag("-DirectiveFile")).read_text()
angles = [float(a) for a in (work / f"{{stem}}.rawtlt").read_text().split()]
{action}
"""
WRITE = """
(work / f"{{stem}}.xf").write_text({xf!r})
(work / f"{{stem}}.tlt").write_text("".join(f"{{a + 0.08:7.2f}}\\n" for a in angles))
(work / "align.log").write_text({log!r})
if flag("-EndingStep") == "14":
    write_mrc(work / f"{{stem}}_rec.mrc", shape=(4, 16, 16))
print("Completed processing of", stem)
"""


def _fake(tmp_path: Path, action: str | None = None) -> Path:
    xf = xf_text(xf_from_alignment(TRUE_AXIS, TRUE_SHIFTS))
    action = action if action is not None else WRITE.format(xf=xf, log=golden(ALIGN_LOG))
    return fake_tool(tmp_path / "batchruntomo", version="", body=FAKE.format(action=action))


def _stack(path: Path) -> Path:
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((9, 16, 16), dtype=np.float32))
        mrc.voxel_size = 10.8
    return path


@pytest.fixture
def use_imod():
    def use(executable: Path, **spec: object) -> None:
        configure_tools(ToolsSettings(imod=ToolSpec(executable=str(executable), **spec)))

    yield use
    configure_tools(ToolsSettings())


def test_a_run_recovers_the_alignment_from_the_xf(tmp_path: Path, use_imod) -> None:
    tool = _fake(tmp_path)
    use_imod(tool, version="4.11.24")
    out = tmp_path / "out"
    result = align_imod(_stack(tmp_path / "ts.st"), ANGLES, out, PARAMS, stem="TS_01")
    assert sorted(p.name for p in out.iterdir()) == ["TS_01.tlt", "TS_01.xf", "TS_01_align.log", "TS_01_imod.mrc"]
    assert result.tomogram_path == out / "TS_01_imod.mrc"
    np.testing.assert_allclose(result.tilt_axis_deg, TRUE_AXIS, atol=1e-4)
    np.testing.assert_allclose(result.shifts_px[1:8], TRUE_SHIFTS[1:8], atol=2e-3)
    assert np.isnan(result.shifts_px[[0, 8]]).all()  # the excluded views
    assert result.dropped == ((0, "excluded from IMOD's alignment"), (8, "excluded from IMOD's alignment"))
    np.testing.assert_allclose(result.tilt_angles_deg[1:8], ANGLES[1:8] + 0.08, atol=0.006)
    assert result.residual_px == pytest.approx(0.5)
    (call,) = calls(tool)
    assert call["argv"][1:] == build_command(PARAMS, executable="x", stem="TS_01", work=call["cwd"])[1:]
    assert Path(call["cwd"]).parent == out.resolve()


def test_align_only(tmp_path: Path, use_imod) -> None:
    use_imod(_fake(tmp_path), version="4.11.24")
    out = tmp_path / "out"
    result = align_imod(_stack(tmp_path / "ts.st"), ANGLES, out, PARAMS.model_copy(update={"reconstruct": False}))
    assert result.tomogram_path is None and not (out / "ts_imod.mrc").exists()
    assert sorted(p.name for p in out.iterdir()) == ["ts.tlt", "ts.xf", "ts_align.log"]


def test_version_read_from_the_installation(tmp_path: Path, use_imod) -> None:
    imod_dir = tmp_path / "IMOD"
    (imod_dir / "bin").mkdir(parents=True)
    (imod_dir / "VERSION").write_text(golden("imod/imod-4.11.24_VERSION.txt"))
    tool = _fake(imod_dir / "bin")
    use_imod(tool)
    assert imod_spec().version == "4.11.24"
    align_imod(_stack(tmp_path / "ts.st"), ANGLES, tmp_path / "out", PARAMS)
    assert len(calls(tool)) == 1  # no version query was needed


def test_a_failed_alignment_is_an_output_error_with_the_log(tmp_path: Path, use_imod) -> None:
    action = "print('ERROR: tiltalign - Too few fiducials'); (work / 'align.log').write_text('ABORT')"
    use_imod(_fake(tmp_path, action=action), version="4.11.24")
    with pytest.raises(ToolOutputError, match="ended without writing TS_01.xf, TS_01.tlt") as caught:
        align_imod(_stack(tmp_path / "ts.st"), ANGLES, tmp_path / "out", PARAMS, stem="TS_01")
    assert "Too few fiducials" in caught.value.stderr_tail
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_tomogram_is_an_output_error(tmp_path: Path, use_imod) -> None:
    xf = xf_text(xf_from_alignment(TRUE_AXIS, TRUE_SHIFTS))
    action = WRITE.format(xf=xf, log=golden(ALIGN_LOG)).replace('if flag("-EndingStep") == "14":', "if False:")
    use_imod(_fake(tmp_path, action=action), version="4.11.24")
    with pytest.raises(ToolOutputError, match="without writing the tomogram TS_01_rec.mrc"):
        align_imod(_stack(tmp_path / "ts.st"), ANGLES, tmp_path / "out", PARAMS, stem="TS_01")


def test_transforms_for_another_stack_are_an_output_error(tmp_path: Path, use_imod) -> None:
    xf = xf_text(xf_from_alignment(TRUE_AXIS, TRUE_SHIFTS[:5]))
    use_imod(_fake(tmp_path, action=WRITE.format(xf=xf, log=golden(ALIGN_LOG))), version="4.11.24")
    with pytest.raises(ToolOutputError, match="transforms TS_01.xf: 5 transforms for a stack of 9 views"):
        align_imod(_stack(tmp_path / "ts.st"), ANGLES, tmp_path / "out", PARAMS, stem="TS_01")


def test_a_crash_keeps_the_exit_code(tmp_path: Path, use_imod) -> None:
    use_imod(_fake(tmp_path, action="sys.stderr.write('IMOD_DIR is not set\\n'); sys.exit(1)"), version="4.11.24")
    with pytest.raises(ToolError, match="failed") as caught:
        align_imod(_stack(tmp_path / "ts.st"), ANGLES, tmp_path / "out", PARAMS)
    assert caught.value.exit_code == 1 and "IMOD_DIR" in caught.value.stderr_tail
