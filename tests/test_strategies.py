"""Hand-computed aggregation results on tiny tensors (Prepare / Execute / Assert)."""

import math

import pytest
import torch

from sim.errors import ConfigError
from sim.layout import Layout
from strategies import (
    MIFA,
    AggregationInfo,
    FedAU,
    FedAvg,
    FedAvgAll,
    GossipAvg,
    KnownProbability,
    ServerOptimizer,
    build_strategy,
)
from strategies.gossip import uniform_rows

LAYOUT = Layout.from_module(torch.nn.Linear(1, 1, bias=True))  # 2 entries: weight, bias


def info(reference, num_samples, round_=1):
    k = len(num_samples)
    return AggregationInfo(
        client_ids=torch.arange(k),
        num_samples=torch.tensor(num_samples),
        round=round_,
        num_clients=10,
        layout=LAYOUT,
        reference=torch.tensor(reference),
    )


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
    assert state["step"] == 2 and set(state) == {"step", "m"}  # no second moment to save


def _one_param(s, steps):
    layout = Layout.from_module(torch.nn.Linear(1, 1, bias=False))
    x, state = torch.tensor([0.0]), s.init_state(torch.zeros(1), 1)
    for delta in steps:
        i = AggregationInfo(
            client_ids=torch.tensor([0]),
            num_samples=torch.tensor([1]),
            round=1,
            num_clients=1,
            layout=layout,
            reference=x,
        )
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
    factor = math.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    assert (b2 - b1).item() == pytest.approx(factor * (a2 - a1).item(), rel=1e-5)


def test_fedyogi_keeps_v_where_it_equals_delta_squared():
    # v_0 = tau^2 = 0.25 and delta = 0.5: sign(v - delta^2) = 0, so v stays 0.25 (m = 0.05)
    s = ServerOptimizer(optimizer="yogi", server_lr=1.0, beta1=0.9, beta2=0.99, tau=0.5)
    x1, state = _one_param(s, [0.5])
    assert state["v"].item() == 0.25
    assert x1.item() == pytest.approx(0.05 / (0.5 + 0.5))


@pytest.mark.parametrize("optimizer", ["avgm", "adam", "yogi"])
@pytest.mark.parametrize("variant", ["reddi", "flower"])
def test_empty_state_starts_like_init_state(optimizer, variant):
    """The engine may hand an empty state to the first aggregate; it must mean the fresh one."""
    s = ServerOptimizer(optimizer=optimizer, server_lr=0.3, tau=0.05, variant=variant)
    x, fresh, empty = torch.tensor([0.5, -1.0]), s.init_state(torch.zeros(2), 10), {}
    for r, models in enumerate([MODELS[:2], MODELS[1:], MODELS[[0, 2]]], start=1):
        a, fresh = s.aggregate(models, info(x.tolist(), [1, 3], r), fresh)
        b, empty = s.aggregate(models, info(x.tolist(), [1, 3], r), empty)
        assert torch.equal(a, b) and fresh.keys() == empty.keys()
        x = a


def test_state_is_data_and_resumes_identically():
    s = ServerOptimizer(optimizer="yogi", server_lr=0.5, tau=0.01)
    x_all, _ = _one_param(s, [0.3, -0.2, 0.1])
    _, mid = _one_param(s, [0.3, -0.2])
    reloaded = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in mid.items()}
    layout = Layout.from_module(torch.nn.Linear(1, 1, bias=False))
    x_mid, _ = _one_param(s, [0.3, -0.2])
    i = AggregationInfo(
        client_ids=torch.tensor([0]),
        num_samples=torch.tensor([1]),
        round=3,
        num_clients=1,
        layout=layout,
        reference=x_mid,
    )
    x_resumed, _ = s.aggregate((x_mid + 0.1).unsqueeze(0), i, reloaded)
    assert torch.equal(x_resumed, x_all)


FEDAVG, FEDOPT = "strategies.fedavg.FedAvg", "strategies.fedopt.ServerOptimizer"


@pytest.mark.parametrize(
    "cfg, field, says",
    [
        ({"_target_": FEDAVG, "weighting": "median"}, "strategy.weighting", "one of samples, uniform"),
        ({"_target_": FEDAVG, "server_lr": 0}, "strategy.server_lr", "> 0 for fedavg"),
        ({"_target_": FEDOPT, "optimizer": "sgd"}, "strategy.optimizer", "one of avgm, adagrad, adam, yogi"),
        ({"_target_": FEDOPT, "weighting": "median"}, "strategy.weighting", "one of samples, uniform"),
        ({"_target_": FEDOPT, "server_lr": 0}, "strategy.server_lr", "> 0 for fedadam"),
        ({"_target_": FEDOPT, "optimizer": "avgm", "beta1": 1.0}, "strategy.beta1", "[0, 1) for fedavgm"),
        ({"_target_": FEDOPT, "beta2": 1.0}, "strategy.beta2", "[0, 1) for fedadam"),
        ({"_target_": FEDOPT, "optimizer": "yogi", "tau": -1}, "strategy.tau", "> 0 for fedyogi"),
        ({"_target_": FEDOPT, "variant": "pytorch"}, "strategy.variant", "one of reddi, flower"),
        ({"_target_": FEDOPT, "bias_correction": "yes"}, "strategy.bias_correction", "true or false"),
        (
            {"_target_": FEDOPT, "optimizer": "avgm", "bias_correction": True},
            "strategy.bias_correction",
            "false for fedavgm. Momentum SGD on the server has no second moment",
        ),
        (
            {"_target_": FEDOPT, "variant": "flower", "bias_correction": True},
            "strategy.bias_correction",
            "false with variant=flower. variant=flower already applies Flower's own correction (FedAdam)",
        ),
        ({"_target_": "strategies.nope.Nope"}, "strategy._target_", "an importable Strategy class"),
        ({"_target_": FEDAVG, "gamma": 1}, "strategy", "options that FedAvg accepts"),
    ],
)
def test_bad_strategy_options_are_config_errors(cfg, field, says):
    with pytest.raises(ConfigError) as err:
        build_strategy({"name": "x", **cfg})
    assert err.value.field == field
    assert says in str(err.value)  # the one paragraph the CLI prints names the rule and what is allowed
    if field != "strategy":
        assert err.value.value == cfg[field.split(".")[-1]]


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm"])
@pytest.mark.parametrize("variant", ["reddi", "flower"])
def test_server_optimizer_configs_take_either_variant(make_cfg, name, variant):
    strategy = build_strategy(make_cfg(f"strategy={name}", f"strategy.variant={variant}").strategy)
    assert strategy.name == name and strategy.variant == variant
    assert strategy.weighting == "samples" and strategy.bias_correction is False
    state = strategy.init_state(torch.zeros(2), 3)
    assert ("v" in state) == (name != "fedavgm")  # momentum SGD keeps no second moment
    if name != "fedavgm":  # Flower starts the second moment at 0, Reddi et al. at tau^2
        assert state["v"].tolist() == pytest.approx([0.0, 0.0] if variant == "flower" else [strategy.tau**2] * 2)


# ---- FedAU and the all-client rules over several rounds (state carries; N = 3) -----------------
def of(ids, reference, round_=1, p=None):
    """Info for the clients ``ids`` (in the order given) of N = 3."""
    return AggregationInfo(
        client_ids=torch.tensor(ids, dtype=torch.long),
        num_samples=torch.ones(len(ids)),
        round=round_,
        num_clients=3,
        layout=LAYOUT,
        reference=torch.tensor(reference),
        participation_prob=None if p is None else torch.tensor(p, dtype=torch.float64),
    )


def test_fedau_four_rounds_with_an_empty_one_and_server_lr():
    s = FedAU(server_lr=0.5)
    # round 1 from an empty state: no intervals yet, weights 1: x = 0.5/3 ([2, 0] + [0, 4])
    x, state = s.aggregate(torch.tensor([[2.0, 0.0], [0.0, 4.0]]), of([0, 1], [0.0, 0.0]), {})
    assert torch.allclose(x, torch.tensor([1 / 3, 2 / 3]))
    _, state = s.on_empty_round(of([], x.tolist(), 2), state)  # everyone's count grows
    assert state["count"].tolist() == [1.0, 1.0, 2.0]
    # round 3, clients 2 then 0: weights 1 (nothing recorded) and 1 (interval [1]); x + 0.5/3 [3, 0]
    x, state = s.aggregate(
        torch.stack([x + torch.tensor([3.0, 3.0]), x + torch.tensor([0.0, -3.0])]), of([2, 0], x.tolist(), 3), state
    )
    assert torch.allclose(x, torch.tensor([5 / 6, 2 / 3]))
    assert state["interval_sum"].tolist() == [3.0, 1.0, 3.0] and state["interval_num"].tolist() == [2.0, 1.0, 1.0]
    assert state["count"].tolist() == [0.0, 2.0, 0.0]
    # round 4, clients 2, 0, 1: weights 3, 3/2, 1 -> x + 0.5/3 (3 [1, 1] + 1.5 [2, 0] + [0, 2]) = x + [1, 5/6]
    deltas = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 2.0]])
    x, state = s.aggregate(x + deltas, of([2, 0, 1], x.tolist(), 4), state)
    assert torch.allclose(x, torch.tensor([11 / 6, 3 / 2]))
    assert FedAU.weights(state).tolist() == pytest.approx([4 / 3, 2.0, 2.0])
    # the weights' error against 1/p_n: |4/3 - 4/3|, |2 - 2|, |2 - 2.5| / 2.5 -> mean 0.2 / 3
    metrics = s.round_metrics(state, torch.tensor([0.75, 0.5, 0.4]))
    assert metrics["fedau_weight_rel_error"] == pytest.approx(0.2 / 3) and metrics["fedau_clients_estimated"] == 3


def test_fedau_metrics_before_any_interval_and_without_probabilities():
    s = FedAU()
    fresh = s.init_state(torch.zeros(2), 3)
    assert s.round_metrics(fresh, None) == {}
    metrics = s.round_metrics(fresh, torch.full((3,), 0.5))
    assert math.isnan(metrics["fedau_weight_rel_error"]) and metrics["fedau_clients_estimated"] == 0
    x, state = s.on_empty_round(of([], [1.0, 2.0]), {})  # an empty first round also starts the state
    assert x.tolist() == [1.0, 2.0] and state["count"].tolist() == [1.0, 1.0, 1.0]


def test_fedau_cutoff_one_records_every_absent_round():
    s = FedAU(cutoff=1)
    state = {}
    for r in range(1, 4):
        _, state = s.aggregate(torch.zeros(1, 2), of([0], [0.0, 0.0], r), state)
    assert state["interval_num"].tolist() == [3.0, 3.0, 3.0] and state["interval_sum"].tolist() == [3.0, 3.0, 3.0]
    assert state["count"].tolist() == [0.0, 0.0, 0.0]


def test_mifa_four_rounds_with_server_lr_and_untouched_old_state():
    s = MIFA(server_lr=0.5)
    x1, s1 = s.aggregate(torch.tensor([[2.0, 2.0]]), of([1], [0.0, 0.0]), {})  # memory row 1 = [2, 2]
    assert torch.allclose(x1, torch.tensor([1 / 3, 1 / 3]))
    x2, s2 = s.aggregate((x1 + torch.tensor([3.0, 0.0])).unsqueeze(0), of([0], x1.tolist(), 2), s1)
    assert torch.allclose(x2, torch.tensor([7 / 6, 2 / 3]))  # x1 + 0.5 * mean([3, 0], [2, 2], 0)
    assert s1["memory"][0].tolist() == [0.0, 0.0]  # the state handed in is not changed
    x3, s3 = s.on_empty_round(of([], x2.tolist(), 3), s2)  # nobody: step with the memory again
    assert torch.allclose(x3, torch.tensor([2.0, 1.0]))
    x4, _ = s.aggregate((x3 + torch.tensor([-2.0, 1.0])).unsqueeze(0), of([1], x3.tolist(), 4), s3)
    assert torch.allclose(x4, torch.tensor([13 / 6, 7 / 6]))  # row 1 replaced: mean([3, 0], [-2, 1], 0)
    x, state = s.on_empty_round(of([], [1.0, 2.0]), {})
    assert x.tolist() == [1.0, 2.0] and state == {}


def test_fedavg_all_and_known_probability_with_server_lr():
    models, i = torch.tensor([[3.0, 1.0], [1.0, 5.0]]), of([2, 0], [1.0, 1.0], p=[0.25, 0.5])
    x, _ = FedAvgAll(server_lr=0.3).aggregate(models, i, {})
    assert torch.allclose(x, torch.tensor([1.2, 1.4]))  # x + 0.3/3 ([2, 0] + [0, 4])
    x, _ = KnownProbability(server_lr=0.3).aggregate(models, i, {})
    assert torch.allclose(x, torch.tensor([1.8, 1.8]))  # x + 0.3/3 (4 [2, 0] + 2 [0, 4])
    with pytest.raises(ConfigError) as err:
        KnownProbability().aggregate(models, of([2, 0], [1.0, 1.0]), {})
    assert err.value.field == "strategy.name" and err.value.value == "known_probability"


def test_gossip_avg_merges_all_nodes_by_hand():
    received = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.0, 1.0]]).to_sparse()
    models = torch.tensor([[1.0, 0.0], [2.0, 4.0], [4.0, 8.0]])
    assert torch.allclose(
        uniform_rows(received).to_dense(), torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]])
    )
    mixed = GossipAvg().aggregate_all(received, models, LAYOUT)
    assert torch.allclose(mixed, torch.tensor([[1.5, 2.0], [2.25, 4.0], [4.0, 8.0]]))
    uniform = GossipAvg(weights="uniform").aggregate_all(received, models, LAYOUT)
    assert torch.allclose(uniform, torch.tensor([[1.5, 2.0], [7 / 3, 4.0], [4.0, 8.0]]))
