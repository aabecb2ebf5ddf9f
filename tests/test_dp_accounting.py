"""The accountant against its references, and the sensitivity each participation gives the DP layer.

Poisson sampling (add/remove neighbours) must give Opacus's ``RDPAccountant`` number; fixed-size
sampling without replacement (replace-one neighbours) dp_accounting's ``RdpAccountant(REPLACE_ONE)``
number, pinned here (and compared live where dp_accounting is installed). The sensitivities the
wrappers account for (2 C / m for m of N, C for a Poisson mean, 2 C for a local release) are checked
on the aggregate itself: the largest move one client can cause.
"""

import math

import pytest
import torch

from sim.errors import ConfigError
from sim.layout import Layout
from sim.privacy import (
    DP_ACCOUNTING_ORDERS,
    OPACUS_ORDERS,
    POISSON,
    WITHOUT_REPLACEMENT,
    epsilon_after,
    noise_for_target,
    search_orders,
)
from strategies import build_strategy
from strategies.base import AggregationInfo
from strategies.dp import CentralDP, LocalDP, build_dp
from strategies.fedavg import FedAvg

#: dp_accounting 0.6.0, RdpAccountant(neighboring_relation=REPLACE_ONE) with its default orders,
#: SelfComposedDpEvent(SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(sigma)), T).get_epsilon(delta):
#: (N, m, sigma, T, delta) -> epsilon
DP_ACCOUNTING_WOR = {
    (50, 10, 0.5, 10, 1e-5): 26.930909393784344,
    (50, 10, 1.0, 10, 1e-5): 8.201383694086832,
    (100, 1, 10.0, 1, 1e-12): 0.05129663087368121,  # best order 512: the Stirling-bounded terms
}
WOR_CASES = [(50, 10, 0.5, 10, 1e-5), (50, 10, 1.0, 10, 1e-5), (100, 50, 0.6, 30, 1e-5), (1000, 10, 2.0, 500, 1e-6),
             (20, 19, 0.7, 3, 1e-4), (200, 1, 5.0, 1, 1e-5)]  # fmt: skip


def _opacus_epsilon(q: float, z: float, rounds: int, delta: float = 1e-5) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(z, q, rounds)]
    return accountant.get_epsilon(delta=delta)


def test_poisson_orders_are_opacus_defaults():
    from opacus.accountants import RDPAccountant

    assert list(OPACUS_ORDERS) == list(RDPAccountant.DEFAULT_ALPHAS)


@pytest.mark.parametrize(
    "q,z,rounds", [(1.0, 2.0, 50), (0.1, 5.0, 1), (0.5, 1.0, 50), (0.01, 1.1, 1000), (0.1, 0.7, 100)]
)
def test_poisson_epsilon_is_opacus_rdp_accountants(q, z, rounds):
    """The first two differed by +2.8% and -19.5% when the orders were not Opacus's."""
    assert epsilon_after(rounds, q, z, 1e-5) == pytest.approx(_opacus_epsilon(q, z, rounds), rel=1e-9)


@pytest.mark.parametrize("case", sorted(DP_ACCOUNTING_WOR))
def test_without_replacement_epsilon_is_dp_accountings_pinned(case):
    n, m, sigma, rounds, delta = case
    got = epsilon_after(rounds, m / n, sigma, delta, WITHOUT_REPLACEMENT)
    assert got == pytest.approx(DP_ACCOUNTING_WOR[case], rel=1e-9)


@pytest.mark.parametrize("case", WOR_CASES)
def test_without_replacement_epsilon_is_dp_accountings(case):
    rdp = pytest.importorskip("dp_accounting.rdp")
    from dp_accounting import dp_event

    n, m, sigma, rounds, delta = case
    accountant = rdp.RdpAccountant(neighboring_relation=rdp.rdp_privacy_accountant.NeighborRel.REPLACE_ONE)
    event = dp_event.SampledWithoutReplacementDpEvent(n, m, dp_event.GaussianDpEvent(sigma))
    accountant.compose(dp_event.SelfComposedDpEvent(event, rounds))

    assert list(DP_ACCOUNTING_ORDERS) == list(rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
    got = epsilon_after(rounds, m / n, sigma, delta, WITHOUT_REPLACEMENT)
    assert got == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)


@pytest.mark.parametrize("sampling", [POISSON, WITHOUT_REPLACEMENT])
def test_target_search_meets_the_target_at_the_reported_orders(sampling):
    assert set(search_orders(sampling)) <= set(OPACUS_ORDERS if sampling == POISSON else DP_ACCOUNTING_ORDERS)
    sigma = noise_for_target(2.0, 1e-5, 0.2, 20, sampling)
    assert epsilon_after(20, 0.2, sigma, 1e-5, sampling) <= 2.0
    assert epsilon_after(20, 0.2, sigma * 0.98, 1e-5, sampling) > 2.0


def _epsilon_after_rounds(dp, rounds: int) -> float:
    """dp_epsilon in metrics.csv after ``rounds`` releases, through the wrapper's own state."""
    state = dp.init_state(torch.zeros(1), 10)
    for _ in range(rounds):
        state = {**state, **dp._account(dp._with_defaults(state)[1])}
    return dp.round_metrics(state, None)["dp_epsilon"]


def _central(make_cfg, *overrides):
    cfg = make_cfg("dp=central_fixed", "strategy.weighting=uniform", *overrides)
    dp = build_dp(cfg.dp, build_strategy(cfg.strategy), cfg)
    assert isinstance(dp, CentralDP)
    return dp


def test_uniform_participation_is_accounted_replace_one_without_replacement(make_cfg):
    """Held out by the review: 50 clients, 10 a round, z = 1, 10 rounds reported 6.0 (Poisson at z)."""
    dp = _central(make_cfg, "num_clients=50", "participation.clients_per_round=10", "dp.noise_multiplier=1.0")
    assert dp.accounting.accountant_multiplier == 0.5 and dp.accounting.sampling == WITHOUT_REPLACEMENT
    assert _epsilon_after_rounds(dp, 10) == pytest.approx(26.930909393784344, rel=1e-9)
    described = dp.accounting.describe()
    assert described["neighbouring"] == "replace one client's data" and "without replacement" in described["analysis"]
    no_amplification = _central(make_cfg, "num_clients=50", "participation.clients_per_round=10",
                                "dp.sampling_amplification=false")  # fmt: skip
    assert no_amplification.accounting.sample_rate == 1.0 and no_amplification.accounting.accountant_multiplier == 0.5
    assert "caveat" not in described
    cfg = make_cfg("dp=central_fixed")  # FedAvg weighted by samples: the bound is the uniform mean's, and says so
    assert "fedavg is not one" in build_dp(cfg.dp, build_strategy(cfg.strategy), cfg).accounting.describe()["caveat"]


def test_bernoulli_participation_is_accounted_at_the_worst_mean_move(make_cfg):
    dp = _central(make_cfg, "num_clients=40", "participation=bernoulli", "participation.probability=constant",
                  "participation.p=0.25", "dp.noise_multiplier=3.0")  # fmt: skip

    assert dp.accounting.sampling == POISSON and dp.accounting.sample_rate == 0.25
    assert dp.accounting.accountant_multiplier == pytest.approx(3.0 / 10)  # std 3 C / 10 over sensitivity C
    assert dp.accounting.describe()["neighbouring"] == "add/remove one client"


def _mean_move(models_a: torch.Tensor, models_b: torch.Tensor, clip: float) -> float:
    """How far the uniform mean of the clipped updates moves from one set of participants to the other."""

    def mean(models):
        layout = Layout.from_module(torch.nn.Linear(models.shape[1], 1, bias=False))
        info = AggregationInfo(torch.arange(len(models)), torch.ones(len(models)), 1, 10, layout, torch.zeros(2))
        dp = CentralDP(FedAvg(weighting="uniform"), label="dp", seed=0, accounting=build_accounting(),
                       clipping_norm=clip, num_sampled_clients=len(models))  # fmt: skip
        return dp.aggregate(models.double(), info, dp.init_state(torch.zeros(2), 10))[0]

    return float((mean(models_a) - mean(models_b)).norm())


def build_accounting():
    from strategies.dp import Accounting

    return Accounting(sample_rate=1.0, noise_multiplier=0.0, delta=1e-5)


def test_the_sensitivities_accounted_are_the_largest_moves():
    clip = 0.5
    # replace-one among m = 4: one update flipped to the opposite direction moves the mean by 2 C / m
    others = torch.tensor([[0.1, 0.0], [0.0, 0.2], [3.0, 4.0]])
    a = torch.cat([others, torch.tensor([[7.0, 0.0]])])
    b = torch.cat([others, torch.tensor([[-7.0, 0.0]])])
    assert _mean_move(a, b, clip) == pytest.approx(2 * clip / 4, rel=1e-12)
    # Poisson, add one: {x} against {x, y} with y = -x moves the mean by C (= m C / m), not C / m
    x = torch.tensor([[9.0, 0.0]])
    assert _mean_move(x, torch.cat([x, -x]), clip) == pytest.approx(clip, rel=1e-12)


def test_an_empty_round_releases_the_model_with_the_same_noise(make_cfg):
    """Poisson sampling's analysis covers the round that sampled nobody only if its output is noised too."""
    dp = _central(make_cfg, "num_clients=40", "participation=bernoulli", "participation.probability=constant",
                  "participation.p=0.25", "dp.noise_multiplier=2.0", "dp.clipping_norm=0.5")  # fmt: skip
    p = 20000
    layout = Layout.from_module(torch.nn.Linear(p, 1, bias=False))
    info = AggregationInfo(torch.arange(0), torch.ones(0), 3, 40, layout, torch.zeros(p, dtype=torch.float64))
    params, state = dp.on_empty_round(info, dp.init_state(info.reference, 40))

    assert float(params.std()) == pytest.approx(2.0 * 0.5 / 10, rel=0.03)
    assert dp.round_metrics(state, None)["dp_epsilon"] == pytest.approx(epsilon_after(1, 0.25, 0.2, 1e-5), rel=1e-9)


def test_local_release_is_accounted_at_twice_the_clipping_norm(make_cfg):
    """The review: sensitivity 1 at clipping norm 1 reported 0.82 after one round instead of 1.75."""
    cfg = make_cfg("dp=local", "dp.sensitivity=1.0")
    dp = build_dp(cfg.dp, build_strategy(cfg.strategy), cfg)
    assert isinstance(dp, LocalDP)
    z = math.sqrt(2 * math.log(1.25 / 1e-5))  # std / C at sensitivity 1, epsilon 1
    assert dp.accounting.accountant_multiplier == pytest.approx(z / 2, rel=1e-12)
    assert epsilon_after(1, 1.0, z / 2, 1e-5) == pytest.approx(1.754, abs=1e-3)

    default = make_cfg("dp=local")
    assert default.dp.sensitivity == 2 * default.dp.clipping_norm  # configs/dp/local.yaml: the true sensitivity
    dp = build_dp(default.dp, build_strategy(default.strategy), default)
    assert dp.accounting.accountant_multiplier == pytest.approx(z, rel=1e-12)  # one release within epsilon = 1
    assert epsilon_after(1, 1.0, z, 1e-5) <= 1.0
    assert dp.round_metrics(dp.init_state(torch.zeros(1), 10), None)["dp_clip_norm"] == 1.0  # fixed, still reported


def test_flowers_adaptive_variant_has_no_finite_epsilon_and_poisson_adaptive_is_refused(make_cfg):
    cfg = make_cfg("dp=central_adaptive", "dp.variant=flower")
    dp = build_dp(cfg.dp, build_strategy(cfg.strategy), cfg)
    assert dp.accounting.accountant_multiplier == 0 and _epsilon_after_rounds(dp, 1) == math.inf

    with pytest.raises(ConfigError) as info:
        cfg = make_cfg("dp=central_adaptive", "dp.variant=flower", "dp.target_epsilon=5")
        build_dp(cfg.dp, build_strategy(cfg.strategy), cfg)
    assert info.value.field == "dp.target_epsilon"
    with pytest.raises(ConfigError) as info:
        cfg = make_cfg(
            "dp=central_adaptive",
            "participation=bernoulli",
            "participation.probability=constant",
            "participation.p=0.25",
        )
        build_dp(cfg.dp, build_strategy(cfg.strategy), cfg)
    assert info.value.field == "participation"


def test_a_checkpoint_from_another_order_grid_is_recounted_from_its_rounds(make_cfg):
    """Checkpoints written before the grids became Opacus's / dp_accounting's carry 73 orders: every round adds
    the same RDP, so the total is rebuilt from the round count."""
    dp = _central(make_cfg, "num_clients=50", "participation.clients_per_round=10", "dp.noise_multiplier=1.0")
    old = {**dp.init_state(torch.zeros(1), 50), "dp_rounds": 10, "dp_rdp": torch.full((73,), 0.01, dtype=torch.float64)}

    assert dp.round_metrics(old, None)["dp_epsilon"] == pytest.approx(26.930909393784344, rel=1e-9)
    _, state = dp.on_empty_round(
        AggregationInfo(
            torch.arange(0), torch.ones(0), 11, 50, Layout.from_module(torch.nn.Linear(1, 1)), torch.zeros(2)
        ),
        old,
    )
    assert state["dp_rounds"] == 11 and state["dp_rdp"].shape == (len(DP_ACCOUNTING_ORDERS),)
