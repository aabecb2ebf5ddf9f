"""Robust rules on tiny stacks whose results are computed by hand, and their tolerance limits."""

import math

import pytest
import torch

from sim.errors import ConfigError
from strategies.base import AggregationInfo, build_strategy
from strategies.robust import (
    Bulyan,
    CenteredClipping,
    ClippedGossip,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MeaMed,
    TrimmedMean,
)


def info(k, f=0, reference=None, self_index=None, mixing=None):
    return AggregationInfo(
        client_ids=torch.arange(k),
        num_samples=torch.ones(k),
        round=1,
        num_clients=k,
        layout=None,  # type: ignore[arg-type]  # no rule here reads the layout
        reference=torch.zeros(2, dtype=torch.float64) if reference is None else reference,
        self_index=self_index,
        mixing_weights=mixing,
        num_byzantine=f,
    )


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def run(rule, models, **kw):
    out, _ = rule.aggregate(t(models), info(len(models), **kw), rule.init_state(t(models)[0], len(models)))
    return out.tolist()


def test_median_odd_and_even_counts():
    assert run(CoordinateMedian(), [[1, 10], [2, 30], [100, 20]]) == [2, 20]
    assert run(CoordinateMedian(), [[1], [2], [3], [10]]) == [2.5]  # numpy's median, not torch's lower one


def test_trimmed_mean_drops_f_from_each_end_per_coordinate():
    models = [[1, 5], [2, 6], [3, 7], [100, -50]]
    assert run(TrimmedMean(f=1), models) == [2.5, 5.5]  # (2 + 3) / 2 and (5 + 6) / 2
    assert run(TrimmedMean(), models, f=0) == [26.5, -8.0]  # f from the run: 0, the plain mean


def test_meamed_averages_the_n_minus_f_values_nearest_the_median():
    assert run(MeaMed(f=1), [[1, 5], [2, 6], [3, 7], [100, -50]]) == [2.0, 6.0]  # medians 2.5, 5.5
    assert run(MeaMed(f=1), [[0], [1], [2], [3], [4], [50], [60]]) == [10.0]  # median 3: drops 60


def test_meamed_keeps_the_nearest_values_when_equal_values_sit_at_one_end():
    # median 0; the four nearest are 0, 0.5, 2 and one -3 (2 is nearer than the second -3): ByzFL's -0.125
    assert run(MeaMed(f=1), [[-3], [-3], [0], [0.5], [2]]) == [-0.125]
    assert run(MeaMed(f=1), [[3], [3], [0], [-0.5], [-2]]) == [0.125]  # the mirror image
    # Bulyan's last step (n = 9, f = 1): the Krum picks are 0, -3, 0.5, -3, 0.5, -3, 40 (median 0); its five
    # nearest are 0, 0.5, 0.5 and two -3s: -1 (Flower too); a run ending at the third -3 would drop a 0.5: -1.7
    assert run(Bulyan(f=1), [[40], [-3], [0], [-3], [0.5], [50], [-3], [0.5], [0.5]]) == pytest.approx([-1.0])


def test_krum_scores_with_the_papers_and_byzfls_neighbour_counts():
    points = [[0], [1], [3], [10], [20]]  # f = 1, n = 5
    # paper: 2 nearest others; scores 0: 1+9, 1: 1+4, 3: 4+9, 10: 49+81, 20: 100+289 -> the point 1
    assert run(Krum(f=1), points) == [1.0]
    # byzfl: 3 nearest; 0: 110, 1: 86, 3: 4+9+49 = 62, 10: 230 -> the point 3
    assert run(Krum(f=1, scoring="byzfl"), points) == [3.0]
    assert run(Krum(f=1, m=2), points) == [0.5]  # the two best: 1 and 0
    assert run(Krum(f=1, m=None), points) == [3.5]  # n - f = 4 best: 1, 0, 3, 10


def test_bulyan_selects_by_repeated_krum_then_trims_around_the_median():
    # n = 7, f = 1: theta = 5 Krum picks (2; then 1; 3; 0 and 4 tie at 16, 0 first; 50 and 60 tie, 50 first),
    # the picks' median is 2 and its beta = 3 nearest are 1, 2, 3.
    assert run(Bulyan(f=1), [[0], [1], [2], [3], [4], [50], [60]]) == [2.0]


def test_geometric_median_of_points_on_a_line_is_their_median():
    out = run(GeometricMedian(eps=0.0, max_iter=100, nu=1e-7), [[0, 0], [1, 0], [2, 0], [3, 0], [100, 0]])
    assert out == pytest.approx([2.0, 0.0], abs=1e-6)


def test_geometric_median_from_the_reference_runs_max_iter_steps():
    # one step from z = 0: betas 1/1, 1/3 -> z = (1 * 1 + 3 / 3) / (1 + 1/3) = 1.5
    assert run(GeometricMedian(max_iter=1, eps=0.0, init="reference"), [[1, 0], [3, 0]]) == pytest.approx([1.5, 0])


def test_centered_clipping_clips_around_the_last_aggregate():
    rule = CenteredClipping(tau=1.0)
    models = t([[3, 4], [0, 1], [0, -1]])
    first, state = rule.aggregate(models, info(3), rule.init_state(models[0], 3))
    assert first.tolist() == pytest.approx([0.2, 0.8 / 3])  # ([0.6, 0.8] + [0, 1] + [0, -1]) / 3
    second, state = rule.aggregate(t([[10, 0.8 / 3]]), info(1), state)
    assert second.tolist() == pytest.approx([1.2, 0.8 / 3])  # one unit from the last aggregate
    from_reference, _ = CenteredClipping(tau=1.0, center="reference").aggregate(t([[6, 8]]), info(1), state)
    assert from_reference.tolist() == pytest.approx([0.6, 0.8])  # one unit from the reference 0, not the state


def test_centered_clipping_in_fl_clips_around_the_last_aggregate_update():
    # FL: round 1 from global 0, round 2 from global [1, 0]; the stack holds models, tau = 1
    rule = CenteredClipping(tau=1.0)
    state = rule.init_state(torch.zeros(2), 2)
    first, state = rule.aggregate(t([[3, 4], [3, 4]]), info(2), state)
    assert first.tolist() == pytest.approx([0.6, 0.8])  # both clipped to unit length from the zero update
    assert state["center"].tolist() == pytest.approx([0.6, 0.8])  # the aggregate update, not the model
    second, state = rule.aggregate(t([[1, 0], [1, 0]]), info(2, reference=t([1, 0])), state)
    # centre = global + last update = [1.6, 0.8]; the zero updates are 1 away: v = [1.6, 0.8] + [-0.6, -0.8]
    assert second.tolist() == pytest.approx([1.0, 0.0])
    # center=last: around the previous output model [0.6, 0.8], whatever the new global model
    old = CenteredClipping(tau=1.0, center="last")
    _, kept = old.aggregate(t([[3, 4], [3, 4]]), info(2), old.init_state(torch.zeros(2), 2))
    moved, _ = old.aggregate(t([[5, 0.8], [5, 0.8]]), info(2, reference=t([5, 0.8])), kept)
    assert moved.tolist() == pytest.approx([1.6, 0.8])


def test_clipped_gossip_fixed_and_adaptive_radius():
    models = [[0, 0], [3, 4], [0, 1], [0, -2]]  # the node's own model first; neighbour distances 5, 1, 2
    mixing = torch.tensor([0.4, 0.2, 0.2, 0.2], dtype=torch.float64)
    # tau = 1: 0.2 * ([0.6, 0.8] + [0, 1] + [0, -1])
    assert run(ClippedGossip(tau=1.0), models, self_index=0, mixing=mixing) == pytest.approx([0.12, 0.16])
    # adaptive, f = 1: tau = the second-largest distance, 2: 0.2 * ([1.2, 1.6] + [0, 1] + [0, -2])
    assert run(ClippedGossip(f=1), models, self_index=0, mixing=mixing) == pytest.approx([0.24, 0.12])
    # f = 0: nothing clipped, the plain mixing-row average
    assert run(ClippedGossip(f=0), models, self_index=0, mixing=mixing) == pytest.approx([0.6, 0.6])


def test_clipped_gossip_refuses_an_fl_server():
    with pytest.raises(ConfigError, match="mode=gossip"):
        run(ClippedGossip(tau=1.0), [[0, 0], [1, 1]])


@pytest.mark.parametrize(
    "rule,n_ok,n_refused",
    [
        (CoordinateMedian(f=2), 5, 4),
        (TrimmedMean(f=2), 5, 4),
        (MeaMed(f=2), 5, 4),
        (GeometricMedian(f=2), 5, 4),
        (CenteredClipping(f=2), 5, 4),
        (Krum(f=2), 7, 6),  # n > 2f + 2
        (Krum(f=2, scoring="byzfl"), 5, 4),  # n > 2f
        (Bulyan(f=2), 11, 10),  # n >= 4f + 3
        (ClippedGossip(f=2), 4, 3),  # n >= f + 2
    ],
)
def test_tolerance_limits(rule, n_ok, n_refused):
    rule.check_tolerance(n_ok)
    with pytest.raises(ConfigError) as refused:
        rule.check_tolerance(n_refused)
    assert refused.value.field == "strategy.f" and f"n={n_refused}" in str(refused.value)
    assert rule.max_tolerated(n_ok) == 2 and rule.max_tolerated(n_refused) == 1


def test_f_null_takes_the_runs_count_and_aggregate_refuses_too_few_models():
    rule = Krum()
    rule.check_tolerance(5, num_byzantine=1)
    with pytest.raises(ConfigError, match="Byzantine models the run declares"):
        rule.check_tolerance(4, num_byzantine=1)
    with pytest.raises(ConfigError, match="n > 2f \\+ 2"):
        run(rule, [[0], [1], [2], [3]], f=1)


def test_an_infinite_model_is_never_krums_choice_and_the_median_ignores_it():
    models = [[0, 0], [1, 1], [2, 2], [float("inf"), 0], [1, 2]]
    assert run(Krum(f=1), models) == [1.0, 2.0]  # scores (2 nearest): [1, 2]: 1 + 1; [1, 1]: 1 + 2; inf row: inf
    assert run(CoordinateMedian(f=1), models) == [1.0, 1.0]
    assert run(GeometricMedian(f=1), models) == pytest.approx(run(GeometricMedian(), [models[i] for i in (0, 1, 2, 4)]))


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("krum", "f", "abc"),
        ("krum", "f", -1),
        ("krum", "m", 0),
        ("krum", "scoring", "pape"),
        ("geometric_median", "nu", float("inf")),
        ("geometric_median", "max_iter", 0),
        ("geometric_median", "weights", "size"),
        ("centered_clipping", "center", "previous"),
        ("centered_clipping", "tau", 0),
        ("clipped_gossip", "tau", "abc"),
        ("clipped_gossip", "weights", "conservative"),
    ],
)
def test_bad_options_are_config_errors_at_construction(name, key, value):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(f"configs/strategy/{name}.yaml")
    cfg[key] = value
    with pytest.raises(ConfigError) as refused:
        build_strategy(cfg)
    assert refused.value.field == f"strategy.{key}"


def test_every_robust_config_builds_with_its_name():
    for name in ["median", "trimmed_mean", "meamed", "krum", "multi_krum", "bulyan"]:
        from omegaconf import OmegaConf

        assert build_strategy(OmegaConf.load(f"configs/strategy/{name}.yaml")).name == name


def test_mean_of_nearest_equals_a_top_k_for_every_count():
    from strategies.robust.common import mean_of_nearest

    g = torch.Generator().manual_seed(0)
    for n in range(1, 10):
        for count in range(1, n + 1):
            models = torch.randn(n, 20, generator=g, dtype=torch.float64)
            center = torch.randn(20, generator=g, dtype=torch.float64)
            nearest = torch.topk((models - center).abs(), count, dim=0, largest=False).indices
            expected = torch.gather(models, 0, nearest).mean(dim=0)
            torch.testing.assert_close(mean_of_nearest(models, center, count), expected)


# ---- an infinite input (attack=infinity) leaves clipping and NNM finite -----------------------------------
INF_STACK = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [math.inf, math.inf]])


def _info_for(models, **kw):
    from sim.layout import Layout

    layout = Layout.from_module(torch.nn.Linear(2, 1, bias=False))
    base = dict(
        client_ids=torch.arange(len(models)),
        num_samples=torch.ones(len(models)),
        round=1,
        num_clients=len(models),
        layout=layout,
        reference=torch.zeros(2),
    )
    return AggregationInfo(**{**base, **kw})


def test_nnm_keeps_honest_rows_finite_next_to_an_infinite_one():
    from strategies.preagg import NNM

    mixed, _ = NNM(f=1).apply(INF_STACK, _info_for(INF_STACK))
    assert torch.equal(mixed[:4], torch.full((4, 2), 0.5))  # each honest row: the mean of the four honest ones
    assert torch.isinf(mixed[4]).all()


def test_clipping_rules_ignore_an_infinite_input_instead_of_returning_nan():
    # centered clipping from 0 with tau=10: the honest rows are inside the radius, the infinite row moves nothing
    v, _ = CenteredClipping(f=1, tau=10.0, iterations=1).aggregate(INF_STACK, _info_for(INF_STACK), {})
    assert torch.allclose(v, torch.tensor([0.4, 0.4]))  # (0 + 1 + 0 + 1 + 0) / 5 per coordinate
    stack = INF_STACK[[0, 1, 2, 4]]
    info = _info_for(stack, self_index=0, mixing_weights=torch.full((4,), 0.25))
    merged, _ = ClippedGossip(f=1).aggregate(stack, info, {})
    assert torch.isfinite(merged).all()
