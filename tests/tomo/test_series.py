"""The tilt-series group step on a worker (emlive.tomo.series): from the tilts' aligned sums to
the IMOD files, the tomogram and the pictures, on a synthetic series with known shifts and two
dark tilts; checkpointed on its members' inputs."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from emlive.io.mrc import write_mrc_atomic
from emlive.synth.tomo_session import movie_counts, plan_collection
from emlive.tomo.imod import alignment_from_xf, parse_tlt, parse_xf
from emlive.tomo.series import SeriesParams, SeriesSpec, SeriesTilt, completed_series, run_series

PARAMS = SeriesParams(thickness_a=320.0)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[SeriesSpec, object]:
    """21 tilts (−60…60° in 6° steps, dose-symmetric) of 512² px at 2.5 Å, summed movie frames
    as the aligned sums; tilts 3 and 16 (angle order) dark."""
    out = tmp_path_factory.mktemp("series")
    plan = plan_collection(1, tilt_angles_deg=np.arange(-60.0, 61.0, 6.0), dark=(3, 16))
    pre = {tilt: step * plan.dose_per_tilt_e_a2 for step, tilt in enumerate(plan.acquisition)}
    tilts = []
    for i, name in enumerate(plan.movie_names):
        micrograph = out / "motion" / f"{Path(name).stem}.mrc"
        micrograph.parent.mkdir(exist_ok=True)
        write_mrc_atomic(micrograph, movie_counts(plan, i, workers=1).sum(axis=0).astype(np.float32),
                         pixel_size_a=plan.pixel_size_a)
        tilts.append(SeriesTilt(z_value=int(plan.order[i]), movie_name=name,
                                tilt_angle_deg=float(plan.tilt_angles_deg[i]), pre_exposure_e_a2=pre[i],
                                micrograph_path=micrograph, total_drift_a=8.0, ctf_fit_ok=True))
    spec = SeriesSpec(name="TS_01", out_dir=out / "tomo" / "TS_01", tilts=tuple(tilts), tilt_axis_deg=85.0,
                      voltage_kv=300.0)
    return spec, plan


def test_the_series_is_aligned_and_reconstructed_with_dark_tilts_left_out(series):
    spec, plan = series
    result = run_series(spec, PARAMS)
    dark_z = {int(plan.order[i]) for i in plan.truth.dark}
    assert set(result.exclusions) == dark_z
    assert all(reason.startswith("dark: mean") for reason in result.exclusions.values())
    assert len(result.used_z_values) == 19 and result.pixel_size_a == pytest.approx(10.0)
    # shifts at the stack's pixel size against the truth (the phantom's projections' shifts)
    by_z = {int(plan.order[i]): i for i in range(len(plan.order))}
    found = np.array([result.shifts_px[z] for z in result.used_z_values])
    truth = np.asarray(plan.truth.shifts_px)[[by_z[z] for z in result.used_z_values]]
    # up to what an alignment cannot know: where the specimen's centre lies (a constant shift,
    # and a height z that moves each view by z sin θ across the tilt axis)
    sin = np.sin(np.deg2rad([a for z in result.used_z_values for a in [plan.tilt_angles_deg[by_z[z]]]]))
    design = np.column_stack([np.ones_like(sin), sin])
    error = found - truth
    error -= design @ np.linalg.lstsq(design, error, rcond=None)[0]
    assert np.sqrt((error**2).sum(axis=1).mean()) < 1.0
    assert result.alignment_method in ("beads", "patches")  # (this small series has too few beads: patches)
    assert abs(result.tilt_axis_deg - 85.0) < 3.0, (result.alignment_method, result.tilt_axis_deg)
    # IMOD files: the stack by tilt angle, its angles, transforms that give back the alignment
    angles = parse_tlt(result.rawtlt_path.read_text())
    assert np.all(np.diff(angles) > 0) and len(angles) == 19
    axis, shifts = alignment_from_xf(parse_xf(result.xf_path.read_text()))
    assert np.allclose(axis, result.tilt_axis_deg, atol=1e-4) and np.allclose(shifts, found, atol=2e-3)
    with mrcfile.open(result.stack_path) as st, mrcfile.open(result.tomogram_path) as rec:
        assert st.data.shape == (19, 128, 128) and float(st.voxel_size.x) == pytest.approx(10.0)
        assert rec.data.shape == result.tomogram_shape_zyx == (32, 128, 128)
        assert float(rec.voxel_size.x) == pytest.approx(10.0) and np.isfinite(rec.data).all() and rec.data.std() > 0
    for png in (result.central_slice_png_path, result.montage_png_path):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.micrograph_size_xy == (512, 512) and result.micrograph_pixel_size_a == pytest.approx(2.5)


def test_a_done_series_is_not_recomputed_and_a_changed_one_is(series, tmp_path):
    spec, _ = series
    first = run_series(spec, PARAMS)
    stamp = first.tomogram_path.stat().st_mtime_ns
    assert completed_series(spec, PARAMS) == first
    assert run_series(spec, PARAMS) == first and first.tomogram_path.stat().st_mtime_ns == stamp
    assert completed_series(spec, PARAMS.model_copy(update={"thickness_a": 400.0})) is None
    fewer = spec.model_copy(update={"tilts": spec.tilts[:-1], "out_dir": tmp_path / "TS_01"})
    assert completed_series(fewer, PARAMS) is None
    failed = spec.tilts[0].model_copy(update={"micrograph_path": None, "reason": "its movie failed: truncated"})
    grown = spec.model_copy(update={"tilts": (failed, *spec.tilts[1:]), "out_dir": tmp_path / "TS_01b"})
    result = run_series(grown, PARAMS)
    assert result.exclusions[failed.z_value] == "its movie failed: truncated"
    assert failed.z_value not in result.used_z_values
    os.utime(spec.tilts[1].micrograph_path)  # an aligned sum rewritten: its inputs changed
    assert completed_series(spec, PARAMS) is None


def test_too_few_usable_tilts_is_a_clear_error(series, tmp_path):
    spec, _ = series
    broken = tuple(t.model_copy(update={"micrograph_path": None, "reason": "its movie never came"})
                   for t in spec.tilts[2:])
    few = spec.model_copy(update={"tilts": (*spec.tilts[:2], *broken), "out_dir": tmp_path / "few"})
    with pytest.raises(ValueError, match=r"tilt series TS_01: only 2 of 21 tilts can be used .*at least 3"):
        run_series(few, PARAMS)


IMOD_FAKE = """
stem = flag("-RootName")
work = Path(flag("-CurrentLocation"))
with mrcfile.open(work / f"{{stem}}.st") as st:
    assert st.data.shape == (19, 128, 128), st.data.shape  # the views kept, binned to 10 Å
angles = [float(a) for a in (work / f"{{stem}}.rawtlt").read_text().split()]
assert angles == sorted(angles) and len(angles) == 19
(work / f"{{stem}}.xf").write_text({xf!r})
(work / f"{{stem}}.tlt").write_text("".join(f"{{a:7.2f}}\\n" for a in angles))
(work / "align.log").write_text({log!r})
"""


def test_imod_aligns_when_chosen_and_the_tomogram_follows_its_alignment(series, tmp_path):
    """engine = "imod": batchruntomo (a stand-in that writes IMOD's files for a known
    alignment) aligns the dose-weighted binned stack; emlive reconstructs with that alignment."""
    from emlive.tomo.imod import xf_from_alignment, xf_text
    from emlive.tools import ToolSpec, ToolsSettings, configure_tools
    from tests.tools.fakes import calls, fake_tool, golden

    spec, _ = series
    shifts = np.random.default_rng(5).normal(0.0, 3.0, (19, 2))
    body = IMOD_FAKE.format(xf=xf_text(xf_from_alignment(84.6, shifts)), log=golden("imod/tiltalign-4.11_align.log"))
    tool = fake_tool(tmp_path / "batchruntomo", version="", body=body)
    configure_tools(ToolsSettings(imod=ToolSpec(executable=str(tool), version="4.11.24")))
    try:
        result = run_series(spec.model_copy(update={"out_dir": tmp_path / "TS_01"}),
                            PARAMS.model_copy(update={"engine": "imod"}))
    finally:
        configure_tools(ToolsSettings())
    assert len(calls(tool)) == 1 and result.engine == "imod"
    assert result.tilt_axis_deg == pytest.approx(84.6, abs=1e-4) and result.residual_px == pytest.approx(0.54)  # the log's 0.54 nm at 10 Å/px
    assert np.allclose([result.shifts_px[z] for z in result.used_z_values], shifts, atol=2e-3)
    axis, written = alignment_from_xf(parse_xf(result.xf_path.read_text()))
    assert np.allclose(axis, 84.6, atol=1e-4) and np.allclose(written, shifts, atol=2e-3)
    assert (tmp_path / "TS_01" / "imod" / "TS_01.xf").is_file() and not list((tmp_path / "TS_01" / "imod").glob("*.st"))
    assert result.tomogram_path.is_file()


def test_a_tomogram_reconstructed_in_slabs_is_the_same_volume():
    """Slabs along the tilt axis (what the workers share once the last tilt is in) make the
    volume the whole stack makes, row for row."""
    from emlive.tomo.reconstruct import back_project
    from emlive.tomo.series import reconstruct, slab_bounds

    rng = np.random.default_rng(3)
    stack = rng.normal(size=(7, 60, 48)).astype(np.float32)
    angles = np.linspace(-45.0, 45.0, 7)
    shifts = rng.normal(0.0, 2.0, (7, 2))
    whole = back_project(stack, angles, tilt_axis_deg=84.0, shifts_px=shifts, thickness_px=12)
    assert slab_bounds(60, 3) == [(0, 20), (20, 40), (40, 60)]
    for slabs in (2, 3):
        pieces = reconstruct(stack, angles, tilt_axis_deg=84.0, shifts_px=shifts, thickness_px=12, slabs=slabs)
        assert pieces.shape == whole.shape
        np.testing.assert_allclose(pieces, whole, rtol=1e-4, atol=1e-4 * float(np.abs(whole).max()))
