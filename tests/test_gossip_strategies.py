"""Gossip rules on hand-made tensors: gossip averaging and variance correction."""

import math

import pytest
import torch

from sim.errors import ConfigError
from sim.gossip.sync import received_matrix
from sim.layout import Layout
from strategies import AggregationInfo, GossipAvg, VarianceCorrected
from strategies.variance import layer_variances


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)  # weight 8 entries, bias 2


LAYOUT = Layout.from_module(Tiny())  # weight [0:8], bias [8:10]


def info(k, self_index=0, mixing=None):
    return AggregationInfo(
        client_ids=torch.arange(k),
        num_samples=torch.ones(k, dtype=torch.long),
        round=1,
        num_clients=k,
        layout=LAYOUT,
        reference=torch.zeros(LAYOUT.size),
        self_index=self_index,
        mixing_weights=None if mixing is None else torch.tensor(mixing),
    )


def models_with_variances(variances, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for v in variances:
        w = torch.randn(8, generator=g)
        w = (w - w.mean()) / w.std() * v**0.5 + 0.3  # exact unbiased variance v, mean 0.3
        rows.append(torch.cat([w, torch.randn(2, generator=g)]))
    return torch.stack(rows)


def test_gossip_avg_uses_mixing_row_or_uniform():
    models = torch.stack([torch.full((10,), 1.0), torch.full((10,), 2.0), torch.full((10,), 4.0)])
    mixed, _ = GossipAvg().aggregate(models, info(3, mixing=[0.5, 0.25, 0.25]), {})
    assert torch.allclose(mixed, torch.full((10,), 0.5 + 0.5 + 1.0))
    uniform, _ = GossipAvg(weights="uniform").aggregate(models, info(3, mixing=[0.5, 0.25, 0.25]), {})
    assert torch.allclose(uniform, torch.full((10,), 7 / 3))
    server, _ = GossipAvg().aggregate(models, info(3, self_index=None), {})  # FL: no mixing row
    assert torch.allclose(server, torch.full((10,), 7 / 3))


def test_follow_others_restores_the_mean_received_variance():
    models = models_with_variances([0.5, 2.0, 4.0])  # self has 0.5; received 2 and 4
    out, _ = VarianceCorrected(variant="follow_others", eps=1e-12).aggregate(models, info(3), {})
    merged = models.mean(0)
    assert layer_variances(out, LAYOUT, ("weight",)).item() == pytest.approx(3.0, rel=1e-5)
    assert out[:8].mean().item() == pytest.approx(merged[:8].mean().item(), abs=1e-6)  # mean kept
    assert torch.allclose(out[8:], merged[8:])  # biases only averaged
    # plain averaging of uncorrelated weights shrinks the variance well below 3
    assert layer_variances(merged, LAYOUT, ("weight",)).item() < 2.0


def test_conservative_blends_self_and_received():
    models = models_with_variances([1.0, 2.0, 4.0])
    out, _ = VarianceCorrected(variant="conservative", c=0.25, eps=1e-12).aggregate(models, info(3), {})
    expected_mean = (0.25 * models[0] + 0.75 * models[1:].mean(0))[:8].mean()
    assert out[:8].mean().item() == pytest.approx(expected_mean.item(), abs=1e-6)
    # target 0.25 * 1 + 0.75 * (2 + 4) / 2 = 2.5
    assert layer_variances(out, LAYOUT, ("weight",)).item() == pytest.approx(2.5, rel=1e-5)


def test_weights_and_biases_option_and_eps():
    models = models_with_variances([1.0, 3.0])
    both, _ = VarianceCorrected(variant="follow_others", correct="weights_and_biases", eps=1e-12).aggregate(
        models, info(2), {}
    )
    target_bias = models[1, 8:].var()
    assert both[8:].var().item() == pytest.approx(target_bias.item(), rel=1e-5)
    eps_out, _ = VarianceCorrected(variant="follow_others", eps=1e-4).aggregate(models, info(2), {})
    merged_var = models.mean(0)[:8].var()
    expected = (3.0 + 1e-4) / (merged_var + 1e-4) * merged_var
    assert eps_out[:8].var().item() == pytest.approx(expected.item(), rel=1e-5)


def test_as_server_rule_all_models_count_as_received():
    models = models_with_variances([1.0, 2.0, 3.0])
    out, _ = VarianceCorrected(eps=1e-12).aggregate(models, info(3, self_index=None), {})
    assert out[:8].var().item() == pytest.approx(2.0, rel=1e-5)


# ---- the first author's rule (DFL_torch preset VC) ------------------------------------------------


class Normed(torch.nn.Module):
    """Weights, biases, a norm scale, a one-element tensor and BatchNorm buffers: every case the rule tells apart."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)  # weight 6, bias 2
        self.bn = torch.nn.BatchNorm1d(2)  # weight 2 (a scale), bias 2, buffers running_mean 2, running_var 2
        self.gain = torch.nn.Parameter(torch.ones(1))  # one element: never rescaled


NORMED = Layout.from_module(Normed())


def dfl_vc_merge(own: dict, received: list[dict], conservative: float = 0.5, correct: bool = True) -> dict:
    """DFL_torch's ConservativeModelAverager with a FollowOthers VarianceCorrector, re-expressed on state
    dicts from reading ``py_src/model_average.py`` and ``py_src/model_variance_correct.py``."""
    ignored = ("num_batches_tracked", "running_mean", "running_var")  # special_torch_layers: not averaged nor rescaled
    out = {}
    for name, mine in own.items():
        if any(k in name for k in ignored):
            out[name] = mine.clone()
            continue
        mean = sum(sd[name] for sd in received) / len(received)
        out[name] = mine * conservative + mean * (1 - conservative)
        if correct and mine.numel() > 1:
            target = sum(sd[name].var().item() for sd in received) / len(received)
            t = out[name]
            out[name] = (t - t.mean()) * torch.sqrt((target + 0.0001) / (t.var() + 0.0001)) + t.mean()
    return out


def normed_models(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, NORMED.size, generator=g) * torch.linspace(0.3, 2.0, k).unsqueeze(1)


def normed_info(k):
    return AggregationInfo(
        client_ids=torch.arange(k),
        num_samples=torch.ones(k, dtype=torch.long),
        round=1,
        num_clients=k,
        layout=NORMED,
        reference=torch.zeros(NORMED.size),
        self_index=0,
        mixing_weights=torch.full((k,), 1.0 / k),
    )


def test_reference_rule_by_hand_on_tiny_tensors():
    # Prepare: one 4-entry weight and one bias; self and two received models
    layout = Layout.from_module(torch.nn.Linear(2, 2, bias=False))
    own, r1, r2 = torch.tensor([1.0, 2, 3, 4]), torch.tensor([0.0, 0, 4, 4]), torch.tensor([2.0, -2, 2, -2])
    # Execute: the default variant is the reference rule
    out, _ = VarianceCorrected().aggregate(
        torch.stack([own, r1, r2]),
        AggregationInfo(
            client_ids=torch.arange(3),
            num_samples=torch.ones(3, dtype=torch.long),
            round=1,
            num_clients=3,
            layout=layout,
            reference=own,
            self_index=0,
            mixing_weights=torch.tensor([0.6, 0.2, 0.2]),
        ),
        {},
    )
    # Assert: merged = 0.5 self + 0.25 (r1 + r2) = [1, 0.5, 3, 2.5] (the mixing row is not used),
    # mean 1.75, Var(merged) = (0.5625 + 1.5625 + 1.5625 + 0.5625) / 3 = 4.25 / 3;
    # target = (Var r1 + Var r2) / 2 = (16/3 + 16/3) / 2
    merged, mean = [1.0, 0.5, 3.0, 2.5], 1.75
    scale = math.sqrt((16 / 3 + 1e-4) / (4.25 / 3 + 1e-4))
    expected = torch.tensor([(w - mean) * scale + mean for w in merged])
    assert torch.allclose(out, expected, atol=1e-6)


def test_reference_rule_equals_the_authors_formula():
    # Prepare: self (row 0) and three received models over weights, biases, a norm scale, buffers, one element
    models = normed_models(4)
    # Execute
    ours, _ = VarianceCorrected().aggregate(models, normed_info(4), {})
    plain, _ = GossipAvg(weights="conservative").aggregate(models, normed_info(4), {})
    # Assert: the same numbers as the authors' code with and without the corrector
    sds = [NORMED.to_state_dict(m) for m in models]
    for flat, correct in ((ours, True), (plain, False)):
        theirs = NORMED.from_state_dict(dfl_vc_merge(sds[0], sds[1:], correct=correct))
        assert torch.allclose(flat, theirs, atol=1e-6), (flat - theirs).abs().max()
    assert torch.equal(NORMED.view(ours, "bn.running_var"), NORMED.view(models[0], "bn.running_var"))  # own buffers
    assert NORMED.view(ours, "gain") == NORMED.view(plain, "gain")  # one element: merged, not rescaled


def test_a_node_that_received_nothing_keeps_its_model():
    own = normed_models(1)
    rules = (VarianceCorrected(), VarianceCorrected(variant="follow_others"), GossipAvg(weights="conservative"))
    for strategy in rules:
        out, _ = strategy.aggregate(own, normed_info(1), {})
        assert torch.equal(out, own[0])


@pytest.mark.parametrize(
    "strategy",
    [
        VarianceCorrected(),
        VarianceCorrected(variant="follow_others"),
        VarianceCorrected(variant="conservative", c=0.3),
        VarianceCorrected(variant="follow_others", weights="conservative", c=0.7),
        GossipAvg(weights="conservative"),
    ],
    ids=["reference", "follow_others", "conservative", "follow_others-conservative-row", "gossip_avg-conservative"],
)
@pytest.mark.parametrize("drop", [0.0, 0.5])
def test_whole_graph_merge_equals_per_node_calls_with_buffers(strategy, drop):
    # Prepare: a 6-node ring plus chords, lost messages moved to the diagonal as the sync loop does
    n = 6
    edges = [(i, (i + 1) % n) for i in range(n)] + [(0, 3), (1, 4)]
    w = torch.zeros(n, n, dtype=torch.float64)
    for a, b in edges:
        w[a, b] = w[b, a] = 0.2
    w += torch.diag(1 - w.sum(1))
    w = w.to_sparse().coalesce()
    g = torch.Generator().manual_seed(1)
    lost = (torch.rand(w.values().shape, generator=g, dtype=torch.float64) < drop) & (w.indices()[0] != w.indices()[1])
    lost[w.indices()[0] == 5] = True  # node 5 receives nothing
    received = received_matrix(w, lost)
    models = normed_models(n)
    # Execute
    fast = strategy.aggregate_all(received, models, NORMED)
    # Assert: each node's row through aggregate (own model first), the lone node unchanged
    dense = received.to_dense()
    for i in range(n):
        senders = [j for j in range(n) if j != i and dense[i, j] > 0]
        members = [i, *senders]
        info = AggregationInfo(
            client_ids=torch.tensor(members),
            num_samples=torch.ones(len(members), dtype=torch.long),
            round=1,
            num_clients=n,
            layout=NORMED,
            reference=models[i],
            self_index=0,
            mixing_weights=dense[i, members],
        )
        slow, _ = strategy.aggregate(models[members], info, {})
        assert torch.allclose(fast[i], slow, atol=1e-6), (i, (fast[i] - slow).abs().max())
    assert torch.equal(fast[5], models[5])


@pytest.mark.parametrize("eps", [0, 0.0, -1e-4, float("inf"), float("nan")])
def test_eps_must_be_a_finite_positive_number(eps):
    with pytest.raises(ConfigError) as err:
        VarianceCorrected(eps=eps)
    assert err.value.field == "strategy.eps"


def test_zero_biases_stay_finite():
    models = models_with_variances([1.0, 2.0, 3.0])
    models[:, 8:] = 0.0  # constant tensors: Var 0 everywhere
    out, _ = VarianceCorrected().aggregate(models, info(3), {})
    assert torch.isfinite(out).all() and torch.equal(out[8:], torch.zeros(2))
