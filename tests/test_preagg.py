"""Pre-aggregators on tiny stacks computed by hand, their composition with strategies, and bad input."""

import pytest
import torch
from omegaconf import OmegaConf

from sim.errors import ConfigError
from strategies import FedAU, FedAvg
from strategies.base import AggregationInfo
from strategies.preagg import ARC, NNM, Bucketing, StaticClipping, bucket_means, build_preagg
from strategies.robust import CoordinateMedian, Krum

RUN = OmegaConf.create({"seed": 7})


def info(k, f=0, reference=None, num_samples=None, round_=1, self_index=None):
    return AggregationInfo(
        client_ids=torch.arange(10, 10 + k),
        num_samples=torch.ones(k) if num_samples is None else num_samples,
        round=round_,
        num_clients=k,
        layout=None,  # type: ignore[arg-type]  # nothing here reads the layout
        reference=torch.zeros(2, dtype=torch.float64) if reference is None else reference,
        self_index=self_index,
        num_byzantine=f,
    )


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def build(preagg, inner):
    return build_preagg(OmegaConf.create(preagg), inner, RUN)


def test_nnm_replaces_each_model_by_the_mean_of_its_n_minus_f_nearest():
    mixed, _ = NNM(f=1).apply(t([[0], [1], [10]]), info(3))
    assert mixed.tolist() == [[0.5], [0.5], [5.5]]  # {0, 1}, {1, 0}, {10, 1}
    rule = build({"name": "nnm", "f": 1}, CoordinateMedian())
    out, _ = rule.aggregate(t([[0], [1], [10]]), info(3), {})
    assert rule.name == "nnm+median" and out.tolist() == [0.5]


def test_bucket_means_follow_the_permutation():
    models = t([[1], [2], [3], [4], [5]])
    order = torch.tensor([4, 0, 2, 1, 3])
    assert bucket_means(models, order, 2).tolist() == [[3.0], [2.5], [4.0]]  # (5+1)/2, (3+2)/2, 4


def test_bucketing_is_seeded_by_run_round_and_receiver():
    step = Bucketing(s=2, seed=7)
    same = [step.permutation(10, info(10, round_=3)).tolist() for _ in range(2)]
    rounds = {tuple(step.permutation(10, info(10, round_=r)).tolist()) for r in range(1, 6)}
    nodes = {tuple(step.permutation(10, info(10, self_index=i)).tolist()) for i in range(5)}
    assert same[0] == same[1] and sorted(same[0]) == list(range(10))
    assert len(rounds) == 5 and len(nodes) == 5
    assert Bucketing(s=2, seed=8).permutation(10, info(10, round_=3)).tolist() != same[0]


def test_bucketing_hands_fedavg_the_summed_sample_counts():
    rule = build({"name": "bucketing", "s": 2}, FedAvg())
    models = t([[1, 0], [2, 0], [3, 0], [4, 0]])
    out, _ = rule.aggregate(models, info(4, num_samples=torch.tensor([1.0, 1.0, 1.0, 5.0])), {})
    # whatever the buckets, FedAvg of bucket means weighted by summed counts: sum_b n_b mean_b / 8
    step = Bucketing(s=2, seed=7)
    order = step.permutation(4, info(4))
    weights = torch.tensor([1.0, 1.0, 1.0, 5.0])[order].reshape(2, 2).sum(1)
    means = models[order].reshape(2, 2, 2).mean(1)
    assert out.tolist() == pytest.approx(((weights[:, None] * means).sum(0) / 8).tolist())


def test_static_clipping_clips_the_difference_from_the_reference():
    out, _ = StaticClipping(c=1.0).apply(t([[4, 5], [1, 1.5]]), info(2, reference=t([1, 1])))
    torch.testing.assert_close(out, t([[1.6, 1.8], [1.0, 1.5]]))  # [3, 4] -> [0.6, 0.8]; [0, 0.5] kept


def test_arc_clips_the_largest_to_the_next_norm():
    models = t([[3, 4], [1, 0], [0, 2], [0, 0.5]])  # norms 5, 1, 2, 0.5
    out, _ = ARC(f=1).apply(models, info(4))  # int(2 * 1 / 4 * 3) = 1 clipped, to the norm 2
    torch.testing.assert_close(out, t([[1.2, 1.6], [1, 0], [0, 2], [0, 0.5]]))
    unchanged, _ = ARC(f=0).apply(models, info(4))
    assert torch.equal(unchanged, models)


def test_a_chain_applies_its_steps_in_order_and_names_itself():
    rule = build({"name": "chain", "steps": [{"name": "clipping", "c": 1.0}, {"name": "nnm", "f": 1}]}, Krum(f=0))
    assert rule.name == "clipping+nnm+krum"
    out, _ = rule.aggregate(t([[0, 0], [0, 0.5], [30, 40]]), info(3), {})
    # clipped: [0, 0], [0, 0.5], [0.6, 0.8]; NNM (2 nearest): [0, 0.25], [0, 0.25], [0.3, 0.65]; Krum: [0, 0.25]
    assert out.tolist() == pytest.approx([0, 0.25])


def test_the_wrapper_delegates_state_empty_rounds_and_metrics():
    inner = FedAU()
    rule = build({"name": "arc"}, inner)
    state = rule.init_state(torch.zeros(2), 4)
    assert set(state) == set(inner.init_state(torch.zeros(2), 4))
    params, state = rule.on_empty_round(info(0), state)
    assert torch.equal(params, torch.zeros(2, dtype=torch.float64))
    assert rule.round_metrics(state, None) == inner.round_metrics(state, None)


def test_tolerance_counts_the_rows_the_inner_rule_will_see():
    build({"name": "bucketing", "s": 2}, Krum(f=2)).check_tolerance(14)  # 7 buckets > 2f + 2
    with pytest.raises(ConfigError, match="n=5"):
        build({"name": "bucketing", "s": 2}, Krum(f=2)).check_tolerance(10)  # 5 buckets
    with pytest.raises(ConfigError) as refused:
        build({"name": "nnm", "f": 3}, CoordinateMedian(f=0)).check_tolerance(3)
    assert refused.value.field == "preagg.f"


@pytest.mark.parametrize(
    "preagg,field",
    [
        ({"name": "bucketing", "s": "abc"}, "preagg.s"),
        ({"name": "bucketing", "s": 0}, "preagg.s"),
        ({"name": "clipping", "c": float("inf")}, "preagg.c"),
        ({"name": "nnm", "f": -1}, "preagg.f"),
        ({"name": "arc", "f": 1.5}, "preagg.f"),
        ({"name": "nmm"}, "preagg.name"),
        ({"name": "chain", "steps": []}, "preagg.steps"),
        ({"name": "chain", "steps": [{"name": "bucketing", "q": 1}]}, "preagg.steps[0]"),
    ],
)
def test_bad_preagg_values_are_config_errors(preagg, field):
    with pytest.raises(ConfigError) as refused:
        build(preagg, FedAvg())
    assert refused.value.field == field


@pytest.mark.parametrize("option", ["nnm", "bucketing", "clipping", "arc", "arc_nnm"])
def test_every_preagg_config_file_builds(option):
    rule = build_preagg(OmegaConf.load(f"configs/preagg/{option}.yaml"), CoordinateMedian(), RUN)
    out, _ = rule.aggregate(t([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]), info(6, f=1), {})
    assert out.shape == (2,) and rule.name.endswith("+median")
