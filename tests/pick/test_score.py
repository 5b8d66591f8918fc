"""Pick scoring: one-to-one matching within a distance, precision and recall."""

from __future__ import annotations

import numpy as np
import pytest

from emlive.pick.score import PickScore, match_picks


def test_exact_picks_score_one():
    truth = np.array([[10.0, 20.0], [100.0, 40.0], [50.0, 80.0]])
    assert match_picks(truth + 1.0, truth, max_distance_px=2.0) == PickScore(1.0, 1.0, 1.0, 3, 3, 3)


def test_two_picks_on_one_particle_count_once():
    truth = np.array([[0.0, 0.0]])
    score = match_picks([[0.5, 0.0], [-0.5, 0.0]], truth, max_distance_px=1.0)
    assert (score.n_matched, score.precision, score.recall) == (1, 0.5, 1.0)
    assert score.f1 == pytest.approx(2 / 3)


def test_the_distance_limit_is_inclusive_and_exact():
    truth = np.array([[0.0, 0.0]])
    assert match_picks([[3.0, 4.0]], truth, max_distance_px=5.0).n_matched == 1
    assert match_picks([[3.0, 4.0]], truth, max_distance_px=4.999).n_matched == 0


def test_optimal_matching_beats_greedy_nearest():
    # pick A is nearest to truth 1, but only A can reach truth 0: greedy by distance would
    # give A to 1 and leave B (which reaches only 1) and truth 0 unmatched
    truth = np.array([[0.0, 0.0], [1.8, 0.0]])
    picks = np.array([[0.95, 0.0], [2.9, 0.0]])  # A, B
    score = match_picks(picks, truth, max_distance_px=1.1)
    assert score.n_matched == 2


def test_empty_inputs():
    assert match_picks([], [], max_distance_px=1.0) == PickScore(1.0, 1.0, 1.0, 0, 0, 0)
    nothing_found = match_picks(np.zeros((0, 2)), [[1.0, 1.0]], max_distance_px=1.0)
    assert (nothing_found.precision, nothing_found.recall, nothing_found.f1) == (1.0, 0.0, 0.0)
    nothing_there = match_picks([[1.0, 1.0], [5.0, 5.0]], np.zeros((0, 2)), max_distance_px=1.0)
    assert (nothing_there.precision, nothing_there.recall, nothing_there.f1) == (0.0, 1.0, 0.0)


def test_many_random_picks_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 1000, (400, 2))
    picks = np.concatenate([truth[:300] + rng.normal(0, 2.0, (300, 2)), rng.uniform(0, 1000, (100, 2))])
    score = match_picks(picks, truth, max_distance_px=6.0)
    # the jittered 300 are all found (their own particle is within reach); the random 100 add few
    assert 300 <= score.n_matched <= 320
    assert score.n_picked == 400 and score.n_true == 400


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        match_picks(np.zeros((3, 3)), np.zeros((2, 2)), max_distance_px=1.0)
    with pytest.raises(ValueError, match="max_distance_px"):
        match_picks(np.zeros((1, 2)), np.zeros((1, 2)), max_distance_px=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        match_picks([[np.nan, 0.0]], np.zeros((1, 2)), max_distance_px=1.0)
