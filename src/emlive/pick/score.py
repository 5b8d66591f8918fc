"""How well picks match known particle positions: one-to-one matching, precision and recall.

Pure: coordinates in, numbers out. Used by the science tests and the picking benchmarks to
score any engine against the ground truth of :mod:`emlive.synth.particles`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["PickScore", "match_picks"]


@dataclass(frozen=True)
class PickScore:
    """Agreement of picks with the truth.

    ``precision = n_matched / n_picked`` (1.0 when nothing was picked), ``recall = n_matched /
    n_true`` (1.0 when there is nothing to find), ``f1`` their harmonic mean (0 when both are 0).
    """

    precision: float
    recall: float
    f1: float
    n_true: int
    n_picked: int
    n_matched: int


def _as_xy(points: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be an (n, 2) array of (x, y) positions, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite positions")
    return arr


def match_picks(picked_xy: np.ndarray, true_xy: np.ndarray, *, max_distance_px: float) -> PickScore:
    """Match picks to true positions one to one and count the matches.

    ``picked_xy`` ``(n, 2)`` and ``true_xy`` ``(m, 2)`` are ``(x, y)`` in the same pixels. A pick
    and a true particle can match when they are at most ``max_distance_px`` apart (e.g. 0.3 ×
    the particle diameter); among all one-to-one matchings of such pairs the one with the
    most matches (and, among those, the smallest total distance) is counted: each true particle
    is found at most once, and each pick finds at most one particle.
    """
    if not max_distance_px > 0:
        raise ValueError(f"max_distance_px must be > 0, got {max_distance_px!r}")
    picked = _as_xy(picked_xy, "picked_xy")
    truth = _as_xy(true_xy, "true_xy")
    n_picked, n_true = len(picked), len(truth)
    n_matched = 0
    if n_picked and n_true:
        pairs = cKDTree(picked).sparse_distance_matrix(cKDTree(truth), max_distance_px, output_type="coo_matrix")
        if pairs.nnz:
            n_matched = _max_matching(pairs.row, pairs.col, pairs.data, n_picked, n_true, max_distance_px)
    precision = n_matched / n_picked if n_picked else 1.0
    recall = n_matched / n_true if n_true else 1.0
    f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return PickScore(
        precision=precision, recall=recall, f1=f1, n_true=n_true, n_picked=n_picked, n_matched=n_matched
    )


def _max_matching(rows: np.ndarray, cols: np.ndarray, dist: np.ndarray, n_rows: int, n_cols: int, cap: float) -> int:
    """Size of the largest one-to-one matching over the candidate pairs (min total distance).

    The candidate graph falls apart into small connected groups (picks near the same few
    particles); each is solved exactly with the Hungarian algorithm.
    """
    n_groups, group = connected_components(
        coo_matrix((np.ones(len(rows)), (rows, n_rows + cols)), shape=(n_rows + n_cols,) * 2), directed=False
    )
    pair_group = group[rows]
    order = np.argsort(pair_group, kind="stable")
    bounds = np.searchsorted(pair_group[order], np.arange(n_groups + 1))
    n_matched = 0
    for g in range(n_groups):
        sel = order[bounds[g] : bounds[g + 1]]
        if not sel.size:
            continue
        used_rows, r = np.unique(rows[sel], return_inverse=True)
        used_cols, c = np.unique(cols[sel], return_inverse=True)
        if len(used_rows) == 1 or len(used_cols) == 1:
            n_matched += 1
            continue
        # a candidate pair costs its distance less a bonus bigger than any sum of distances,
        # so one more match always beats a smaller total distance; other pairs cost 0
        bonus = 2.0 * cap * (len(sel) + 1)
        cost = np.zeros((len(used_rows), len(used_cols)))
        cost[r, c] = dist[sel] - bonus
        ri, ci = linear_sum_assignment(cost)
        n_matched += int(np.count_nonzero(cost[ri, ci] < 0))
    return n_matched
