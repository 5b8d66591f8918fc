"""Gctf engine: exact argv, golden logs of 1.06 and 1.18, a stand-in run writing ctffind files."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pytest

from emlive.acquisition import Optics
from emlive.ctf import gctf
from emlive.ctf.gctf import GctfParams, build_command, parse_epa, parse_output, parse_version
from emlive.ctf.types import CtfParams
from emlive.tools import ToolSpec, ToolVersionError, Version

from ..tools.fakes import calls, fake_tool, golden


def test_argv_without_and_with_phase_shift():
    p = GctfParams(pixel_size_a=1.06, voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07)
    assert build_command(p, executable="Gctf", micrograph="a.mrc") == [
        "Gctf", "--apix", "1.06", "--kV", "300", "--Cs", "2.7", "--ac", "0.07", "--boxsize", "512",
        "--resL", "30", "--resH", "5", "--defL", "5000", "--defH", "50000", "--defS", "500", "--astm", "1000",
        "--bfac", "150", "--do_EPA", "1", "--logsuffix", "_gctf.log", "--gid", "0", "a.mrc",
    ]
    with_phase = build_command(p.model_copy(update={"fit_phase_shift": True}), executable="Gctf", micrograph="a.mrc")
    assert with_phase[-9:] == [
        "--phase_shift_L", "0", "--phase_shift_H", "180", "--phase_shift_S", "10", "--phase_shift_T", "1", "a.mrc",
    ]


def test_golden_1_06_log():
    fit = parse_output(golden("gctf/gctf-1.06_gctf.log"), Version(1, 6, 0))
    assert (fit.defocus_u_a, fit.defocus_v_a, fit.azimuth_deg, fit.cross_correlation) == (16021.77, 14487.90, 34.65, 0.096617)
    assert (fit.resolution_limit_a, fit.bfactor_a2, fit.phase_shift_deg) == (4.021, 112.84, 0.0)


def test_golden_1_18_log_with_phase_shift_and_validation():
    fit = parse_output(golden("gctf/gctf-1.18_phase_gctf.log"), Version(1, 18, 0))
    assert (fit.defocus_u_a, fit.defocus_v_a, fit.azimuth_deg) == (6122.87, 5902.33, -52.11)
    assert (fit.phase_shift_deg, fit.cross_correlation, fit.resolution_limit_a) == (73.60, 0.201133, 3.804)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Segmentation fault\n", "no 'Final Values'"),
        ("   Defocus_U   Defocus_V   Angle   CCC\n  1 2 3  Final Values\n", "do not match its columns"),
        ("   Defocus_U   Defocus_V   Angle   CCC\n  1 2 3 0.1 Final Values\n", "no RES_LIMIT"),
    ],
)
def test_broken_logs_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_output(text, Version(1, 6, 0))


def test_versions():
    assert parse_version(golden("gctf/gctf-1.06_version.txt")) == Version(1, 6, 0)
    assert parse_version("Gctf v1.18_b2\n") == Version(1, 18, 0)
    with pytest.raises(ToolVersionError):
        parse_output(golden("gctf/gctf-1.06_gctf.log"), Version(0, 50, 0))


def test_epa_log_becomes_ctffind_avrot_rows():
    curves = parse_epa(golden("gctf/gctf-1.06_EPA.log"))
    assert curves.resolution_a[0] == 50.0 and curves.ccc[2] == 0.118944
    p = GctfParams(pixel_size_a=1.0, voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07)
    text = gctf.avrot_text(curves, micrograph="m.mrc", p=p, version=Version(1, 6, 0), run_at=_now())
    rows = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(rows) == 6
    assert [float(v) for v in rows[0].split()] == pytest.approx([0.02, 0.025, 1 / 30, 0.05, 0.1, 0.2], abs=1e-6)
    assert [float(v) for v in rows[3].split()] == pytest.approx(curves.ctf_sim, abs=1e-6)


def _now():
    from datetime import datetime

    return datetime(2026, 1, 1)


GCTF_BODY = """
name = args[-1]
stem = Path(name).stem
write_mrc(stem + ".ctf", shape=(256, 256))
Path(stem + "_gctf.log").write_text({log!r})
Path(stem + "_EPA.log").write_text({epa!r})
"""


def test_a_run_with_a_stand_in_gctf(tmp_path):
    tool = fake_tool(
        tmp_path / "Gctf",
        version=golden("gctf/gctf-1.06_version.txt"),
        body=GCTF_BODY.format(log=golden("gctf/gctf-1.18_phase_gctf.log"), epa=golden("gctf/gctf-1.06_EPA.log")),
    )
    micrograph = tmp_path / "mic.mrc"
    with mrcfile.new(micrograph) as mrc:
        mrc.set_data(np.zeros((64, 64), np.float32))
    result = gctf.estimate_ctf(micrograph, tmp_path / "out", Optics(pixel_size_a=1.0), CtfParams(fit_phase_shift=True),
                               stem="e1", spec=ToolSpec(executable=str(tool)))
    assert result.phase_shift_rad == pytest.approx(math.radians(73.60))
    assert result.fit_resolution_a == 3.804
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["e1.png", "e1.txt", "e1_avrot.txt"]
    values = [line for line in result.output_txt_path.read_text().splitlines() if not line.startswith("#")]
    assert [float(v) for v in values[0].split()] == pytest.approx(
        [1, 6122.87, 5902.33, -52.11, math.radians(73.6), 0.201133, 3.804], abs=1e-5
    )
    (call,) = calls(tool)
    assert call["argv"][-1] == "e1.mrc" and "--phase_shift_T" in call["argv"]
