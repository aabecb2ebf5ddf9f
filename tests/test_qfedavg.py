"""q-FedAvg against Flower's ``QFedAvg`` on the same replies, and by hand on tiny cases.

Flower reads each client's loss from ``train_loss`` in its reply; gossipsoup reads the same
numbers from the per-client extra ``start_loss``. Both get the same global model and client models.
"""

import numpy as np
import pytest
import torch

from sim.errors import ConfigError, RunError
from sim.layout import Layout
from strategies.base import AggregationInfo
from strategies.fedavg import FedAvg
from strategies.qfedavg import QFedAvg

LAYOUT = Layout.from_module(torch.nn.Linear(3, 2))  # weight [2, 3], bias [2]: P = 8
NODES = {11: 5, 22: 40, 33: 13}  # node id -> num-examples
LOSSES = [0.3, 2.5, 1.1]


def _info(reference: torch.Tensor, losses, num_samples=(5, 40, 13)) -> AggregationInfo:
    k = len(losses)
    return AggregationInfo(
        client_ids=torch.arange(k),
        num_samples=torch.tensor(num_samples[:k]),
        round=1,
        num_clients=k,
        layout=LAYOUT,
        reference=reference,
        extras={"start_loss": torch.tensor(losses, dtype=torch.float32)},
    )


def _models(global_model: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return global_model + 0.3 * torch.randn(len(NODES), LAYOUT.size, generator=g)


@pytest.mark.parametrize("q", [0.0, 0.1, 1.0, 5.0])
def test_matches_flowers_qfedavg(q):
    pytest.importorskip("flwr")
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import QFedAvg as FlowerQFedAvg

    from sim.flower_client import model_message
    from strategies.flower import from_arrayrecord, to_arrayrecord

    start = torch.linspace(-1.0, 1.0, LAYOUT.size)
    models = _models(start)
    replies = []
    for (node, n), params, loss in zip(NODES.items(), models, LOSSES, strict=True):
        ins = model_message(LAYOUT, start, {"server-round": 1}, node_id=node)
        metrics = MetricRecord({"num-examples": n, "train_loss": loss})
        replies.append(
            Message(RecordDict({"arrays": to_arrayrecord(LAYOUT, params), "metrics": metrics}), reply_to=ins)
        )
    flower = FlowerQFedAvg(client_learning_rate=0.05, q=q)
    flower.current_arrays = to_arrayrecord(LAYOUT, start)  # what configure_train records

    theirs, _ = flower.aggregate_train(1, replies)
    mine, _ = QFedAvg(q=q, learning_rate=0.05).aggregate(models, _info(start, LOSSES), {})

    np.testing.assert_allclose(mine.numpy(), from_arrayrecord(LAYOUT, theirs).numpy(), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(mine, start, atol=1e-3)


def test_q_zero_is_the_uniform_average():
    start = torch.zeros(LAYOUT.size)
    models = _models(start)
    mine, _ = QFedAvg(q=0.0, learning_rate=0.3).aggregate(models, _info(start, LOSSES), {})
    uniform, _ = FedAvg(weighting="uniform").aggregate(models, _info(start, LOSSES), {})
    torch.testing.assert_close(mine, uniform, rtol=1e-6, atol=1e-6)


def test_one_coordinate_by_hand():
    """Two clients on one parameter: w = 0, w_1 = 1, w_2 = -1, losses 4 and 1, q = 1, lr = 0.5 (L = 2)."""
    layout = Layout.from_module(torch.nn.Linear(1, 1, bias=False))
    info = AggregationInfo(
        client_ids=torch.arange(2),
        num_samples=torch.tensor([1, 1]),
        round=1,
        num_clients=2,
        layout=layout,
        reference=torch.zeros(1, dtype=torch.float64),
        extras={"start_loss": torch.tensor([4.0, 1.0], dtype=torch.float64)},
    )
    models = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)

    mine, _ = QFedAvg(q=1.0, learning_rate=0.5).aggregate(models, info, {})

    # g = L (w - w_k) = [-2, 2]; Delta = F g = [-8, 2]; h = q F^0 g^2 + L F = [4 + 8, 4 + 2] = [12, 6]
    # w <- 0 - (-8 + 2) / 18 = 1/3: the high-loss client pulls the model its way
    assert mine.item() == pytest.approx(1 / 3, abs=1e-9)  # F + 1e-10 moves it by ~1e-11


def test_the_step_turns_toward_the_highest_loss_client_as_q_grows():
    start = torch.zeros(LAYOUT.size)
    models = _models(start)
    worst = models[int(np.argmax(LOSSES))] - start
    cosines = []
    for q in (0.0, 1.0, 3.0):
        step = QFedAvg(q=q, learning_rate=0.05).aggregate(models, _info(start, LOSSES), {})[0] - start
        cosines.append(float(torch.nn.functional.cosine_similarity(step, worst, dim=0)))
    assert cosines[0] < cosines[1] < cosines[2]


def test_missing_start_loss_is_a_clear_error():
    start = torch.zeros(LAYOUT.size)
    info = _info(start, LOSSES)
    info.extras = {}
    with pytest.raises(RunError, match="start_loss"):
        QFedAvg().aggregate(_models(start), info, {})


def test_requires_start_loss():
    assert QFedAvg.requires == frozenset({"start_loss"})


@pytest.mark.parametrize(
    "options,field", [({"q": -0.1}, "strategy.q"), ({"learning_rate": 0.0}, "strategy.learning_rate")]
)
def test_bad_options_are_refused(options, field):
    with pytest.raises(ConfigError) as info:
        QFedAvg(**options)
    assert info.value.field == field
