"""Hand-computed aggregation results on tiny tensors (Prepare / Execute / Assert)."""

import math

import pytest
import torch

from sim.errors import ConfigError
from sim.layout import Layout
from strategies import AggregationInfo, FedAvg, ServerOptimizer, build_strategy

LAYOUT = Layout.from_module(torch.nn.Linear(1, 1, bias=True))  # 2 entries: weight, bias


def info(reference, num_samples, round_=1):
    k = len(num_samples)
    return AggregationInfo(client_ids=torch.arange(k), num_samples=torch.tensor(num_samples), round=round_,
                           num_clients=10, layout=LAYOUT, reference=torch.tensor(reference))


MODELS = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])


def test_fedavg_weights_by_samples():
    out, state = FedAvg().aggregate(MODELS, info([0.0, 0.0], [1, 1, 2]), {})
    # (1*1 + 1*3 + 2*5) / 4 = 3.5 ; (2 + 4 + 12) / 4 = 4.5
    assert torch.allclose(out, torch.tensor([3.5, 4.5]))
    assert state == {}


def test_fedavg_uniform_weighting_ignores_samples():
    out, _ = FedAvg(weighting="uniform").aggregate(MODELS, info([0.0, 0.0], [1, 1, 100]), {})
    assert torch.allclose(out, torch.tensor([3.0, 4.0]))


def test_fedavg_server_lr_scales_step_from_reference():
    out, _ = FedAvg(server_lr=0.5).aggregate(MODELS, info([1.0, 1.0], [1, 1, 2]), {})
    # 1 + 0.5 * (3.5 - 1) = 2.25 ; 1 + 0.5 * (4.5 - 1) = 2.75
    assert torch.allclose(out, torch.tensor([2.25, 2.75]))


def test_fedavgm_accumulates_momentum_over_rounds():
    s = ServerOptimizer(optimizer="avgm", server_lr=1.0, beta1=0.9)
    state = s.init_state(torch.zeros(2), 10)
    x1, state = s.aggregate(torch.tensor([[2.0, 3.0]]), info([1.0, 1.0], [1]), state)
    assert torch.allclose(x1, torch.tensor([2.0, 3.0]))  # m = [1, 2]
    x2, state = s.aggregate(torch.tensor([[2.0, 2.0]]), info(x1.tolist(), [1], 2), state)
    # m = 0.9 * [1, 2] + [0, -1] = [0.9, 0.8]; x = [2, 3] + m
    assert torch.allclose(state["m"], torch.tensor([0.9, 0.8]))
    assert torch.allclose(x2, torch.tensor([2.9, 3.8]))
    assert state["step"] == 2


def _one_param(s, steps):
    layout = Layout.from_module(torch.nn.Linear(1, 1, bias=False))
    x, state = torch.tensor([0.0]), s.init_state(torch.zeros(1), 1)
    for delta in steps:
        i = AggregationInfo(client_ids=torch.tensor([0]), num_samples=torch.tensor([1]), round=1, num_clients=1,
                            layout=layout, reference=x)
        x, state = s.aggregate((x + delta).unsqueeze(0), i, state)
    return x, state


def test_fedadam_two_steps_match_hand_computation():
    s = ServerOptimizer(optimizer="adam", server_lr=1.0, beta1=0.9, beta2=0.99, tau=0.1)
    x1, state = _one_param(s, [1.0])
    # m = 0.1, v = 0.99 * 0.01 + 0.01 * 1 = 0.0199, x = 0.1 / (sqrt(0.0199) + 0.1)
    assert x1.item() == pytest.approx(0.1 / (math.sqrt(0.0199) + 0.1), rel=1e-6)
    x2, state = _one_param(s, [1.0, 0.05])
    # m = 0.9 * 0.1 + 0.1 * 0.05 = 0.095 ; v = 0.99 * 0.0199 + 0.01 * 0.0025 = 0.019726
    assert state["m"].item() == pytest.approx(0.095, rel=1e-6)
    assert state["v"].item() == pytest.approx(0.019726, rel=1e-5)
    assert x2.item() == pytest.approx(x1.item() + 0.095 / (math.sqrt(0.019726) + 0.1), rel=1e-5)


def test_fedyogi_second_moment_moves_additively():
    s = ServerOptimizer(optimizer="yogi", server_lr=1.0, beta1=0.9, beta2=0.99, tau=0.1)
    x1, state = _one_param(s, [1.0])
    # v = 0.01 - 0.01 * 1 * sign(0.01 - 1) = 0.02
    assert state["v"].item() == pytest.approx(0.02, rel=1e-6)
    assert x1.item() == pytest.approx(0.1 / (math.sqrt(0.02) + 0.1), rel=1e-6)
    _, state = _one_param(s, [1.0, 0.05])
    # v > delta^2 now: v = 0.02 - 0.01 * 0.0025 = 0.019975 (Adam would give 0.019826)
    assert state["v"].item() == pytest.approx(0.019975, rel=1e-5)


def test_bias_correction_scales_later_steps():
    plain = ServerOptimizer(optimizer="adam", server_lr=1.0, tau=0.1)
    corrected = ServerOptimizer(optimizer="adam", server_lr=1.0, tau=0.1, bias_correction=True)
    a1, _ = _one_param(plain, [1.0])
    b1, _ = _one_param(corrected, [1.0])
    assert a1.item() == pytest.approx(b1.item())  # sqrt(1 - 0.99) / (1 - 0.9) = 1 at step 1
    a2, _ = _one_param(plain, [1.0, 0.05])
    b2, _ = _one_param(corrected, [1.0, 0.05])
    factor = math.sqrt(1 - 0.99 ** 2) / (1 - 0.9 ** 2)
    assert (b2 - b1).item() == pytest.approx(factor * (a2 - a1).item(), rel=1e-5)


def test_state_is_data_and_resumes_identically():
    s = ServerOptimizer(optimizer="yogi", server_lr=0.5, tau=0.01)
    x_all, _ = _one_param(s, [0.3, -0.2, 0.1])
    _, mid = _one_param(s, [0.3, -0.2])
    reloaded = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in mid.items()}
    layout = Layout.from_module(torch.nn.Linear(1, 1, bias=False))
    x_mid, _ = _one_param(s, [0.3, -0.2])
    i = AggregationInfo(client_ids=torch.tensor([0]), num_samples=torch.tensor([1]), round=3, num_clients=1,
                        layout=layout, reference=x_mid)
    x_resumed, _ = s.aggregate((x_mid + 0.1).unsqueeze(0), i, reloaded)
    assert torch.equal(x_resumed, x_all)


@pytest.mark.parametrize("cfg, field", [
    ({"_target_": "strategies.fedavg.FedAvg", "weighting": "median"}, "strategy.weighting"),
    ({"_target_": "strategies.fedavg.FedAvg", "server_lr": 0}, "strategy.server_lr"),
    ({"_target_": "strategies.fedopt.ServerOptimizer", "optimizer": "sgd"}, "strategy.optimizer"),
    ({"_target_": "strategies.fedopt.ServerOptimizer", "beta1": 1.0}, "strategy.beta1"),
    ({"_target_": "strategies.fedopt.ServerOptimizer", "tau": -1}, "strategy.tau"),
    ({"_target_": "strategies.nope.Nope"}, "strategy._target_"),
    ({"_target_": "strategies.fedavg.FedAvg", "gamma": 1}, "strategy"),
])
def test_bad_strategy_options_are_config_errors(cfg, field):
    with pytest.raises(ConfigError) as err:
        build_strategy({"name": "x", **cfg})
    assert err.value.field == field
