"""``variant=flower`` server optimizers against Flower's own strategies, round after round.

Flower's FedAdam, FedYogi and FedAvgM (``flwr.serverapp.strategy``) and gossipsoup's adapter
around ``ServerOptimizer`` are fed the same real ``flwr.app.Message`` replies for several rounds,
including one round that nobody answers, and must return the same global model each round. The
replies carry different ``num-examples``, so Flower's weighting by examples is checked against
``weighting=samples`` at the same time.

Flower's FedOpt strategies read the global model they step from in ``configure_train``, which
otherwise only samples connected nodes (it needs a running SuperLink); the test sets
``current_arrays`` exactly as that method does (``{key: array.numpy()}``) from the model Flower
itself returned, as ``Strategy.start`` passes it on.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi

from sim.flower_client import model_message
from sim.layout import Layout
from strategies import ServerOptimizer
from strategies.flower import GossipsoupStrategy, from_arrayrecord, to_arrayrecord

LAYOUT = Layout.from_module(torch.nn.Linear(3, 2))  # two arrays: weight [2, 3], bias [2]
NODES = {11: 5, 22: 40, 33: 13}  # node id -> num-examples
ROUNDS = (1, 2, 3, 4, 5, 6)
EMPTY_ROUND = 4  # nobody answers: Flower keeps the model, its FedAdam exponent still moves on


def replies_for(server_round: int, global_model: torch.Tensor) -> list[Message]:
    """Each node's trained model: the global model plus a seeded update of a few tenths."""
    if server_round == EMPTY_ROUND:
        return []
    out = []
    for node, n in NODES.items():
        g = torch.Generator().manual_seed(1000 * server_round + node)
        params = global_model + 0.3 * torch.randn(LAYOUT.size, generator=g) + 0.05 * node / 11
        ins = model_message(LAYOUT, global_model, {"server-round": server_round}, node_id=node)
        content = RecordDict({"arrays": to_arrayrecord(LAYOUT, params), "metrics": MetricRecord({"num-examples": n})})
        out.append(Message(content, reply_to=ins))
    return out


def run_both(flower, ours: ServerOptimizer, steps_from_configure: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(Flower's, gossipsoup's) global model after each round, both driven by the same replies."""
    start = torch.linspace(-1.0, 1.0, LAYOUT.size)
    adapter = GossipsoupStrategy(ours, LAYOUT, initial_params=start)
    theirs_global = to_arrayrecord(LAYOUT, start)
    flower.current_arrays = theirs_global if not steps_from_configure else None  # FedAvgM: set once
    results = []
    for r in ROUNDS:
        if steps_from_configure:  # what FedOpt.configure_train records before it samples nodes
            flower.current_arrays = {k: a.numpy() for k, a in theirs_global.items()}
        replies = replies_for(r, from_arrayrecord(LAYOUT, theirs_global).float())
        theirs, _ = flower.aggregate_train(r, replies)
        mine, _ = adapter.aggregate_train(r, replies)
        if theirs is not None:  # Strategy.start keeps the previous model when a round returns None
            theirs_global = theirs
        results.append(
            (from_arrayrecord(LAYOUT, theirs_global).double().numpy(), from_arrayrecord(LAYOUT, mine).double().numpy())
        )
    return results


FLOWER_CASES = {
    "adam": (lambda: FedAdam(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3), True),
    "yogi": (lambda: FedYogi(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3), True),
    "avgm": (lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9), False),
}


@pytest.mark.parametrize("optimizer", list(FLOWER_CASES))
def test_flower_variant_matches_flower_strategy_every_round(optimizer):
    make_flower, from_configure = FLOWER_CASES[optimizer]
    lr = 0.7 if optimizer == "avgm" else 0.05
    ours = ServerOptimizer(optimizer=optimizer, server_lr=lr, beta1=0.9, beta2=0.99, tau=1e-3, variant="flower")

    results = run_both(make_flower(), ours, from_configure)

    start = torch.linspace(-1.0, 1.0, LAYOUT.size).numpy()
    for r, (theirs, mine) in zip(ROUNDS, results, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6, err_msg=f"round {r}")
    assert not np.allclose(results[-1][0], start, atol=0.1)  # the models moved: the comparison means something


@pytest.mark.parametrize("optimizer", ["adam", "yogi"])
def test_reddi_variant_is_not_flower(optimizer):
    """The default reading (v_0 = tau^2, no correction) differs from Flower, so the match above is the variant's."""
    make_flower, _ = FLOWER_CASES[optimizer]
    ours = ServerOptimizer(optimizer=optimizer, server_lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3)
    theirs, mine = run_both(make_flower(), ours, True)[-1]
    assert not np.allclose(mine, theirs, rtol=1e-4, atol=1e-4)


def test_uniform_weighting_is_not_flowers():
    """Flower averages by num-examples; with the replies' unequal counts, uniform weights give other models."""
    ours = ServerOptimizer(optimizer="avgm", server_lr=0.7, beta1=0.9, weighting="uniform", variant="flower")
    theirs, mine = run_both(FedAvgM(server_learning_rate=0.7, server_momentum=0.9), ours, False)[0]
    assert not np.allclose(mine, theirs, rtol=1e-3, atol=1e-3)


def test_defaults_are_flowers_fedadam_defaults():
    """``ServerOptimizer()`` is Adam with Flower's FedAdam defaults (eta 0.1, betas 0.9 / 0.99, tau 1e-3)."""
    theirs, mine = run_both(FedAdam(), ServerOptimizer(variant="flower"), True)[-1]
    np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)
