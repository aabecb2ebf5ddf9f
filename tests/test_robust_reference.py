"""Every robust rule and pre-aggregator against ByzFL 0.0.11 (Bulyan and paper-Krum against Flower).

Same random stacks for both sides, several K, f and P, float64 numpy inputs (ByzFL's numpy path
keeps float64; its torch path casts to float32), agreement to 1e-5. ByzFL works on gradients, so
the rules that measure from an origin get ``reference = 0`` here (docs/robust.md).
"""

import numpy as np
import pytest
import torch
from byzfl_ref import byzfl_module

from strategies.base import AggregationInfo
from strategies.preagg import ARC, NNM, StaticClipping, bucket_means
from strategies.robust import Bulyan, CenteredClipping, CoordinateMedian, GeometricMedian, Krum, MeaMed, TrimmedMean

CASES = [(5, 1, 3), (7, 2, 11), (10, 3, 40), (15, 4, 257)]  # (K, f, P)


def info(k, p, f, reference=None):
    return AggregationInfo(
        client_ids=torch.arange(k),
        num_samples=torch.ones(k),
        round=1,
        num_clients=k,
        layout=None,  # type: ignore[arg-type]  # no rule here reads the layout
        reference=torch.zeros(p, dtype=torch.float64) if reference is None else reference,
        num_byzantine=f,
    )


def stack(k, p, seed):
    return np.random.default_rng(seed).normal(size=(k, p)) * np.random.default_rng(seed + 1).uniform(0.5, 3, (k, 1))


RULES = {
    "median": (lambda f: CoordinateMedian(), lambda agg, f: agg.Median()),
    "trimmed_mean": (lambda f: TrimmedMean(), lambda agg, f: agg.TrMean(f)),
    "meamed": (lambda f: MeaMed(), lambda agg, f: agg.Meamed(f)),
    "krum_byzfl": (lambda f: Krum(scoring="byzfl"), lambda agg, f: agg.Krum(f)),
    "multi_krum_byzfl": (lambda f: Krum(m=None, scoring="byzfl"), lambda agg, f: agg.MultiKrum(f)),
    "geometric_median": (
        lambda f: GeometricMedian(nu=0.1, max_iter=3, eps=0.0, init="reference"),
        lambda agg, f: agg.GeometricMedian(nu=0.1, T=3),
    ),
}


@pytest.mark.parametrize("k,f,p", CASES)
@pytest.mark.parametrize("rule", list(RULES))
def test_rule_equals_byzfl(rule, k, f, p):
    agg = byzfl_module("aggregators")
    ours_of, theirs_of = RULES[rule]
    for seed in range(3):
        x = stack(k, p, seed)
        ours, _ = ours_of(None).aggregate(torch.tensor(x), info(k, p, f), {})
        np.testing.assert_allclose(ours.numpy(), np.asarray(theirs_of(agg, f)(x.copy())), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,f,p", CASES)
def test_centered_clipping_equals_byzfl_across_calls(k, f, p):
    agg = byzfl_module("aggregators")
    theirs = agg.CenteredClipping(L=2, tau=1.5)
    rule = CenteredClipping(tau=1.5, iterations=2)
    state = rule.init_state(torch.zeros(p, dtype=torch.float64), k)
    for seed in range(3):  # ByzFL keeps its last output as the next centre; ours keeps it in the state
        x = stack(k, p, seed)
        ours, state = rule.aggregate(torch.tensor(x), info(k, p, f), state)
        np.testing.assert_allclose(ours.numpy(), theirs(x.copy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,f,p", CASES)
def test_krum_paper_scoring_equals_flower(k, f, p):
    aggregate = pytest.importorskip("flwr.server.strategy.aggregate")
    for seed in range(3):
        x = stack(k, p, seed)
        results = [([row], 1) for row in x]
        krum, _ = Krum().aggregate(torch.tensor(x), info(k, p, f), {})
        multi, _ = Krum(m=3).aggregate(torch.tensor(x), info(k, p, f), {})
        np.testing.assert_allclose(krum.numpy(), aggregate.aggregate_krum(results, f, 0)[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(multi.numpy(), aggregate.aggregate_krum(results, f, 3)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,f,p", [(7, 1, 3), (11, 2, 17), (15, 3, 64), (9, 0, 5)])
def test_bulyan_equals_flower(k, f, p):
    aggregate = pytest.importorskip("flwr.server.strategy.aggregate")
    for seed in range(3):
        x = stack(k, p, seed)
        ours, _ = Bulyan().aggregate(torch.tensor(x), info(k, p, f), {})
        theirs = aggregate.aggregate_bulyan([([row], 1) for row in x], f, aggregate.aggregate_krum, to_keep=0)
        np.testing.assert_allclose(ours.numpy(), theirs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,f,p", CASES)
def test_nnm_and_arc_equal_byzfl(k, f, p):
    pre = byzfl_module("aggregators.preaggregators")
    for seed in range(3):
        x = stack(k, p, seed)
        nnm, _ = NNM().apply(torch.tensor(x), info(k, p, f))
        np.testing.assert_allclose(nnm.numpy(), pre.NNM(f)(x.copy()), rtol=1e-5, atol=1e-5)
        arc, _ = ARC().apply(torch.tensor(x), info(k, p, f))
        np.testing.assert_allclose(arc.numpy(), pre.ARC(f)(x.copy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,f,p", CASES)
def test_static_clipping_equals_byzfl(k, f, p):
    pre = byzfl_module("aggregators.preaggregators")
    x = stack(k, p, 0)
    ours, _ = StaticClipping(c=1.5).apply(torch.tensor(x), info(k, p, f))
    np.testing.assert_allclose(ours.numpy(), pre.Clipping(c=1.5)(x.copy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,s", [(5, 2), (9, 3), (10, 4), (6, 1)])
def test_bucketing_equals_byzfl_given_the_same_permutation(k, s):
    pre = byzfl_module("aggregators.preaggregators")
    x = stack(k, 13, k)
    np.random.seed(k)
    theirs = pre.Bucketing(s)(x.copy())  # permutes with numpy's global generator
    np.random.seed(k)
    order = torch.from_numpy(np.random.permutation(k))
    np.testing.assert_allclose(bucket_means(torch.tensor(x), order, s).numpy(), theirs, rtol=1e-5, atol=1e-5)
