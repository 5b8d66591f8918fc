"""A synthetic session on disk: readable movies in every format, and a truth that round-trips."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import scipy.fft
import tifffile

from emlive.acquisition import Acquisition
from emlive.io.movie import read_movie, read_movie_header
from emlive.synth.session import SessionTruth, gain_reference, load_truth, plan_session, write_session

SMALL = dict(
    n_movies=4,
    shape=(96, 128),
    n_frames=6,
    eer_fractions=5,
    eer_raw_frames_per_fraction=8,
    seed=3,
    pixel_size_a=1.2,
)


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("session")
    reported = []
    truth = write_session(root, gain=True, on_movie=lambda movie, path: reported.append((movie.name, path)), **SMALL)
    return root, truth, reported


def test_session_layout_and_truth_round_trip(session):
    root, truth, reported = session
    names = ["movie_0000.mrc", "movie_0001.tif", "movie_0002.eer", "movie_0003.mrc"]
    assert [m.name for m in truth.movies] == names
    assert [name for name, _ in reported] == names
    assert all(path == root / "raw" / name for name, path in reported)
    assert sorted(p.name for p in (root / "raw").iterdir()) == names  # no temporary files left
    assert (root / "gain.mrc").exists()
    loaded = load_truth(root / "truth.json")
    assert loaded == truth
    assert load_truth(root) == truth
    assert isinstance(loaded, SessionTruth)
    assert loaded.movie("movie_0002") == loaded.movies[2]
    with pytest.raises(KeyError):
        loaded.movie("nope")


def test_truth_values_are_sane(session):
    root, truth, _ = session
    acq = truth.acquisition(root)
    assert isinstance(acq, Acquisition)
    assert acq.pixel_size_a == 1.2
    assert acq.dose_per_frame_e_a2 == 1.0
    assert acq.eer_fractions == 5
    assert acq.gain_path == root / "gain.mrc"
    for movie in truth.movies:
        assert 8000 <= movie.defocus_v_a <= movie.defocus_u_a <= 25000
        assert 100 <= movie.defocus_u_a - movie.defocus_v_a <= 1000
        assert 0 <= movie.azimuth_deg < 180
        traj = movie.trajectory
        assert traj.shape == (movie.n_frames, 2)
        assert np.array_equal(traj[0], [0, 0])
        assert 4.0 <= movie.total_drift_px <= 16.0
    eer = truth.movies[2]
    assert (eer.format, eer.n_frames, eer.n_raw_frames) == ("eer", 5, 40)
    assert truth.movies[0].n_raw_frames is None


def test_movies_are_readable_with_mrcfile_and_tifffile(session):
    root, truth, _ = session
    with mrcfile.open(root / "raw" / "movie_0000.mrc", permissive=False) as mrc:
        assert mrc.data.shape == (6, 96, 128)
        assert mrc.data.dtype == np.int8
        assert float(mrc.voxel_size.x) == pytest.approx(1.2)
    with tifffile.TiffFile(root / "raw" / "movie_0001.tif") as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.LZW
        data = tif.asarray()
        assert data.shape == (6, 96, 128)
        assert data.dtype == np.uint8
    with tifffile.TiffFile(root / "raw" / "movie_0002.eer") as tif:
        assert tif.is_eer
        assert len(tif.pages) == 40
        assert tif.eer_metadata["numberOfFrames"] == 40


@pytest.mark.parametrize("index", range(4))
def test_movies_read_by_emlive_io_restore_the_dose_with_the_gain(session, index):
    root, truth, _ = session
    movie = truth.movies[index]
    path = root / "raw" / movie.name
    header = read_movie_header(path, eer_fractions=truth.eer_fractions)
    assert header.n_frames == movie.n_frames
    assert header.shape == truth.shape
    frames = read_movie(path, gain=root / truth.gain_file, eer_fractions=truth.eer_fractions)
    dose_e_per_px = truth.dose_per_frame_e_a2 * truth.pixel_size_a**2
    # counts are Poisson(dose * image / gain): the gain-corrected mean is the dose
    assert frames.mean() == pytest.approx(dose_e_per_px, rel=0.02)


def test_gain_reference_file_holds_the_known_gain(session):
    root, truth, _ = session
    gain = gain_reference(truth.seed, truth.shape)
    assert gain.mean() == pytest.approx(1.0, abs=0.02)
    assert 0.04 < gain.std() < 0.15
    with mrcfile.open(root / truth.gain_file, permissive=False) as mrc:
        assert np.array_equal(mrc.data, gain)


def _displacement(frame: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(x, y) by which ``frame``'s content is displaced relative to ``reference`` (phase correlation)."""
    cross = scipy.fft.fft2(frame - frame.mean()) * np.conj(scipy.fft.fft2(reference - reference.mean()))
    cc = np.real(scipy.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-9)))
    ny, nx = cc.shape
    py, px = np.unravel_index(np.argmax(cc), cc.shape)
    out = []
    for axis, (peak, size) in enumerate([(px, nx), (py, ny)]):
        before = cc[py, (px - 1) % nx] if axis == 0 else cc[(py - 1) % ny, px]
        after = cc[py, (px + 1) % nx] if axis == 0 else cc[(py + 1) % ny, px]
        offset = 0.5 * (before - after) / (before - 2 * cc[py, px] + after)
        out.append((peak + offset + size / 2) % size - size / 2)
    return np.array(out)


@pytest.mark.parametrize("fmt", ["mrc", "tiff", "eer"])
def test_movie_content_moves_along_the_true_trajectory(tmp_path, fmt):
    truth = write_session(
        tmp_path,
        n_movies=1,
        formats=(fmt,),
        shape=(256, 256),
        n_frames=5,
        eer_fractions=5,
        eer_raw_frames_per_fraction=40,
        dose_per_frame_e_a2=8.0,
        drift_range_px=(6.0, 10.0),
        seed=1,
    )
    movie = truth.movies[0]
    frames = read_movie(tmp_path / "raw" / movie.name, eer_fractions=5)
    measured = np.array([_displacement(frame, frames[0]) for frame in frames])
    np.testing.assert_allclose(measured, movie.trajectory, atol=0.35)


def test_plan_is_reproducible_per_movie_and_validated():
    a = plan_session(n_movies=3, seed=5)
    b = plan_session(n_movies=6, seed=5)
    assert a.movies == b.movies[:3]
    assert plan_session(n_movies=3, seed=6).movies != a.movies
    assert [m.format for m in b.movies] == ["mrc", "tiff", "eer"] * 2
    with pytest.raises(ValueError, match="formats"):
        plan_session(formats=("png",))


def test_same_seed_writes_identical_movies(tmp_path):
    kwargs = dict(n_movies=2, shape=(64, 64), n_frames=3, formats=("mrc", "eer"), eer_fractions=3, seed=4)
    write_session(tmp_path / "a", workers=1, **kwargs)
    write_session(tmp_path / "b", workers=2, **kwargs)
    for name in ("movie_0000.mrc", "movie_0001.eer"):
        assert (tmp_path / "a" / "raw" / name).read_bytes() == (tmp_path / "b" / "raw" / name).read_bytes()
