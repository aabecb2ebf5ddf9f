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


def info(k, p, f, reference=None, samples=None):
    return AggregationInfo(
        client_ids=torch.arange(k),
        num_samples=torch.ones(k) if samples is None else torch.as_tensor(samples),
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
        lambda f: GeometricMedian(nu=0.1, max_iter=3, eps=0.0, init="reference", weights="uniform"),
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


def awkward_updates(rounds, seed):
    """Per round an update stack of its own K: duplicated rows, a row 1e6 out, one at 1e-6, norms around tau."""
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        k = (5, 7, 6, 9, 5, 8)[r % 6]
        x = rng.normal(size=(k, 11)) * rng.uniform(0.2, 3, (k, 1)) + rng.normal(size=11)
        x[1] = x[0]  # a duplicate (crafted Byzantine rows are identical)
        x[2] *= 1e6 if r % 2 else 1e-6
        yield x


@pytest.mark.parametrize("tau,iterations", [(1.5, 1), (0.7, 2), (40.0, 3)])
def test_centered_clipping_in_fl_equals_byzfls_stateful_aggregator_on_updates(tau, iterations, tmp_path):
    """ByzFL's gradient path: one CenteredClipping kept across rounds, called on update vectors
    (``update_model_with_gradients``). Ours gets models = global + update and reference = global, the
    global model moving by our aggregate each round; its state goes through torch.save midway."""
    agg = byzfl_module("aggregators")
    theirs = agg.CenteredClipping(L=iterations, tau=tau)
    rule = CenteredClipping(tau=tau, iterations=iterations)
    glob = torch.tensor(np.random.default_rng(9).normal(size=11) * 5)
    state = rule.init_state(glob, 9)
    for r, updates in enumerate(awkward_updates(6, seed=int(tau * 10))):
        k = len(updates)
        out, state = rule.aggregate(glob + torch.tensor(updates), info(k, 11, 1, reference=glob), state)
        expected = theirs(updates.copy())
        np.testing.assert_allclose((out - glob).numpy(), expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
        glob = out
        if r == 2:  # a checkpoint: the state is saved and a new rule object resumes from it
            torch.save(state, tmp_path / "state.pt")
            rule = CenteredClipping(tau=tau, iterations=iterations)
            state = torch.load(tmp_path / "state.pt")


def rfa_geometric_median(points, alphas, maxiter=4, eps=1e-5, ftol=1e-6):
    """The RFA authors' ``geometric_median_update`` (krishnap25/RFA), transcribed for flat numpy vectors."""
    alphas = np.asarray(alphas, dtype=np.float64) / np.sum(alphas)
    median = np.sum(alphas[:, None] * points, axis=0)  # weighted_average_oracle

    def objective(z):
        return np.sum([a * np.linalg.norm(z - p) for a, p in zip(alphas, points, strict=True)])

    obj_val = objective(median)
    for _ in range(maxiter):
        prev_obj_val = obj_val
        weights = np.asarray([a / max(eps, np.linalg.norm(median - p)) for a, p in zip(alphas, points, strict=True)])
        weights = weights / weights.sum()
        median = np.sum(weights[:, None] * points, axis=0)
        obj_val = objective(median)
        if abs(prev_obj_val - obj_val) < ftol * obj_val:
            break
    return median


@pytest.mark.parametrize("k,f,p", CASES)
def test_geometric_median_defaults_equal_rfa_with_unequal_client_sizes(k, f, p):
    rng = np.random.default_rng(k)
    for seed in range(4):
        x = stack(k, p, seed)
        if seed == 1:
            x[1] = x[0]  # a duplicate
        if seed == 2:
            x[-1] *= 1e6  # one row far out
        if seed == 3:
            x[0] = x.mean(axis=0)  # the start itself is a data point (distance below nu)
        sizes = rng.integers(5, 201, size=k)
        ours, _ = GeometricMedian().aggregate(torch.tensor(x), info(k, p, f, samples=sizes), {})
        np.testing.assert_allclose(ours.numpy(), rfa_geometric_median(x, sizes), rtol=1e-7, atol=1e-9)
        uniform, _ = GeometricMedian(weights="uniform").aggregate(torch.tensor(x), info(k, p, f, samples=sizes), {})
        np.testing.assert_allclose(uniform.numpy(), rfa_geometric_median(x, np.ones(k)), rtol=1e-7, atol=1e-9)
        more, _ = GeometricMedian(max_iter=50, eps=0.0).aggregate(torch.tensor(x), info(k, p, f, samples=sizes), {})
        np.testing.assert_allclose(more.numpy(), rfa_geometric_median(x, sizes, 50, ftol=0.0), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("ftol", [0.3, 0.1, 3e-2, 1e-2, 1e-3])
def test_geometric_median_stops_where_rfa_stops(ftol):
    """RFA stops once |previous - objective| < ftol * objective, the objective weighted by the sample shares."""
    rng = np.random.default_rng(int(1 / ftol))
    for seed in range(10):
        k = int(rng.integers(5, 12))
        x = stack(k, 6, seed) + np.eye(k, 6) * rng.uniform(0, 20)
        sizes = rng.integers(5, 201, size=k)
        rule = GeometricMedian(eps=ftol, max_iter=60, nu=1e-3)
        ours, _ = rule.aggregate(torch.tensor(x), info(k, 6, 1, samples=sizes), {})
        expected = rfa_geometric_median(x, sizes, maxiter=60, eps=1e-3, ftol=ftol)
        np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("k,f,p", CASES)
def test_byzfls_geometric_median_is_uniform_from_the_reference_without_stopping(k, f, p):
    agg = byzfl_module("aggregators")
    for seed, (nu, steps) in enumerate([(0.1, 3), (1e-5, 4), (1e-3, 20)]):
        x = stack(k, p, seed)
        sizes = np.random.default_rng(seed).integers(5, 201, size=k)  # ignored with weights=uniform
        rule = GeometricMedian(nu=nu, max_iter=steps, eps=0.0, init="reference", weights="uniform")
        ours, _ = rule.aggregate(torch.tensor(x), info(k, p, f, samples=sizes), {})
        np.testing.assert_allclose(ours.numpy(), agg.GeometricMedian(nu=nu, T=steps)(x.copy()), rtol=1e-7, atol=1e-9)


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
