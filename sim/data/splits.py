"""Carving test and validation rows out of a pool, stratified by label or per natural client.

Every split is a quota per group (a label, or a client) plus a rank of each row inside its group;
a row is taken when its rank is below its group's quota. Ranks come from a seeded random key, so
the split is vectorized (100k clients cost one sort, not a Python loop) and reproducible.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# Guards floor(fraction * n) against 0.29 * 100 == 28.999999999999996.
_EPS = 1e-9


def floor_quota(fraction: float, counts: ArrayLike) -> np.ndarray:
    """``floor(fraction * count)`` per group: with fraction < 1 every group keeps at least one row."""
    return np.floor(fraction * np.asarray(counts, dtype=np.float64) + _EPS).astype(np.int64)


def random_rank(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's position (0, 1, ...) in a random order of the rows sharing its group."""
    keys = rng.random(len(groups))
    order = np.lexsort((keys, groups))
    sorted_groups = groups[order]
    first = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups), dtype=np.int64) - first
    return rank


def stratified_quota(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """How many rows of each label to take so the total is ``floor(fraction * n)``.

    Each label gets the floor of its exact share; the rows left over go to the labels with the
    largest fractional share (ties broken at random), as scikit-learn's stratified split does.
    """
    counts = np.bincount(labels)
    total = int(floor_quota(fraction, [len(labels)])[0])
    exact = fraction * counts
    quota = np.minimum(np.floor(exact + _EPS).astype(np.int64), counts)
    left = total - int(quota.sum())
    if left > 0:
        tiebreak = rng.permutation(len(counts))
        remainder = (exact - quota)[tiebreak]
        remainder[quota[tiebreak] >= counts[tiebreak]] = -1.0  # a full class cannot give more
        winners = tiebreak[np.argsort(-remainder, kind="stable")[:left]]
        quota[winners] += 1
    return quota


def take_stratified(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of ``floor(fraction * n)`` rows drawn so each label keeps its proportion."""
    if fraction <= 0 or len(labels) == 0:
        return np.zeros(len(labels), dtype=bool)
    quota = stratified_quota(labels, fraction, rng)
    return random_rank(labels, rng) < quota[labels]


def take_per_group(groups: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of ``floor(fraction * n_g)`` random rows from each group ``g`` (ids 0..G-1).

    Used when rows belong to natural clients: every client gives up its share and keeps at least
    one row, so clients stay intact.
    """
    if fraction <= 0 or len(groups) == 0:
        return np.zeros(len(groups), dtype=bool)
    quota = floor_quota(fraction, np.bincount(groups))
    return random_rank(groups, rng) < quota[groups]
