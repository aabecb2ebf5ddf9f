"""Exact numbers for the corners of the aggregation rules that tests/test_strategies.py and
tests/test_soups.py leave open: Python-API defaults, weighting options, ties, buffers and the
random streams (Prepare / Execute / Assert, every expected value computed by hand)."""

import math

import pytest
import torch

from sim.errors import ConfigError
from sim.layout import Layout
from sim.seeding import torch_generator
from strategies import (
    MIFA,
    AggregationInfo,
    FedAU,
    FedAvgAll,
    GossipAvg,
    KnownProbability,
    ServerOptimizer,
    VarianceCorrected,
)
from strategies.soups import FisherMerge, GreedySoup, Interpolate, UniformSoup
from strategies.task_merging import TaskArithmetic, disjoint_merge

ONE = Layout.from_module(torch.nn.Linear(1, 1, bias=False))  # a single trainable entry
TWO = Layout.from_module(torch.nn.Linear(1, 1))  # weight, bias


def info(reference, num_samples=None, layout=ONE, **kw):
    reference = torch.tensor(reference)
    k = kw.pop("k", len(num_samples) if num_samples else 1)
    num_samples = num_samples or [1] * k
    defaults = dict(
        client_ids=torch.arange(k),
        num_samples=torch.tensor(num_samples),
        round=1,
        num_clients=kw.pop("num_clients", 2),
        layout=layout,
        reference=reference,
    )
    return AggregationInfo(**{**defaults, **kw})


def test_known_probability_default_server_lr_is_one():
    # x = 0 + (1 / N) * (1 / p) * 1 with N = 2, p = 0.5
    x, _ = KnownProbability().aggregate(torch.tensor([[1.0]]), info([0.0], participation_prob=torch.tensor([0.5])), {})
    assert x.tolist() == [1.0]


def test_mifa_without_state_starts_from_a_zero_memory_of_every_client():
    i = info([0.0], [1], num_clients=3, client_ids=torch.tensor([1]))
    x, state = MIFA().aggregate(torch.tensor([[3.0]]), i, {})
    assert x.tolist() == [1.0]  # mean over 3 memory rows [0, 3, 0]
    assert state["memory"].tolist() == [[0.0], [3.0], [0.0]]


def test_mifa_memory_keeps_the_parameters_dtype():
    assert MIFA().init_state(torch.zeros(3, dtype=torch.float64), 2)["memory"].dtype == torch.float64


def test_fedadam_python_defaults_by_hand():
    # server_lr 0.1, beta1 0.9, beta2 0.99, tau 1e-3, reddi: v0 = tau^2; one model 1 ahead of x = 0
    x, state = ServerOptimizer("adam").aggregate(torch.tensor([[1.0]]), info([0.0]), {})
    v = 0.99 * 1e-6 + 0.01 * 1.0
    assert state["v"].item() == pytest.approx(v)
    assert x.item() == pytest.approx(0.1 * 0.1 / (math.sqrt(v) + 1e-3), rel=1e-6)


@pytest.mark.parametrize("weighting, expected", [("samples", 2.0), ("uniform", 1.5)])
def test_fedavgm_weighting_option_is_used(weighting, expected):
    # models 0 and 3 with 1 and 2 rows: the sample-weighted mean is 2, the plain mean 1.5; momentum starts at 0
    s = ServerOptimizer("avgm", server_lr=1.0, beta1=0.5, weighting=weighting)
    x, state = s.aggregate(torch.tensor([[0.0], [3.0]]), info([0.0], [1, 2]), s.init_state(torch.zeros(1), 2))
    assert x.item() == pytest.approx(expected) and state["m"].item() == pytest.approx(expected)


def test_server_optimizer_labels_and_state_keys():
    assert [ServerOptimizer(o).name for o in ("avgm", "adam", "yogi")] == ["fedavgm", "fedadam", "fedyogi"]
    assert set(ServerOptimizer("avgm").init_state(torch.zeros(2), 3)) == {"step", "m"}
    assert set(ServerOptimizer("yogi").init_state(torch.zeros(2), 3)) == {"step", "m", "v"}


def test_interpolate_moves_from_the_reference():
    models = torch.tensor([[4.0, 4.0], [4.0, 4.0]])
    x, _ = Interpolate(alpha=0.25).aggregate(models, info([2.0, 2.0], [1, 1], TWO), {})
    assert x.tolist() == [2.5, 2.5]  # 0.75 * 2 + 0.25 * 4


def test_interpolate_with_alpha_one_is_the_uniform_soup():
    models, i = torch.tensor([[1.0, 2.0], [3.0, 8.0]]), info([9.0, 9.0], [1, 1], TWO)
    assert torch.equal(Interpolate(alpha=1.0).aggregate(models, i, {})[0], UniformSoup().aggregate(models, i, {})[0])


def test_fisher_merge_defaults_floor_only_the_target():
    # defaults: uniform l_i, normalized by each Fisher's norm (0 -> 1, 1e-3), target row 0 floored to 1e-6:
    # weights 0.5 * 1e-6 and (0.5 / 1e-3) * 1e-3 = 0.5 -> merged = 0.5 / (0.5 + 5e-7)
    models, fisher = torch.tensor([[0.0], [1.0]], dtype=torch.float64), torch.tensor([[0.0], [1e-3]])
    x, _ = FisherMerge().aggregate(models, info([0.0], [1, 1], extras={"fisher": fisher}), {})
    assert x.item() == pytest.approx(1 / (1 + 1e-6), rel=1e-12)


def test_greedy_soup_ranks_a_nan_score_last():
    # scores [nan, 0, -1]: order 1, 2, 0; each addition scores -0.5 < 0, so only model 1 is kept
    def validate(p):
        return math.nan if p[0] == 0 else -abs(p[0].item() - 1)

    models = torch.tensor([[0.0], [1.0], [2.0]])
    x, state = GreedySoup().aggregate(models, info([0.0], [1, 1, 1], validate=validate), {})
    assert x.tolist() == [1.0] and state["kept"].tolist() == [1] and state["score"] == 0.0


def test_ties_sign_election_tie_goes_to_plus():
    assert disjoint_merge(torch.tensor([[1.0], [-1.0]]), torch.tensor([0.5, 0.5])).tolist() == [1.0]


def test_task_arithmetic_averages_buffers_instead_of_scaling_them():
    layout = Layout.from_module(torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.BatchNorm1d(1)))
    size = layout.size
    models = torch.stack([torch.ones(size), torch.full((size,), 3.0)])
    x, _ = TaskArithmetic(scaling=2.0).aggregate(models, info([0.0] * size, [1, 1], layout), {})
    params = layout.trainable_mask()
    assert 0 < int(params.sum()) < size
    assert x[params].tolist() == [4.0] * int(params.sum())  # 0 + 2 * mean delta 2
    assert x[~params].tolist() == [2.0] * int((~params).sum())  # buffers: the plain mean


def _dare_models():
    return torch.tensor([[1.0, 2.0], [3.0, -4.0], [0.5, 6.0]]), torch.tensor([0.25, -1.0])


def _dare_expected(models, ref, node):
    """The uniform-weight DARE merge at density 0.5: each delta entry is kept where the float64 uniform
    draw of stream (seed 7, "dare", round 3, node) is below 0.5, and then doubled."""
    tau = (models - ref).to(torch.float64)
    kept = torch.rand(tau.shape, generator=torch_generator(7, "dare", 3, node), dtype=torch.float64) < 0.5
    assert 0 < int(kept.sum()) < kept.numel()  # the stream drops some entries and keeps others
    return ref.double() + torch.where(kept, 2 * tau, 0.0).mean(0)


def test_dare_server_draws_from_the_node_minus_one_stream():
    models, ref = _dare_models()
    x, _ = TaskArithmetic(method="dare", density=0.5, seed=7).aggregate(
        models, info(ref.tolist(), [1, 1, 1], TWO, round=3), {}
    )
    assert torch.allclose(x.double(), _dare_expected(models, ref, -1), atol=1e-6)


def test_dare_gossip_node_draws_from_its_own_client_id_stream():
    models, ref = _dare_models()
    strategy = TaskArithmetic(method="dare", density=0.5, seed=7)

    def merged(self_index):
        i = info(ref.tolist(), [1, 1, 1], TWO, round=3, client_ids=torch.tensor([2, 5, 8]), self_index=self_index)
        return strategy.aggregate(models, i, {})[0]

    for self_index, node in [(1, 5), (2, 8)]:
        assert torch.allclose(merged(self_index).double(), _dare_expected(models, ref, node), atol=1e-6)
    assert not torch.equal(merged(1), merged(2))


def test_fedau_metrics_count_only_clients_with_an_interval():
    # weights [2, 1 (none recorded), 4] against 1/p = [2, 2, 4]: the recorded ones are exact
    state = {
        "count": torch.zeros(3, dtype=torch.float64),
        "interval_sum": torch.tensor([2.0, 0.0, 8.0], dtype=torch.float64),
        "interval_num": torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64),
    }
    assert FedAU().round_metrics(state, torch.tensor([0.5, 0.5, 0.25])) == {
        "fedau_weight_rel_error": 0.0,
        "fedau_clients_estimated": 2,
    }
    fresh = FedAU().round_metrics(FedAU().init_state(torch.zeros(2), 3), torch.tensor([0.5, 0.5, 0.25]))
    assert math.isnan(fresh["fedau_weight_rel_error"]) and fresh["fedau_clients_estimated"] == 0


def test_fedau_empty_round_without_state_starts_the_counts():
    x, state = FedAU().on_empty_round(
        info([1.0, 2.0], num_clients=2, client_ids=torch.tensor([], dtype=torch.long), k=0), {}
    )
    assert x.tolist() == [1.0, 2.0] and state["count"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("weights", ["conservative", "uniform", "mixing"])
def test_gossip_node_that_received_nothing_keeps_its_model(weights):
    # nodes 0 and 1 swap models, node 2 (the last, so no index names it off the diagonal) hears nobody
    received = torch.sparse_coo_tensor(
        torch.tensor([[0, 0, 1, 1, 2], [0, 1, 0, 1, 2]]),
        torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0]),
        (3, 3),
        check_invariants=True,
    )
    merged = GossipAvg(weights=weights, c=0.5).aggregate_all(received, torch.tensor([[1.0], [3.0], [7.0]]), ONE)
    assert merged.tolist() == [[2.0], [2.0], [7.0]]


@pytest.mark.parametrize("make", [FedAvgAll, KnownProbability, MIFA, FedAU])
def test_bad_server_lr_names_its_config_field(make):
    # the field is what the CLI's error paragraph tells the user to fix
    with pytest.raises(ConfigError) as err:
        make(server_lr=0)
    assert err.value.field == "strategy.server_lr"


def test_dare_default_seed_is_zero():
    models, ref = _dare_models()
    i = info(ref.tolist(), [1, 1, 1], TWO, round=3)
    default = TaskArithmetic(method="dare", density=0.5).aggregate(models, i, {})[0]
    assert torch.equal(default, TaskArithmetic(method="dare", density=0.5, seed=0).aggregate(models, i, {})[0])
    assert not torch.equal(default, TaskArithmetic(method="dare", density=0.5, seed=1).aggregate(models, i, {})[0])


def test_bad_cutoff_names_its_config_field():
    with pytest.raises(ConfigError) as err:
        FedAU(cutoff=0)
    assert err.value.field == "strategy.cutoff"


def test_gossip_avg_accepts_c_one_and_names_a_bad_c():
    # c = 1: a conservative node keeps its own model
    models = torch.tensor([[1.0], [5.0]])
    merged, _ = GossipAvg(weights="conservative", c=1.0).aggregate(models, info([1.0], [1, 1], self_index=0), {})
    assert merged.tolist() == [1.0]
    with pytest.raises(ConfigError) as err:
        GossipAvg(c=1.5)
    assert err.value.field == "strategy.c"


@pytest.mark.parametrize(
    "make, field, value",
    [
        (lambda: GossipAvg(weights="mix"), "strategy.weights", "mix"),
        (lambda: VarianceCorrected(variant="refrence"), "strategy.variant", "refrence"),
        (lambda: VarianceCorrected(correct="bias"), "strategy.correct", "bias"),
        (lambda: VarianceCorrected(weights="mix"), "strategy.weights", "mix"),
    ],
)
def test_bad_gossip_choices_name_their_field_and_value(make, field, value):
    with pytest.raises(ConfigError) as err:
        make()
    assert (err.value.field, err.value.value) == (field, value)
