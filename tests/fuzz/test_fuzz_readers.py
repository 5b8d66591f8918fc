"""Damaged MRC, TIFF and EER movies, gain references and defect maps: every read either
succeeds or raises the typed error naming the file, fast and without a large allocation.

Each example takes a valid seed file (tests/fuzz/seeds.py), applies a few mutations
(tests/fuzz/mutate.py: extreme header fields, bit flips, truncation, splices, insertions) and
calls every entry point a watcher, a worker or a user reaches: the cheap completeness check, the
header read, a full read of all frames (EER also at twice the size), ``read_mrc``, ``read_gain``
and ``read_defects``. The property is checked by tests/fuzz/guard.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emlive.io.defects import read_defects
from emlive.io.errors import GainError, MovieFormatError
from emlive.io.gain import read_gain
from emlive.io.movie import check_movie_complete, open_movie, read_movie_header
from emlive.io.mrc import read_mrc
from tests.fuzz import seeds
from tests.fuzz.guard import check_call, fuzz_settings
from tests.fuzz.mutate import damaged

MOVIE_ERRORS = (MovieFormatError,)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write(workdir: Path, data: bytes, suffix: str, stem: str = "fuzzed") -> Path:
    path = workdir / f"{stem}{suffix}"
    path.write_bytes(data)
    return path


def exercise_movie(path: Path) -> None:
    """All movie entry points on one file."""
    check_call(lambda: check_movie_complete(path), allowed=MOVIE_ERRORS, path=path)
    check_call(lambda: read_movie_header(path, eer_fractions=1), allowed=MOVIE_ERRORS, path=path)

    def read_all(upsampling: int = 1) -> np.ndarray:
        with open_movie(path, eer_fractions=1, eer_upsampling=upsampling) as movie:
            frames = movie.frames()
            movie.memmap()
            return frames

    check_call(read_all, allowed=MOVIE_ERRORS, path=path)
    if path.suffix == ".eer":
        check_call(lambda: read_all(2), allowed=MOVIE_ERRORS, path=path)
    if path.suffix == ".mrc":
        check_call(lambda: read_mrc(path), allowed=MOVIE_ERRORS, path=path)


def exercise_gain(path: Path) -> None:
    check_call(lambda: read_gain(path), allowed=(GainError,), path=path)
    if path.suffix in (".mrc", ".tif"):
        check_call(lambda: read_defects(path, (16, 24)), allowed=(GainError,), path=path)


def _seed_params(all_seeds: tuple[seeds.Seed, ...]) -> list:
    return [pytest.param(seed, id=seed.name) for seed in all_seeds]


def _movie_seeds() -> tuple[seeds.Seed, ...]:
    return seeds.mrc_seeds() + seeds.tiff_seeds() + seeds.eer_seeds()


@pytest.mark.parametrize("seed", _seed_params(_movie_seeds()))
def test_valid_seeds_read(seed: seeds.Seed, workdir: Path) -> None:
    """The seeds themselves are valid: the fuzzing starts from files that read."""
    path = _write(workdir, seed.data, seed.suffix, "valid")
    with open_movie(path, eer_fractions=1) as movie:
        assert movie.frames().shape[1:] in ((16, 24), (16, 16))


@pytest.mark.parametrize("seed", _seed_params(_movie_seeds()))
@fuzz_settings(max_examples=60)
@given(data=st.data())
def test_damaged_movies_read_or_raise_movie_format_error(seed: seeds.Seed, workdir: Path, data: st.DataObject) -> None:
    damaged_bytes = data.draw(damaged(seed.data, hot=seed.hot, order=seed.order), label="file")
    exercise_movie(_write(workdir, damaged_bytes, seed.suffix))


@pytest.mark.parametrize("seed", _seed_params(seeds.gain_seeds()))
@fuzz_settings(max_examples=60)
@given(data=st.data())
def test_damaged_gain_and_defect_maps_read_or_raise_gain_error(
    seed: seeds.Seed, workdir: Path, data: st.DataObject
) -> None:
    damaged_bytes = data.draw(damaged(seed.data, hot=seed.hot, order=seed.order), label="file")
    exercise_gain(_write(workdir, damaged_bytes, seed.suffix, "gain"))
