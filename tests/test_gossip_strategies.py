"""Gossip rules on hand-made tensors: gossip averaging and variance correction."""

import pytest
import torch

from sim.layout import Layout
from strategies import AggregationInfo, GossipAvg, VarianceCorrected
from strategies.variance import layer_variances


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)  # weight 8 entries, bias 2


LAYOUT = Layout.from_module(Tiny())  # weight [0:8], bias [8:10]


def info(k, self_index=0, mixing=None):
    return AggregationInfo(client_ids=torch.arange(k), num_samples=torch.ones(k, dtype=torch.long), round=1,
                           num_clients=k, layout=LAYOUT, reference=torch.zeros(LAYOUT.size),
                           self_index=self_index, mixing_weights=None if mixing is None else torch.tensor(mixing))


def models_with_variances(variances, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for v in variances:
        w = torch.randn(8, generator=g)
        w = (w - w.mean()) / w.std() * v ** 0.5 + 0.3  # exact unbiased variance v, mean 0.3
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
    out, _ = VarianceCorrected(eps=0.0).aggregate(models, info(3), {})
    merged = models.mean(0)
    assert layer_variances(out, LAYOUT, ("weight",)).item() == pytest.approx(3.0, rel=1e-5)
    assert out[:8].mean().item() == pytest.approx(merged[:8].mean().item(), abs=1e-6)  # mean kept
    assert torch.allclose(out[8:], merged[8:])  # biases only averaged
    # plain averaging of uncorrelated weights shrinks the variance well below 3
    assert layer_variances(merged, LAYOUT, ("weight",)).item() < 2.0


def test_conservative_blends_self_and_received():
    models = models_with_variances([1.0, 2.0, 4.0])
    out, _ = VarianceCorrected(variant="conservative", c=0.25, eps=0.0).aggregate(models, info(3), {})
    expected_mean = (0.25 * models[0] + 0.75 * models[1:].mean(0))[:8].mean()
    assert out[:8].mean().item() == pytest.approx(expected_mean.item(), abs=1e-6)
    # target 0.25 * 1 + 0.75 * (2 + 4) / 2 = 2.5
    assert layer_variances(out, LAYOUT, ("weight",)).item() == pytest.approx(2.5, rel=1e-5)


def test_weights_and_biases_option_and_eps():
    models = models_with_variances([1.0, 3.0])
    both, _ = VarianceCorrected(correct="weights_and_biases", eps=0.0).aggregate(models, info(2), {})
    target_bias = models[1, 8:].var()
    assert both[8:].var().item() == pytest.approx(target_bias.item(), rel=1e-5)
    eps_out, _ = VarianceCorrected(eps=1e-4).aggregate(models, info(2), {})
    merged_var = models.mean(0)[:8].var()
    expected = (3.0 + 1e-4) / (merged_var + 1e-4) * merged_var
    assert eps_out[:8].var().item() == pytest.approx(expected.item(), rel=1e-5)


def test_as_server_rule_all_models_count_as_received():
    models = models_with_variances([1.0, 2.0, 3.0])
    out, _ = VarianceCorrected(eps=0.0).aggregate(models, info(3, self_index=None), {})
    assert out[:8].var().item() == pytest.approx(2.0, rel=1e-5)
