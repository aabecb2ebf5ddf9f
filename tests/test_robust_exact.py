"""Robust rules on the inputs that break naive kernels: exact score ties, duplicated values, rows 1e12 apart.

References on the same inputs: ByzFL 0.0.11 (numpy float64 path: direct differences, ``argpartition``)
and Flower's ``aggregate_krum`` / ``aggregate_bulyan``. Attackers send exactly such stacks: identical
crafted rows (ties, duplicates) and huge rows (one of 1e6 once erased every other distance).
"""

import numpy as np
import pytest
import torch
from byzfl_ref import byzfl_module
from test_robust_reference import info

from strategies.preagg import NNM
from strategies.robust import Bulyan, GeometricMedian, Krum, MeaMed
from strategies.robust.common import pairwise_sq_distances

ISSUE_STACK = [[5, 5], [0, 0], [0.1, 0], [0, 0.1], [0.05, 0.05], [1e6, 1e6], [0.02, 0.08]]


def flower():
    return pytest.importorskip("flwr.server.strategy.aggregate")


def flower_exact(x: np.ndarray) -> bool:
    """Flower squares ``np.linalg.norm``: its distances are exact (so its ties are real) when these are."""
    delta = x[:, None, :] - x[None, :, :]
    return bool((np.linalg.norm(delta, axis=2) ** 2 == (delta**2).sum(axis=2)).all())


DIRECTIONS = {1: [1.0], 2: [3.0, 4.0], 3: [2.0, 3.0, 6.0]}  # integer norms 1, 5, 7


def tied_stacks(count, k, p, seed):
    """Rows at small-integer multiples of an integer direction (plus a shared offset): every distance is an
    integer that Flower's squared norm keeps exact, many rows are duplicates and many Krum scores tie."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        steps = rng.integers(-3, 4, size=(k, 1)).astype(np.float64)
        yield steps * np.array(DIRECTIONS[p]) + rng.integers(-5, 6, size=p)


@pytest.mark.parametrize("k,f,p", [(7, 1, 3), (9, 1, 2), (11, 2, 3), (13, 2, 1)])
def test_bulyan_and_krum_break_exact_ties_by_index_as_flower(k, f, p):
    agg = flower()
    checked = 0
    for x in tied_stacks(120, k, p, seed=k):
        if not flower_exact(x):
            continue
        checked += 1
        results = [([row], 1) for row in x]
        ours, _ = Bulyan().aggregate(torch.tensor(x), info(k, p, f), {})
        theirs = agg.aggregate_bulyan([([row], 1) for row in x], f, agg.aggregate_krum, to_keep=0)[0]
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12, atol=1e-12)
        krum, _ = Krum().aggregate(torch.tensor(x), info(k, p, f), {})
        np.testing.assert_array_equal(krum.numpy(), agg.aggregate_krum(results, f, 0)[0])
        # float32, as models arrive in a run: the ties are exact there too
        ours32, _ = Bulyan().aggregate(torch.tensor(x, dtype=torch.float32), info(k, p, f), {})
        np.testing.assert_allclose(ours32.numpy(), theirs, rtol=1e-6, atol=1e-6)
    assert checked == 120


@pytest.mark.parametrize("k,f,p", [(5, 1, 1), (5, 2, 7), (8, 3, 5), (11, 4, 9)])
def test_meamed_equals_byzfl_on_stacks_of_duplicated_values(k, f, p):
    agg = byzfl_module("aggregators")
    rng = np.random.default_rng(k + f)
    for trial in range(40):
        values = rng.choice([-3.0, -3.0, -1.0, 0.0, 0.5, 2.0, 7.0], size=(k, p))
        if trial % 2:
            values[: f + 1] = values[0]  # f + 1 identical rows, as crafted Byzantine rows are
        ours, _ = MeaMed().aggregate(torch.tensor(values), info(k, p, f), {})
        np.testing.assert_allclose(ours.numpy(), agg.Meamed(f)(values.copy()), rtol=1e-12, atol=1e-12)


def test_the_issues_stack_one_row_of_1e6_leaves_the_other_distances_exact():
    agg = byzfl_module("aggregators")
    x = np.array(ISSUE_STACK)
    for dtype in (torch.float32, torch.float64):
        models = torch.tensor(x, dtype=dtype)
        dist = pairwise_sq_distances(models)
        assert dist[1, 2] == pytest.approx(0.01, rel=1e-6) and dist[2, 4] == pytest.approx(0.005, rel=1e-6)
        z = torch.zeros(2, dtype=dtype)
        krum, _ = Krum(scoring="byzfl").aggregate(models, info(7, 2, 2, reference=z), {})
        np.testing.assert_allclose(krum.numpy(), [0.05, 0.05], rtol=1e-6)
        multi, _ = Krum(m=None, scoring="byzfl").aggregate(models, info(7, 2, 2, reference=z), {})
        np.testing.assert_allclose(multi.numpy(), [0.034, 0.046], rtol=1e-6)
        np.testing.assert_allclose(multi.numpy(), agg.MultiKrum(2)(x.copy()), rtol=1e-6)
        paper, _ = Krum().aggregate(models, info(7, 2, 2, reference=z), {})
        np.testing.assert_allclose(paper.numpy(), flower().aggregate_krum([([r], 1) for r in x], 2, 0)[0], rtol=1e-6)


def spread_stack(k, p, rng, dtype=np.float64):
    """Rows whose scales span 12 orders of magnitude (1e-6 to 1e6), some of them in tight clusters."""
    x = rng.normal(size=(k, p)) * 10.0 ** rng.uniform(-6, 6, size=(k, 1))
    far = rng.integers(k)
    x[(far + 1) % k] = x[far] + rng.normal(size=p) * 1e-3  # two near-identical far rows: Gram cancels there
    return x.astype(dtype)


def assert_close_at_scale(ours, theirs):
    theirs = np.asarray(theirs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9 * max(np.abs(theirs).max(), 1e-30))


@pytest.mark.parametrize("k,f,p", [(7, 2, 3), (9, 2, 16), (12, 2, 40), (15, 3, 100)])
def test_rules_on_rows_spanning_twelve_orders_of_magnitude_equal_the_references(k, f, p):
    agg = byzfl_module("aggregators")
    pre = byzfl_module("aggregators.preaggregators")
    rng = np.random.default_rng(k * p)
    for _ in range(8):
        x = spread_stack(k, p, rng)
        models, ctx = torch.tensor(x), info(k, p, f)
        direct = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
        np.testing.assert_allclose(pairwise_sq_distances(models).numpy(), direct, rtol=1e-9, atol=0)
        assert_close_at_scale(Krum(scoring="byzfl").aggregate(models, ctx, {})[0].numpy(), agg.Krum(f)(x.copy()))
        multi = Krum(m=None, scoring="byzfl").aggregate(models, ctx, {})[0].numpy()
        assert_close_at_scale(multi, agg.MultiKrum(f)(x.copy()))
        assert_close_at_scale(NNM().apply(models, ctx)[0].numpy(), pre.NNM(f)(x.copy()))
        byzfl_gm = GeometricMedian(nu=0.1, max_iter=3, eps=0.0, init="reference", weights="uniform")
        assert_close_at_scale(byzfl_gm.aggregate(models, ctx, {})[0].numpy(), agg.GeometricMedian()(x.copy()))
        if k >= 4 * f + 3:
            bulyan = flower().aggregate_bulyan([([r], 1) for r in x], f, flower().aggregate_krum, to_keep=0)[0]
            assert_close_at_scale(Bulyan().aggregate(models, ctx, {})[0].numpy(), bulyan)


def test_far_rows_in_float32_keep_every_distance_among_ordinary_rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 500)).astype(np.float32)
    x[7] = 1e6
    x[8] = 1e6 + 1  # a far cluster: its inner distance (500) survives too
    direct = ((x[:, None, :].astype(np.float64) - x[None, :, :].astype(np.float64)) ** 2).sum(axis=2)
    np.testing.assert_allclose(pairwise_sq_distances(torch.tensor(x)).numpy(), direct, rtol=1e-9)
