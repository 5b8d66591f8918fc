"""topaz engine: exact argv, topaz 0.3.20's real tables, stand-in runs that write, crash or print
garbage, and one real run that must find known particles where they are (x = column, y = row)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import scipy.ndimage
import starfile
from PIL import Image
from scipy.spatial import cKDTree

from emlive.pick import topaz
from emlive.pick.topaz import TopazParams, build_command, parse_output, parse_version, pick_particles_topaz, topaz_params
from emlive.pick.types import PickParams
from emlive.tools import ToolError, ToolOutputError, ToolSpec, ToolsSettings, ToolVersionError, Version, configure_tools

from ..tools.fakes import calls, fake_tool, golden

V = Version(0, 3, 20)
TOPAZ_VENV = Path("/opt/topaz-venv/bin/topaz")


def test_a_150_A_particle_at_2_A_per_px_is_picked_16_px_wide_and_three_quarters_of_it_apart():
    p = topaz_params(PickParams(diameter_a=150.0), pixel_size_a=2.0, threads=2)
    assert (p.scale, p.radius_px, p.threshold, p.threads) == (5, 11, topaz.DEFAULT_THRESHOLD, 2)  # 75 px / 5; 0.75 × 15
    preprocess, extract = build_command(p, executable="topaz", micrograph="e1.mrc", preprocessed_dir="pre", output="e1_topaz.txt")
    assert preprocess == ["topaz", "preprocess", "-s", "5", "-d", "-1", "-j", "2", "-o", "pre", "e1.mrc"]
    assert extract == [
        "topaz", "extract", "-m", "resnet16", "-r", "11", "-t", "-1", "-x", "5", "-d", "-1", "-j", "2",
        "-o", "e1_topaz.txt", "pre/e1.mrc",
    ]


def test_min_distance_and_threshold_reach_topaz():
    p = topaz_params(PickParams(diameter_a=250.0, min_distance_a=180.0, threshold=0.5), pixel_size_a=1.0)
    assert (p.scale, p.radius_px, p.threshold) == (16, 11, 0.5)  # 250 Å / 16 px; 180 Å / (16 Å/px)
    _, extract = build_command(p, executable="topaz", micrograph="a.mrc", preprocessed_dir="pre", output="o.txt")
    assert extract[extract.index("-r") + 1] == "11" and extract[extract.index("-t") + 1] == "0.5"
    assert topaz_params(PickParams(diameter_a=8.0), pixel_size_a=1.0).scale == 1  # never upsampled


def test_picking_needs_a_diameter_and_an_mrc_name():
    with pytest.raises(ValueError, match="needs the particle diameter"):
        topaz_params(PickParams(), pixel_size_a=1.0)
    with pytest.raises(ValueError, match=r"\.mrc suffix"):
        build_command(TopazParams(scale=2, radius_px=5), executable="topaz", micrograph="a.tif", preprocessed_dir="p", output="o")


def test_real_table_of_topaz_0_3_20():
    picks = parse_output(golden("topaz/topaz-0.3.20_extract.txt"), V)
    assert picks.image_name == "small" and len(picks.scores) == 36
    assert picks.coordinates_px[0] == (555.0, 380.0) and picks.scores[0] == pytest.approx(3.4219443798065186)
    assert picks.scores == sorted(picks.scores, reverse=True)
    assert min(picks.scores) > -6  # extract -t -6 keeps only scores above it
    empty = parse_output(golden("topaz/topaz-0.3.20_extract_empty.txt"), V)
    assert (empty.image_name, empty.coordinates_px, empty.scores) == (None, [], [])


def test_version_banner_of_topaz_0_3_20():
    assert parse_version(golden("topaz/topaz-0.3.20_version.txt")) == V
    assert parse_version("usage: topaz [-h]\n") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a topaz extract table"),
        ("x_coord\ty_coord\tscore\n1\t2\t3\n", "not a topaz extract table"),
        ("image_name\tx_coord\ty_coord\tscore\nm\t1\t2\n", "line 2 .* 3 fields"),
        ("image_name\tx_coord\ty_coord\tscore\nm\t1\tnan\t0.5\n", "not finite"),
        ("image_name\tx_coord\ty_coord\tscore\nm\t1\ttwo\t0.5\n", "not a number"),
        ("image_name\tx_coord\ty_coord\tscore\na\t1\t2\t0.5\nb\t3\t4\t0.1\n", "picks of 2 micrographs"),
    ],
)
def test_tables_that_are_not_topaz_extract_output_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_output(text, V)


def test_releases_other_than_0_3_are_refused():
    with pytest.raises(ToolVersionError, match="topaz 0.2.5 is not supported"):
        parse_output(golden("topaz/topaz-0.3.20_extract.txt"), Version(0, 2, 5))


# --- stand-in runs ---------------------------------------------------------------------------

FAKE_TOPAZ = """
if args[0] == "preprocess":
    {preprocess}
elif args[0] == "extract":
    {extract}
"""
PREPROCESS_OK = "Path(flag('-o')).mkdir(exist_ok=True); write_mrc(Path(flag('-o')) / Path(args[-1]).name)"
EXTRACT_GOLDEN = "Path(flag('-o')).write_text({table!r}.replace('small', Path(args[-1]).stem))"


def _fake(tmp_path: Path, *, preprocess: str = PREPROCESS_OK, extract: str | None = None) -> Path:
    extract = extract or EXTRACT_GOLDEN.format(table=golden("topaz/topaz-0.3.20_extract.txt"))
    return fake_tool(
        tmp_path / "topaz",
        version=golden("topaz/topaz-0.3.20_version.txt"),
        body=FAKE_TOPAZ.format(preprocess=preprocess, extract=extract),
    )


@pytest.fixture
def use_topaz():
    """Configure [tools.topaz] to run the given executable, for the test's duration."""

    def use(executable: Path) -> None:
        configure_tools(ToolsSettings(topaz=ToolSpec(executable=str(executable))))

    yield use
    configure_tools(ToolsSettings())


def _micrograph(path: Path, shape=(768, 1024)) -> Path:
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=shape).astype(np.float32))
        mrc.voxel_size = 2.0
    return path


def test_a_run_with_a_stand_in_topaz_writes_the_autopick_star_and_the_picture(tmp_path, use_topaz):
    tool = _fake(tmp_path)
    use_topaz(tool)
    micrograph = _micrograph(tmp_path / "mic_DW.mrc")
    out = tmp_path / "out"
    result = pick_particles_topaz(micrograph, out, PickParams(diameter_a=150.0), pixel_size_a=2.0, stem="exp1")
    assert sorted(p.name for p in out.iterdir()) == ["exp1_autopick.star", "exp1_picks.png"]
    assert (result.coordinates_path, result.picks_png_path) == (out / "exp1_autopick.star", out / "exp1_picks.png")
    assert result.n_particles == 36
    star = starfile.read(result.coordinates_path, always_dict=True)
    assert list(star) == [""]  # one data block, data_, as RELION writes coordinate files
    table = star[""]
    assert list(table.columns) == [
        "rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber", "rlnAutopickFigureOfMerit", "rlnAnglePsi",
    ]
    expected = parse_output(golden("topaz/topaz-0.3.20_extract.txt"), V)
    assert table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy().tolist() == [list(xy) for xy in expected.coordinates_px]
    assert table["rlnAutopickFigureOfMerit"].to_numpy() == pytest.approx(expected.scores, abs=1e-6)
    assert set(table["rlnClassNumber"]) == {0} and set(table["rlnAnglePsi"]) == {-999.0}
    with Image.open(result.picks_png_path) as png:
        assert png.mode == "RGB" and png.size == (1024, 768)
    preprocess, extract = calls(tool)
    assert preprocess["argv"][1:] == ["preprocess", "-s", "5", "-d", "-1", "-j", "1", "-o", "pre", "exp1.mrc"]
    assert extract["argv"][-3:] == ["-o", "exp1_topaz.txt", "pre/exp1.mrc"]
    assert Path(preprocess["cwd"]).parent == out.resolve() and preprocess["cwd"] == extract["cwd"]


def test_topaz_that_writes_no_table_is_an_output_error_with_its_stderr(tmp_path, use_topaz):
    use_topaz(_fake(tmp_path, extract="print('CUDA error: no kernel image', file=sys.stderr)"))
    micrograph = _micrograph(tmp_path / "m.mrc")
    with pytest.raises(ToolOutputError, match="m.mrc: topaz ended without writing m_topaz.txt") as caught:
        pick_particles_topaz(micrograph, tmp_path / "out", PickParams(diameter_a=150.0), pixel_size_a=2.0)
    assert "CUDA error" in caught.value.stderr_tail
    assert list((tmp_path / "out").iterdir()) == [], "nothing half-written is left behind"


def test_topaz_writing_garbage_is_an_output_error(tmp_path, use_topaz):
    use_topaz(_fake(tmp_path, extract="Path(flag('-o')).write_text('<html>quota exceeded</html>\\n')"))
    with pytest.raises(ToolOutputError, match="cannot read topaz's picks m_topaz.txt: not a topaz extract table"):
        pick_particles_topaz(_micrograph(tmp_path / "m.mrc"), tmp_path / "out", PickParams(diameter_a=150.0), pixel_size_a=2.0)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_topaz_crash_keeps_its_exit_code_and_traceback(tmp_path, use_topaz):
    crash = f"sys.stderr.write({golden('topaz/topaz-0.3.20_preprocess_missing_stderr.txt')!r}); sys.exit(1)"
    tool = _fake(tmp_path, preprocess=crash)
    use_topaz(tool)
    with pytest.raises(ToolError, match="topaz failed") as caught:
        pick_particles_topaz(_micrograph(tmp_path / "m.mrc"), tmp_path / "out", PickParams(diameter_a=150.0), pixel_size_a=2.0)
    assert caught.value.exit_code == 1 and "FileNotFoundError" in caught.value.stderr_tail
    assert len(calls(tool)) == 1, "extract does not run after a failed preprocess"


def test_an_unsupported_topaz_is_refused_before_it_runs(tmp_path, use_topaz):
    tool = fake_tool(tmp_path / "topaz", version="0.2.5\n", body="sys.exit(3)\n")
    use_topaz(tool)
    with pytest.raises(ToolVersionError, match="topaz 0.2.5 is not supported"):
        pick_particles_topaz(_micrograph(tmp_path / "m.mrc"), tmp_path / "out", PickParams(diameter_a=150.0), pixel_size_a=2.0)
    assert calls(tool) == [] and not (tmp_path / "out").exists()


# --- the real topaz --------------------------------------------------------------------------


def _particle_micrograph(path: Path, *, seed: int, pixel_size_a: float, diameter_a: float, n: int) -> np.ndarray:
    """A 768 × 1024 micrograph of ``n`` particles (clusters of Gaussian lumps, dark with a faint
    bright halo as at low resolution in underfocus) at 40 e/Å², Poisson noise; their (x, y) px."""
    rng = np.random.default_rng(seed)
    shape = (768, 1024)
    radius_px = diameter_a / 2 / pixel_size_a
    positions: list[tuple[float, float]] = []
    while len(positions) < n:
        x, y = rng.uniform(1.2 * radius_px, shape[1] - 1.2 * radius_px), rng.uniform(1.2 * radius_px, shape[0] - 1.2 * radius_px)
        if all(np.hypot(x - a, y - b) > 2.3 * radius_px for a, b in positions):
            positions.append((x, y))
    density = np.zeros(shape, np.float32)
    for x, y in positions:
        for _ in range(6):
            angle, r = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.55 * radius_px)
            density[round(y + r * np.sin(angle)), round(x + r * np.cos(angle))] += 1.0
    density = scipy.ndimage.gaussian_filter(density, 0.25 * radius_px)
    density /= density.max()
    contrast = -density + 0.5 * scipy.ndimage.gaussian_filter(density, 0.6 * radius_px)
    counts = rng.poisson((1.0 + 0.3 * contrast) * 40.0 * pixel_size_a**2).astype(np.float32)
    with mrcfile.new(path) as mrc:
        mrc.set_data(counts)  # row 0 first: y is the row
        mrc.voxel_size = pixel_size_a
    return np.asarray(positions)


def _real_topaz() -> Path:
    executable = os.environ.get("EMLIVE_TOPAZ") or str(TOPAZ_VENV)
    found = shutil.which(executable)
    if found is None:
        pytest.skip(
            f"topaz is not installed at {executable} (python3 -m venv /opt/topaz-venv && "
            "/opt/topaz-venv/bin/pip install topaz-em, or set EMLIVE_TOPAZ to its executable)"
        )
    return Path(found)


@pytest.mark.slow
def test_real_topaz_finds_the_particles_where_they_are(tmp_path, use_topaz):
    use_topaz(_real_topaz())
    diameter_a, pixel_size_a = 150.0, 2.0
    truth = _particle_micrograph(tmp_path / "mic.mrc", seed=11, pixel_size_a=pixel_size_a, diameter_a=diameter_a, n=14)
    result = pick_particles_topaz(tmp_path / "mic.mrc", tmp_path / "out", PickParams(diameter_a=diameter_a), pixel_size_a=pixel_size_a)
    table = starfile.read(result.coordinates_path, always_dict=True)[""]
    picks = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float).reshape(-1, 2)
    diameter_px = diameter_a / pixel_size_a
    distance, nearest = cKDTree(truth).query(picks)
    matched = distance < 0.2 * diameter_px  # topaz's coordinates are whole pixels of a 5× smaller image
    assert len(set(nearest[matched])) == len(truth), "every particle is found"
    assert matched.sum() >= 0.9 * len(picks), "few picks in empty ice"
    assert result.n_particles == len(picks)
    assert (table["rlnAutopickFigureOfMerit"] > topaz.DEFAULT_THRESHOLD).all()
    # x is the column and y the row: transposed or upside-down picks would miss the particles
    for moved in (picks[:, ::-1], np.column_stack([picks[:, 0], 767 - picks[:, 1]])):
        assert (cKDTree(truth).query(moved)[0] < 0.2 * diameter_px).sum() < len(truth) / 2
