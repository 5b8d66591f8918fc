"""The native engine end to end: movie file in, RELION-style outputs out (in tmp_path)."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import starfile

from emlive import synth
from emlive.acquisition import Acquisition
from emlive.io.mrc import write_mrc_atomic
from emlive.motion.native import ENGINE_VERSION, motion_correct
from emlive.motion.types import MotionParams


def rmsd_px(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((np.asarray(a) - np.asarray(b)) ** 2, axis=1))))


@pytest.fixture(scope="module")
def movie_file(tmp_path_factory, movie_1k):
    path = tmp_path_factory.mktemp("raw") / "grid1_0001.mrc"
    write_mrc_atomic(path, movie_1k.frames.astype(np.uint16), pixel_size_a=movie_1k.pixel_size_a)
    return path


def _acquisition(movie, **extra) -> Acquisition:
    return Acquisition(
        pixel_size_a=movie.pixel_size_a,
        dose_per_frame_e_a2=movie.dose_e_a2_per_frame,
        voltage_kv=300.0,
        **extra,
    )


def test_engine_writes_relion_outputs_and_recovers_the_drift(tmp_path, movie_file, movie_1k):
    acq = _acquisition(movie_1k, pre_exposure_e_a2=0.5)
    result = motion_correct(movie_file, tmp_path / "out", acq, MotionParams())

    assert ENGINE_VERSION.startswith("native-")
    assert result.n_frames == 24
    assert result.micrograph_path == tmp_path / "out" / "grid1_0001.mrc"
    assert result.dose_weighted_path == tmp_path / "out" / "grid1_0001_DW.mrc"
    assert result.star_path == tmp_path / "out" / "grid1_0001.star"
    shifts = np.array(result.shifts_px)
    assert rmsd_px(-shifts, movie_1k.truth_px) < 0.3

    for path in (result.micrograph_path, result.dose_weighted_path):
        with mrcfile.open(path) as mrc:
            assert mrc.data.dtype == np.float32 and mrc.data.shape == (1024, 1024)
            assert float(mrc.voxel_size.x) == pytest.approx(movie_1k.pixel_size_a)
            # a sum of 24 frames of ~0.8 counts per pixel
            expected_mean = movie_1k.frames.sum(axis=0).mean()
            assert float(mrc.data.mean()) == pytest.approx(expected_mean, rel=1e-4)
    assert result.pixel_size_a == pytest.approx(movie_1k.pixel_size_a)

    star = starfile.read(result.star_path, always_dict=True)
    general = star["general"]
    assert general["rlnImageSizeX"] == 1024 and general["rlnImageSizeY"] == 1024
    assert general["rlnImageSizeZ"] == 24
    assert general["rlnMicrographMovieName"] == str(movie_file)
    assert general["rlnMicrographBinning"] == pytest.approx(1.0)
    assert general["rlnMicrographOriginalPixelSize"] == pytest.approx(movie_1k.pixel_size_a)
    assert general["rlnMicrographDoseRate"] == pytest.approx(movie_1k.dose_e_a2_per_frame)
    assert general["rlnMicrographPreExposure"] == pytest.approx(0.5)
    assert general["rlnVoltage"] == pytest.approx(300.0)
    assert general["rlnMicrographStartFrame"] == 1
    assert general["rlnMotionModelVersion"] == 1  # 5x5 patches by default: RELION's polynomial model
    table = star["global_shift"]
    columns = ["rlnMicrographFrameNumber", "rlnMicrographShiftX", "rlnMicrographShiftY"]
    assert list(table.columns) == columns
    assert table["rlnMicrographFrameNumber"].tolist() == list(range(1, 25))
    np.testing.assert_allclose(table[columns[1:]], shifts, atol=1e-5)

    # drift statistics of the recovered path, split at 4 e/Å² including the pre-exposure
    steps_a = np.hypot(*np.diff(shifts, axis=0).T) * movie_1k.pixel_size_a
    assert result.total_drift_a == pytest.approx(steps_a.sum())
    n_early = 3  # steps into frames 2, 3, 4 (1-based), which end at 0.5 + 0.8 f <= 4 e/Å²
    assert result.early_drift_a == pytest.approx(steps_a[:n_early].sum())
    assert result.late_drift_a == pytest.approx(steps_a[n_early:].sum())
    true_path_a = np.hypot(*np.diff(movie_1k.truth_px, axis=0).T).sum() * movie_1k.pixel_size_a
    assert result.total_drift_a == pytest.approx(true_path_a, rel=0.1)


def test_engine_bins_by_fourier_cropping(tmp_path, movie_file, movie_1k):
    acq = _acquisition(movie_1k)
    result = motion_correct(
        movie_file, tmp_path, acq, MotionParams(bin_factor=2.0), stem="binned", workers=1
    )
    assert result.micrograph_path.name == "binned.mrc"
    assert result.pixel_size_a == pytest.approx(2 * movie_1k.pixel_size_a)
    with mrcfile.open(result.dose_weighted_path) as mrc:
        assert mrc.data.shape == (512, 512)
        assert float(mrc.voxel_size.x) == pytest.approx(2 * movie_1k.pixel_size_a)
    star = starfile.read(result.star_path, always_dict=True)
    assert star["general"]["rlnMicrographBinning"] == pytest.approx(2.0)
    assert star["general"]["rlnImageSizeX"] == 1024  # the movie's size, not the micrograph's
    # shifts stay in unbinned movie pixels
    assert rmsd_px(-np.array(result.shifts_px), movie_1k.truth_px) < 0.3


def test_engine_rejects_a_single_frame_movie(tmp_path):
    path = tmp_path / "single.mrc"
    write_mrc_atomic(path, np.ones((1, 64, 64), dtype=np.float32), pixel_size_a=1.0)
    acq = Acquisition(pixel_size_a=1.0, dose_per_frame_e_a2=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        motion_correct(path, tmp_path / "out", acq, MotionParams())
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("session")
    truth = synth.write_session(
        root,
        n_movies=3,
        shape=(512, 512),
        n_frames=16,
        formats=("mrc", "tiff", "eer"),
        eer_fractions=16,
        eer_raw_frames_per_fraction=10,
        gain=True,
        seed=3,
    )
    return root, truth


@pytest.mark.parametrize("index", [0, 1, 2], ids=["mrc", "tiff", "eer"])
def test_engine_corrects_every_movie_format_with_a_gain_reference(tmp_path, session, index):
    root, truth = session
    movie = truth.movies[index]
    acq = Acquisition(
        pixel_size_a=truth.pixel_size_a,
        dose_per_frame_e_a2=truth.dose_per_frame_e_a2,
        voltage_kv=truth.voltage_kv,
        gain_path=root / truth.gain_file,
        eer_fractions=truth.eer_fractions,
    )
    result = motion_correct(root / "raw" / movie.name, tmp_path, acq, MotionParams(bfactor_px2=50.0))
    assert result.n_frames == 16
    assert rmsd_px(-np.array(result.shifts_px), np.array(movie.trajectory_px)) < 0.2
    general = starfile.read(result.star_path, always_dict=True)["general"]
    assert general["rlnMicrographGainName"] == str(root / truth.gain_file)
