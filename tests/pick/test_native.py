"""The native picking engine: MRC in; RELION coordinates and a picture out, atomically."""

from __future__ import annotations

import numpy as np
import pytest
import starfile
from PIL import Image

from emlive.acquisition import Optics
from emlive.io.errors import MovieFormatError
from emlive.io.mrc import write_mrc_atomic
from emlive.pick.native import ENGINE_VERSION, PickError, pick_particles
from emlive.pick.score import match_picks
from emlive.pick.types import PickParams
from .conftest import synthetic, truth_ctf

COLUMNS = ["rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber", "rlnAutopickFigureOfMerit", "rlnAnglePsi"]


@pytest.fixture(scope="module")
def normal(tmp_path_factory):
    return synthetic(tmp_path_factory.mktemp("mic"), seed=21, diameter_a=150.0)


def test_star_round_trip_puts_x_on_columns_and_y_on_rows(normal, tmp_path):
    m, path = normal
    result = pick_particles(
        path, tmp_path / "out", PickParams(diameter_a=150.0), pixel_size_a=2.0, optics=m.optics(), ctf=truth_ctf(m)
    )
    assert result.coordinates_path == tmp_path / "out" / f"{path.stem}_autopick.star"
    text = result.coordinates_path.read_text()
    assert text.count("data_") == 1 and "\ndata_\n" in text  # one block, as RELION's autopick writes
    table = starfile.read(result.coordinates_path)
    assert list(table.columns) == COLUMNS
    assert len(table) == result.n_particles
    assert (table.rlnClassNumber == 0).all() and (table.rlnAnglePsi == -999.0).all()
    assert (np.diff(table.rlnAutopickFigureOfMerit) <= 0).all()  # best first
    xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    good = match_picks(xy, m.positions_px, max_distance_px=0.3 * m.diameter_px)
    assert good.f1 >= 0.95
    # the transpose does not fit: x is the column and y the row of the stored array
    assert match_picks(xy[:, ::-1], m.positions_px, max_distance_px=0.3 * m.diameter_px).f1 < 0.3
    # positions are better than a working pixel (150 Å / 16 ≈ 4.7 px)
    matched = np.array([p for p in xy if np.min(np.hypot(*(m.positions_px - p).T)) < 0.3 * m.diameter_px])
    errors = [np.min(np.hypot(*(m.positions_px - p).T)) for p in matched]
    assert np.median(errors) < 4.0


def test_picture_is_written_first_and_fits_1024(normal, tmp_path):
    m, path = normal
    result = pick_particles(path, tmp_path, PickParams(diameter_a=150.0), pixel_size_a=2.0, stem="mic_0007")
    assert result.picks_png_path == tmp_path / "mic_0007_picks.png"
    assert result.coordinates_path == tmp_path / "mic_0007_autopick.star"
    assert result.picks_png_path.stat().st_mtime_ns <= result.coordinates_path.stat().st_mtime_ns
    with Image.open(result.picks_png_path) as picture:
        assert picture.mode == "RGB" and max(picture.size) <= 1024
        pixels = np.asarray(picture)
    # green circles drawn: pure-green pixels exist
    assert ((pixels[..., 1] > 200) & (pixels[..., 0] < 60) & (pixels[..., 2] < 110)).sum() > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mic_0007_autopick.star", "mic_0007_picks.png"]


def test_options_override_the_engine(normal, tmp_path):
    m, path = normal
    none = pick_particles(path, tmp_path, PickParams(diameter_a=150.0, threshold=1e6), pixel_size_a=2.0)
    assert none.n_particles == 0
    assert len(starfile.read(none.coordinates_path)) == 0
    sparse = pick_particles(path, tmp_path, PickParams(diameter_a=150.0, min_distance_a=600.0), pixel_size_a=2.0)
    xy = starfile.read(sparse.coordinates_path)[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    distances = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))[np.triu_indices(len(xy), 1)]
    assert distances.min() * 2.0 >= 600.0 - 8.0  # Å, within a working pixel of sub-pixel refinement
    assert 0 < sparse.n_particles < 0.6 * m.n_particles


def test_empty_ice_gives_no_picks_and_is_no_error(tmp_path):
    m, path = synthetic(tmp_path, seed=22, kind="empty")
    result = pick_particles(path, tmp_path, PickParams(diameter_a=150.0), pixel_size_a=2.0, ctf=truth_ctf(m))
    assert result.n_particles <= 1
    assert result.masked_fraction < 0.15  # the edges only


def test_diameter_is_required(normal, tmp_path):
    _, path = normal
    with pytest.raises(ValueError, match="set the particle diameter"):
        pick_particles(path, tmp_path, PickParams(), pixel_size_a=2.0)
    assert not list(tmp_path.iterdir())


def test_unreadable_micrograph_raises_the_io_error(tmp_path):
    path = tmp_path / "broken.mrc"
    path.write_bytes(b"not an MRC file" * 100)
    with pytest.raises(MovieFormatError, match="broken.mrc"):
        pick_particles(path, tmp_path / "out", PickParams(diameter_a=150.0), pixel_size_a=1.0)
    assert not (tmp_path / "out").exists()


def test_a_movie_is_not_a_micrograph(tmp_path):
    path = tmp_path / "movie.mrc"
    write_mrc_atomic(path, np.ones((3, 64, 64), np.float32), pixel_size_a=1.0)
    with pytest.raises(PickError, match="movie.mrc.*2D"):
        pick_particles(path, tmp_path, PickParams(diameter_a=50.0), pixel_size_a=1.0)


def test_all_carbon_micrograph_raises_pick_error_naming_it(tmp_path):
    m, path = synthetic(tmp_path, seed=23, kind="carbon", carbon_fraction=0.97)
    with pytest.raises(PickError, match=r"carbon_23\.mrc: .*carbon 9\d%.*too little ice") as err:
        pick_particles(path, tmp_path / "out", PickParams(diameter_a=150.0), pixel_size_a=2.0, ctf=truth_ctf(m))
    assert "skip this micrograph" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_engine_version_and_optics_without_ctf(normal, tmp_path):
    m, path = normal
    assert ENGINE_VERSION == "native-1"
    # optics alone (no CTF result): no phase flip, still finds the particles
    params = PickParams(diameter_a=150.0)
    result = pick_particles(path, tmp_path, params, pixel_size_a=2.0, optics=Optics(pixel_size_a=9.9))
    xy = starfile.read(result.coordinates_path)[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    assert match_picks(xy, m.positions_px, max_distance_px=0.3 * m.diameter_px).f1 >= 0.9
