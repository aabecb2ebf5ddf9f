"""FedAU and the other all-client rules: hand-computed numbers and the 1/p_n estimate."""

import numpy as np
import pytest
import torch

from sim.layout import Layout
from sim.participation import build_participation
from strategies import MIFA, AggregationInfo, FedAU, FedAvgAll, KnownProbability

LAYOUT = Layout.from_module(torch.nn.Linear(1, 1))


def info(ids, reference, p=None, n=4):
    ids = torch.tensor(ids, dtype=torch.long)
    return AggregationInfo(
        client_ids=ids,
        num_samples=torch.ones(len(ids), dtype=torch.long),
        round=1,
        num_clients=n,
        layout=LAYOUT,
        reference=torch.tensor(reference),
        participation_prob=None if p is None else torch.tensor(p, dtype=torch.float64),
    )


def test_fedau_hand_computed_step_and_state():
    s = FedAU()
    state = s.init_state(torch.zeros(2), 4)
    state["interval_sum"][0], state["interval_num"][0] = 6.0, 2.0  # client 0 recorded intervals 2 and 4
    state["count"][:] = torch.tensor([1.0, 3.0, 0.0, 2.0])
    models = torch.tensor([[3.0, 1.0], [1.0, 5.0]])  # clients 0 and 2
    new, state = s.aggregate(models, info([0, 2], [1.0, 1.0]), state)
    # deltas [2, 0] (w=3) and [0, 4] (w=1, nothing recorded yet): x + 1/4 * ([6, 0] + [0, 4])
    assert torch.allclose(new, torch.tensor([2.5, 2.0]))
    assert state["interval_sum"].tolist() == [8.0, 0.0, 1.0, 0.0]  # 6 + (1 + 1), 0 + (0 + 1)
    assert state["interval_num"].tolist() == [3.0, 0.0, 1.0, 0.0]
    assert state["count"].tolist() == [0.0, 4.0, 0.0, 3.0]
    assert FedAU.weights(state).tolist() == [8 / 3, 1.0, 1.0, 1.0]


def test_fedau_cutoff_caps_intervals():
    s = FedAU(cutoff=5)
    state = s.init_state(torch.zeros(2), 2)
    for _ in range(12):  # client 1 never takes part; client 0 every round
        _, state = s.aggregate(torch.zeros(1, 2), info([0], [0.0, 0.0], n=2), state)
    assert state["interval_num"][1] == 2 and state["interval_sum"][1] == 10  # two intervals of K=5
    assert state["count"][1] == 2
    assert FedAU.weights(state).tolist() == [1.0, 5.0]


def test_fedau_counts_empty_rounds():
    s = FedAU()
    state = s.init_state(torch.zeros(2), 2)
    new, state = s.on_empty_round(info([], [1.0, 2.0], n=2), state)
    assert new.tolist() == [1.0, 2.0] and state["count"].tolist() == [1.0, 1.0]


def test_fedau_weights_approach_inverse_probability_under_bernoulli():
    p = np.array([0.5, 0.25, 0.1, 0.05])
    part = build_participation({"name": "bernoulli", "probability": "constant", "p": 0.5}, 4, seed=0)
    part.pattern.__init__(p, 0)
    s = FedAU()
    state = s.init_state(torch.zeros(2), 4)
    for r in range(1, 5001):
        ids = part.sample(r).tolist()
        if ids:
            _, state = s.aggregate(torch.zeros(len(ids), 2), info(ids, [0.0, 0.0]), state)
        else:
            _, state = s.on_empty_round(info([], [0.0, 0.0]), state)
    w = FedAU.weights(state).numpy()
    assert np.allclose(w, 1 / p, rtol=0.15), w  # geometric intervals: the mean estimates 1/p_n
    metrics = s.round_metrics(state, torch.tensor(p))
    assert metrics["fedau_weight_rel_error"] < 0.1 and metrics["fedau_clients_estimated"] == 4


def test_fedavg_all_and_known_probability_divide_by_all_clients():
    models = torch.tensor([[3.0, 1.0], [1.0, 5.0]])
    i = info([0, 2], [1.0, 1.0], p=[0.5, 0.25])
    all_new, _ = FedAvgAll().aggregate(models, i, {})
    assert torch.allclose(all_new, torch.tensor([1.5, 2.0]))  # x + 1/4 ([2, 0] + [0, 4])
    known, _ = KnownProbability(server_lr=0.5).aggregate(models, i, {})
    # x + 0.5/4 (2 [2, 0] + 4 [0, 4]) = [1.5, 3]
    assert torch.allclose(known, torch.tensor([1.5, 3.0]))


def test_mifa_remembers_latest_updates():
    s = MIFA()
    state = s.init_state(torch.zeros(2), 4)
    x1, state = s.aggregate(torch.tensor([[3.0, 1.0]]), info([0], [1.0, 1.0]), state)
    assert torch.allclose(x1, torch.tensor([1.5, 1.0]))  # memory [[2, 0], 0, 0, 0] / 4
    x2, state = s.aggregate(torch.tensor([[1.5, 5.0]]), info([1], x1.tolist()), state)
    # memory [[2, 0], [0, 4], 0, 0]: x1 + [0.5, 1]
    assert torch.allclose(x2, torch.tensor([2.0, 2.0]))
    x3, _ = s.on_empty_round(info([], x2.tolist()), state)
    assert torch.allclose(x3, torch.tensor([2.5, 3.0]))


@pytest.mark.parametrize("cutoff", [0, -1, 2.5])
def test_bad_cutoff(cutoff):
    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy.cutoff"):
        FedAU(cutoff=cutoff)
