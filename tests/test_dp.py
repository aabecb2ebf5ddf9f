"""The DP wrappers against Flower's own classes on the same replies, and their noise.

Without noise (``noise_multiplier=0``) Flower's four central-DP wrappers around its FedAvg and
gossipsoup's ``CentralDP`` around ``FedAvg(weighting=samples)`` must return the same model and, for
adaptive clipping, the same clipping norm round after round. With noise the draws differ (Flower
uses numpy's global generator), so the standard deviation is checked: against Flower's formula
functions and empirically over many coordinates.
"""

import math

import numpy as np
import pytest
import torch

from sim.layout import Layout
from strategies.base import AggregationInfo
from strategies.dp import Accounting, CentralDP, LocalDP, clip_updates
from strategies.fedavg import FedAvg

flwr = pytest.importorskip("flwr")

from flwr.app import Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import (  # noqa: E402
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg  # noqa: E402
from flwr.supercore.differential_privacy import (  # noqa: E402
    compute_adaptive_clip_model_update,
    compute_adaptive_noise_params,
    compute_clip_model_update,
    compute_stdv,
)

from sim.flower_client import model_message  # noqa: E402
from strategies.flower import from_arrayrecord, to_arrayrecord  # noqa: E402

LAYOUT = Layout.from_module(torch.nn.Linear(3, 2))  # P = 8
NODES = {11: 5, 22: 40, 33: 13, 44: 9}  # node id -> num-examples
SCALES = [0.1, 0.4, 1.5, 3.0]  # update norms of about 0.3 .. 8.5: some clipped at C = 1, some not
NO_NOISE = Accounting(sample_rate=1.0, noise_multiplier=0.0, delta=1e-5)


def client_models(global_model: torch.Tensor, round_: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(round_)
    return torch.stack([global_model + s * torch.randn(LAYOUT.size, generator=g) for s in SCALES])


def info_for(global_model: torch.Tensor, round_: int) -> AggregationInfo:
    return AggregationInfo(
        client_ids=torch.arange(len(NODES)),
        num_samples=torch.tensor(list(NODES.values())),
        round=round_,
        num_clients=len(NODES),
        layout=LAYOUT,
        reference=global_model,
    )


def replies(global_model: torch.Tensor, models: torch.Tensor, clip_on_client: float | None = None, norm_bit=False):
    """Flower replies; ``clip_on_client``: the update clipped as Flower's client mods do."""
    out = []
    for (node, n), params in zip(NODES.items(), models, strict=True):
        metrics = {"num-examples": n}
        arrays = to_arrayrecord(LAYOUT, params)
        if clip_on_client is not None:
            nds = arrays.to_numpy_ndarrays()
            ref = to_arrayrecord(LAYOUT, global_model).to_numpy_ndarrays()
            if norm_bit:
                metrics["norm_bit"] = int(compute_adaptive_clip_model_update(nds, ref, clip_on_client))
            else:
                compute_clip_model_update(nds, ref, clip_on_client)
            arrays = to_arrayrecord(LAYOUT, torch.from_numpy(np.concatenate([a.ravel() for a in nds])))
        ins = model_message(LAYOUT, global_model, {"server-round": 1}, node_id=node)
        out.append(Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=ins))
    return out


def run_rounds(flower, ours, rounds=4, client_side=False, norm_bit=False):
    """(Flower's model, ours, Flower's clip norm, ours) after each round, both from Flower's model."""
    theirs_global = torch.linspace(-1.0, 1.0, LAYOUT.size)
    state = ours.init_state(theirs_global, len(NODES))
    out = []
    for r in range(1, rounds + 1):
        models = client_models(theirs_global, r)
        flower.current_arrays = to_arrayrecord(LAYOUT, theirs_global)  # what configure_train records
        clip_sent = getattr(flower, "clipping_norm", None)
        msgs = replies(theirs_global, models, clip_sent if client_side else None, norm_bit)
        theirs, _ = flower.aggregate_train(r, msgs)
        mine, state = ours.aggregate(models, info_for(theirs_global, r), state)
        theirs_global = from_arrayrecord(LAYOUT, theirs)
        out.append((theirs_global.numpy(), mine.numpy(), getattr(flower, "clipping_norm", None), state["dp_clip_norm"]))
    return out


def central(adaptive=False, variant="andrew", clip=1.0, stddev=0.0):
    extra = {"adaptive": True, "variant": variant, "clipped_count_stddev": stddev} if adaptive else {}
    return CentralDP(
        FedAvg(), label="dp", seed=0, accounting=NO_NOISE, clipping_norm=clip, num_sampled_clients=4, **extra
    )


@pytest.mark.parametrize(
    "flower_cls", [DifferentialPrivacyServerSideFixedClipping, DifferentialPrivacyClientSideFixedClipping]
)
def test_fixed_clipping_matches_flower(flower_cls):
    flower = flower_cls(FlowerFedAvg(), noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=4)
    client_side = flower_cls is DifferentialPrivacyClientSideFixedClipping

    results = run_rounds(flower, central(), client_side=client_side)

    for theirs, mine, _, _ in results:
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)
    unclipped = FedAvg().aggregate(
        client_models(torch.linspace(-1, 1, 8), 1), info_for(torch.linspace(-1, 1, 8), 1), {}
    )
    assert not np.allclose(results[0][1], unclipped[0].numpy(), atol=1e-3)  # clipping changed the model


@pytest.mark.parametrize(
    "flower_cls", [DifferentialPrivacyServerSideAdaptiveClipping, DifferentialPrivacyClientSideAdaptiveClipping]
)
def test_adaptive_clipping_variant_flower_matches_flower(flower_cls):
    flower = flower_cls(FlowerFedAvg(), noise_multiplier=0.0, num_sampled_clients=4, initial_clipping_norm=1.0)
    client_side = flower_cls is DifferentialPrivacyClientSideAdaptiveClipping

    results = run_rounds(flower, central(adaptive=True, variant="flower"), client_side=client_side, norm_bit=True)

    for r, (theirs, mine, their_clip, my_clip) in enumerate(results, 1):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6, err_msg=f"round {r}")
        assert my_clip == pytest.approx(their_clip, rel=1e-12), f"round {r}"
    assert results[-1][3] != 1.0  # the norm moved


def test_adaptive_clipping_one_step_by_hand():
    """Norms 0.5, 2, 3 at C = 1: one unclipped (andrew counts it), two clipped (flower counts those)."""
    reference = torch.zeros(1, dtype=torch.float64)
    models = torch.tensor([[0.5], [2.0], [-3.0]], dtype=torch.float64)
    info = AggregationInfo(
        torch.arange(3), torch.ones(3), 1, 3, Layout.from_module(torch.nn.Linear(1, 1, bias=False)), reference
    )
    for variant, fraction in (("andrew", 1 / 3), ("flower", 2 / 3)):
        dp = CentralDP(FedAvg(), label="dp", seed=0, accounting=NO_NOISE, clipping_norm=1.0, num_sampled_clients=3,
                       adaptive=True, target_quantile=0.5, clip_lr=0.2, variant=variant)  # fmt: skip
        params, state = dp.aggregate(models, info, dp.init_state(reference, 3))
        assert state["dp_clip_norm"] == pytest.approx(math.exp(-0.2 * (fraction - 0.5)), rel=1e-12)
        assert params.item() == pytest.approx((0.5 + 1.0 - 1.0) / 3, abs=1e-12)  # clipped to 0.5, 1, -1


def test_andrew_tracks_the_quantile_and_flowers_reading_runs_away():
    """Update norms 1..10 every round: the paper's rule settles near the median, Flower's shrinks toward 0."""
    reference = torch.zeros(10, dtype=torch.float64)
    models = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))  # row k has norm k + 1
    info = AggregationInfo(
        torch.arange(10), torch.ones(10), 1, 10, Layout.from_module(torch.nn.Linear(10, 1, bias=False)), reference
    )
    clips = {}
    for variant in ("andrew", "flower"):
        dp = CentralDP(FedAvg(), label="dp", seed=0, accounting=NO_NOISE, clipping_norm=1.0, num_sampled_clients=10,
                       adaptive=True, target_quantile=0.5, clip_lr=0.2, variant=variant)  # fmt: skip
        state = dp.init_state(reference, 10)
        for _ in range(200):
            _, state = dp.aggregate(models, info, state)
        clips[variant] = state["dp_clip_norm"]
    assert 4.0 <= clips["andrew"] <= 6.5
    assert clips["flower"] < 1e-3


def _noise_of(dp, p=20000, round_=1):
    layout = Layout.from_module(torch.nn.Linear(p, 1, bias=False))
    reference = torch.zeros(p, dtype=torch.float64)
    models = torch.zeros(4, p, dtype=torch.float64)  # updates of norm 0: the noise is the whole output
    info = AggregationInfo(torch.arange(4), torch.ones(4), round_, 4, layout, reference)
    return dp.aggregate(models, info, dp.init_state(reference, 4))[0]


def test_fixed_noise_std_is_flowers_formula_and_the_draws_follow_it():
    accounting = Accounting(sample_rate=0.5, noise_multiplier=1.3, delta=1e-5)
    dp = CentralDP(FedAvg(), label="dp", seed=3, accounting=accounting, clipping_norm=0.7, num_sampled_clients=4)

    noise = _noise_of(dp)

    assert dp.noise_std(0.7) == pytest.approx(compute_stdv(1.3, 0.7, 4), rel=1e-12)
    assert float(noise.std()) == pytest.approx(1.3 * 0.7 / 4, rel=0.03)  # 20000 draws: ~0.5% standard error
    assert abs(float(noise.mean())) < 4 * 1.3 * 0.7 / 4 / math.sqrt(20000)


def test_adaptive_noise_is_flowers_split_of_the_multiplier():
    from strategies.dp.build import adaptive_noise

    stddev, update_z = adaptive_noise(1.2, 40, None, False)

    assert (stddev, update_z) == pytest.approx(compute_adaptive_noise_params(1.2, 40, None), rel=1e-12)
    accounting = Accounting(sample_rate=0.5, noise_multiplier=1.2, delta=1e-5)
    dp = CentralDP(FedAvg(), label="dp", seed=3, accounting=accounting, clipping_norm=0.7, num_sampled_clients=4,
                   adaptive=True, clipped_count_stddev=stddev, update_noise_multiplier=update_z)  # fmt: skip
    assert float(_noise_of(dp).std()) == pytest.approx(update_z * 0.7 / 4, rel=0.03)  # andrew: this round's C


def test_noise_is_a_function_of_seed_and_round():
    accounting = Accounting(sample_rate=0.5, noise_multiplier=1.0, delta=1e-5)

    def make(seed):
        return CentralDP(
            FedAvg(), label="dp", seed=seed, accounting=accounting, clipping_norm=1.0, num_sampled_clients=4
        )

    torch.testing.assert_close(_noise_of(make(0), 100), _noise_of(make(0), 100), rtol=0, atol=0)
    assert not torch.allclose(_noise_of(make(0), 100), _noise_of(make(1), 100))
    assert not torch.allclose(_noise_of(make(0), 100, 1), _noise_of(make(0), 100, 2))


def test_local_dp_clips_like_flower_and_noises_with_localdpmods_std():
    global_model = torch.linspace(-1.0, 1.0, LAYOUT.size)
    models = client_models(global_model, 1)
    expected = []
    for params in models:
        nds = to_arrayrecord(LAYOUT, params).to_numpy_ndarrays()
        compute_clip_model_update(nds, to_arrayrecord(LAYOUT, global_model).to_numpy_ndarrays(), 1.0)
        expected.append(np.concatenate([a.ravel() for a in nds]))
    no_noise = LocalDP(FedAvg(), label="local", seed=0, accounting=NO_NOISE, clipping_norm=1.0, std=0.0)

    mine, _ = no_noise.aggregate(models, info_for(global_model, 1), {})

    theirs = FedAvg().aggregate(torch.from_numpy(np.stack(expected)), info_for(global_model, 1), {})[0]
    np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-6)
    # LocalDpMod's std: sensitivity sqrt(2 ln(1.25 / delta)) / epsilon, per client, before aggregation
    std = 0.5 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 2.0
    noisy = LocalDP(FedAvg(weighting="uniform"), label="local", seed=0, accounting=NO_NOISE, clipping_norm=1.0, std=std)
    mean_of_four = _noise_of(noisy)
    assert float(mean_of_four.std()) == pytest.approx(std / 2, rel=0.03)  # the mean of 4 independent noises


def test_clip_updates_leaves_short_updates_and_zero_updates_alone():
    reference = torch.tensor([1.0, 1.0])
    models = torch.tensor([[1.0, 1.0], [1.3, 1.4], [4.0, 5.0]])  # update norms 0, 0.5, 5
    clipped, was_clipped = clip_updates(models, reference, 1.0)
    torch.testing.assert_close(clipped, torch.tensor([[1.0, 1.0], [1.3, 1.4], [1.6, 1.8]]))
    assert was_clipped.tolist() == [False, False, True]
