"""FedAdagrad (``optimizer=adagrad``) against Flower's own ``FedAdagrad``, round after round.

The same real ``flwr.app.Message`` replies (unequal ``num-examples``, one round nobody answers)
drive Flower's strategy and gossipsoup's adapter, as in tests/test_fedopt_flower.py; the
``reddi`` reading (``v_0 = tau^2``, momentum) is checked by hand on one coordinate.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.serverapp.strategy import FedAdagrad

from sim.errors import ConfigError
from sim.layout import Layout
from strategies import AggregationInfo, ServerOptimizer
from tests.test_fedopt_flower import LAYOUT, ROUNDS, run_both


def test_flower_variant_matches_flowers_fedadagrad_every_round():
    ours = ServerOptimizer(optimizer="adagrad", server_lr=0.05, beta1=0.0, tau=1e-3, variant="flower")

    results = run_both(FedAdagrad(eta=0.05, tau=1e-3), ours, steps_from_configure=True)

    start = torch.linspace(-1.0, 1.0, LAYOUT.size).numpy()
    for r, (theirs, mine) in zip(ROUNDS, results, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6, err_msg=f"round {r}")
    assert not np.allclose(results[-1][0], start, atol=0.1)


def test_reddi_variant_with_momentum_is_not_flowers_fedadagrad():
    """The paper's Algorithm 2 keeps a first moment; Flower's FedAdagrad does not."""
    ours = ServerOptimizer(optimizer="adagrad", server_lr=0.05, beta1=0.9, tau=1e-3)
    theirs, mine = run_both(FedAdagrad(eta=0.05, tau=1e-3), ours, steps_from_configure=True)[-1]
    assert not np.allclose(mine, theirs, rtol=1e-4, atol=1e-4)


def _info(reference: torch.Tensor, round_: int) -> AggregationInfo:
    return AggregationInfo(
        client_ids=torch.tensor([0]),
        num_samples=torch.tensor([1]),
        round=round_,
        num_clients=1,
        layout=Layout.from_module(torch.nn.Linear(1, 1, bias=False)),
        reference=reference,
    )


def test_reddi_adagrad_two_steps_by_hand():
    """v accumulates every squared step (no decay); m is momentum; v_0 = tau^2."""
    opt = ServerOptimizer(optimizer="adagrad", server_lr=0.5, beta1=0.5, tau=0.1)
    x0 = torch.tensor([1.0], dtype=torch.float64)
    state = opt.init_state(x0, 1)

    x1, state = opt.aggregate(torch.tensor([[3.0]], dtype=torch.float64), _info(x0, 1), state)
    x2, state = opt.aggregate(x1.unsqueeze(0) + 1.0, _info(x1, 2), state)

    # round 1: delta 2, m = 1, v = 0.01 + 4 = 4.01, x = 1 + 0.5 * 1 / (sqrt(4.01) + 0.1)
    m1, v1 = 1.0, 4.01
    x1_hand = 1 + 0.5 * m1 / (v1**0.5 + 0.1)
    # round 2: delta 1, m = 0.5 * 1 + 0.5 * 1 = 1, v = 4.01 + 1 = 5.01
    m2, v2 = 0.5 * m1 + 0.5 * 1.0, v1 + 1.0
    assert x1.item() == pytest.approx(x1_hand, abs=1e-12)
    assert x2.item() == pytest.approx(x1_hand + 0.5 * m2 / (v2**0.5 + 0.1), abs=1e-12)
    assert state["v"].item() == pytest.approx(v2, abs=1e-12)


@pytest.mark.parametrize(
    "options,field",
    [
        ({"variant": "flower", "beta1": 0.9}, "strategy.beta1"),
        ({"bias_correction": True}, "strategy.bias_correction"),
        ({"tau": -1.0}, "strategy.tau"),
    ],
)
def test_bad_fedadagrad_options_are_refused(options, field):
    with pytest.raises(ConfigError) as info:
        ServerOptimizer(optimizer="adagrad", **{"beta1": 0.0, **options})
    assert info.value.field == field
