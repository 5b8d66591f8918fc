"""Science: the native picker finds the particles put into synthetic micrographs, and only them.

Micrographs from :mod:`emlive.synth.particles` at 40 e/Å², 300 kV, defocus 0.8–3 µm, the
threshold chosen by the engine. A pick matches a particle within 0.3 diameters, one to one.
The fast cases use 1024² micrographs at 2 Å/px (a 2048 Å field); the acceptance set at 4096²
and 1 Å/px, with its timing, is marked slow.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import starfile

from emlive.pick.native import pick_particles
from emlive.pick.score import PickScore, match_picks
from emlive.pick.types import PickParams

from .conftest import synthetic, truth_ctf


def pick_and_score(tmp_path, *, seed, kind, diameter_a, flip=True, **options) -> tuple[PickScore, float]:
    m, path = synthetic(tmp_path, seed=seed, kind=kind, diameter_a=diameter_a, **options)
    started = time.perf_counter()
    result = pick_particles(
        path,
        tmp_path / "out",
        PickParams(diameter_a=diameter_a),
        pixel_size_a=m.pixel_size_a,
        optics=m.optics(),
        ctf=truth_ctf(m) if flip else None,
    )
    seconds = time.perf_counter() - started
    xy = starfile.read(result.coordinates_path)[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    return match_picks(xy, m.positions_px, max_distance_px=0.3 * m.diameter_px), seconds


@pytest.mark.parametrize(
    ("kind", "diameter_a", "seed", "flip"),
    [
        ("normal", 100.0, 31, True),
        ("normal", 180.0, 32, True),
        ("crowded", 120.0, 33, True),
        ("crowded", 160.0, 34, False),
        ("gradient", 140.0, 35, True),
        ("contamination", 110.0, 36, True),
    ],
)
def test_particles_in_ice_are_found(tmp_path, kind, diameter_a, seed, flip):
    score, _ = pick_and_score(tmp_path, seed=seed, kind=kind, diameter_a=diameter_a, flip=flip)
    assert score.n_true > 20
    assert score.f1 >= 0.9, score
    assert score.precision >= 0.9 and score.recall >= 0.9, score


def test_faint_particles_are_found_below_the_strict_threshold(tmp_path):
    """Particles with 0.8 V protein–ice contrast (2.5 times fainter than the default) score
    around 4σ: the threshold comes down from the strict noise threshold to pick them."""
    m, path = synthetic(tmp_path, seed=302, kind="normal", diameter_a=120.0, protein_contrast_v=0.8)
    result = pick_particles(
        path, tmp_path / "out", PickParams(diameter_a=120.0), pixel_size_a=2.0, optics=m.optics(), ctf=truth_ctf(m)
    )
    table = starfile.read(result.coordinates_path)
    xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    score = match_picks(xy, m.positions_px, max_distance_px=0.3 * m.diameter_px)
    assert score.f1 >= 0.9, score
    assert table.rlnAutopickFigureOfMerit.min() < 4.0  # below any strict threshold (about 4.3σ here)


def test_large_particles_in_a_wider_field(tmp_path):
    score, _ = pick_and_score(tmp_path, seed=37, kind="crowded", diameter_a=250.0, shape=(1024, 1024), pixel_size_a=4.0)
    assert score.n_true > 30
    assert score.f1 >= 0.9, score


def test_carbon_is_not_picked(tmp_path):
    score, _ = pick_and_score(tmp_path, seed=38, kind="carbon", diameter_a=120.0, carbon_fraction=0.4)
    assert score.n_true > 20
    assert score.precision >= 0.9, score
    assert score.recall >= 0.85, score


def test_empty_ice_gets_few_picks_compared_with_a_full_micrograph(tmp_path):
    full, _ = pick_and_score(tmp_path, seed=39, kind="normal", diameter_a=100.0)
    empty, _ = pick_and_score(tmp_path, seed=40, kind="empty", diameter_a=100.0)
    assert full.n_picked > 50
    assert empty.n_picked < 0.1 * full.n_picked


ACCEPTANCE = [
    ("normal", 100.0),
    ("normal", 150.0),
    ("normal", 250.0),
    ("crowded", 100.0),
    ("crowded", 180.0),
    ("crowded", 250.0),
]


@pytest.mark.slow
def test_acceptance_on_4k_micrographs(tmp_path):
    """4096² at 1 Å/px: median F1 ≥ 0.9 over normal and crowded (100–250 Å), precision ≥ 0.8
    on carbon, empty ice < 10 % of a full micrograph's picks, about a second per micrograph."""
    big = {"shape": (4096, 4096), "pixel_size_a": 1.0}
    f1s, seconds = [], []
    for seed, (kind, diameter_a) in enumerate(ACCEPTANCE, start=50):
        score, s = pick_and_score(tmp_path, seed=seed, kind=kind, diameter_a=diameter_a, **big)
        f1s.append(score.f1)
        seconds.append(s)
    carbon, s = pick_and_score(tmp_path, seed=60, kind="carbon", diameter_a=150.0, **big)
    seconds.append(s)
    full, _ = pick_and_score(tmp_path, seed=61, kind="normal", diameter_a=150.0, **big)
    empty, s = pick_and_score(tmp_path, seed=62, kind="empty", diameter_a=150.0, **big)
    seconds.append(s)
    assert statistics.median(f1s) >= 0.9, f1s
    assert min(f1s) >= 0.85, f1s
    assert carbon.precision >= 0.8, carbon
    assert empty.n_picked < 0.1 * full.n_picked, (empty, full)
    # 1 s per 4K micrograph on 2 cores is the target; allow for a busy shared machine
    assert np.median(seconds) < 2.0, seconds
