"""Client-side rules in Flower: FedProx's mu reaches gossipsoup's ClientApp, q-FedAvg's losses reach the adapter.

Prepare / Execute / Assert on real Flower ``Message`` replies built by ``sim.flower_client.train_reply``.
"""

import pytest
import torch

pytest.importorskip("flwr")

from sim.errors import ConfigError  # noqa: E402
from sim.flower_client import model_message, train_reply  # noqa: E402
from sim.layout import Layout  # noqa: E402
from sim.seeding import torch_generator  # noqa: E402
from sim.training import TrainConfig, local_train, per_row_losses  # noqa: E402
from strategies import AggregationInfo  # noqa: E402
from strategies.client_side import Scaffold  # noqa: E402
from strategies.flower import GossipsoupStrategy, InvalidReplyError  # noqa: E402
from strategies.qfedavg import QFedAvg  # noqa: E402
from tests.test_flower_adapter import client_data, flat  # noqa: E402


def tiny_mlp():
    """The adapter tests' model (tests/test_flower_adapter.py), so client_data fits it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    return model, Layout.from_module(model)


def test_flower_fedprox_mu_is_the_proximal_term_of_local_training():
    # Prepare: flwr's FedProx puts mu in the train config as "proximal-mu"
    model, layout = tiny_mlp()
    start, (x, y) = layout.flatten(model), client_data(3, 25)
    msg = model_message(layout, start, {"server-round": 2, "proximal-mu": 0.5}, node_id=9)
    # Execute
    out = train_reply(msg, model, layout, x, y, TrainConfig(lr=0.1), seed=7, client=3)
    # Assert: the same as local training with the proximal term, and not as without it
    gen = torch_generator(7, "train", 2, 3)
    with_prox = local_train(model, layout, start, x, y, TrainConfig(lr=0.1), gen, prox=0.5).params
    without = local_train(model, layout, start, x, y, TrainConfig(lr=0.1), torch_generator(7, "train", 2, 3)).params
    got = flat(out.content["arrays"], layout)
    assert torch.equal(got, with_prox) and not torch.allclose(got, without)


def test_qfedavg_in_flower_reads_each_clients_start_loss_from_its_reply():
    # Prepare: two clients asked for their loss at the received model (as the adapter's configure_train asks)
    model, layout = tiny_mlp()
    start = layout.flatten(model)
    config = {"server-round": 1, "gossipsoup-requires": ["start_loss"]}
    data = {node: client_data(node, 12 + node) for node in (5, 6)}
    replies = [
        train_reply(model_message(layout, start, config, node_id=n), model, layout, *data[n], TrainConfig(), client=n)
        for n in (5, 6)
    ]
    losses = torch.tensor(
        [float(per_row_losses(model, layout, start, *data[n], torch.arange(len(data[n][1]))).mean()) for n in (5, 6)]
    )
    assert [r.content["metrics"]["start-loss"] for r in replies] == pytest.approx(losses.tolist())
    models = torch.stack([flat(r.content["arrays"], layout) for r in replies])
    info = AggregationInfo(
        client_ids=torch.arange(2),
        num_samples=torch.tensor([17, 18]),
        round=1,
        num_clients=2,
        layout=layout,
        reference=start,
        extras={"start_loss": losses},
    )
    expected, _ = QFedAvg(q=1.0).aggregate(models, info, {})
    # Execute
    arrays, _ = GossipsoupStrategy(QFedAvg(q=1.0), layout, initial_params=start).aggregate_train(1, replies)
    # Assert
    assert torch.allclose(flat(arrays, layout), expected, atol=1e-6)
    del replies[1].content["metrics"]["start-loss"]
    with pytest.raises(InvalidReplyError, match=r"node 6: no 'start_loss' record"):
        GossipsoupStrategy(QFedAvg(q=1.0), layout, initial_params=start).aggregate_train(1, replies)


def test_rules_whose_client_part_flower_cannot_carry_are_refused():
    _, layout = tiny_mlp()
    with pytest.raises(ConfigError, match="scaffold"):
        GossipsoupStrategy(Scaffold(), layout)


def test_a_flower_client_refuses_crafted_attacks_but_keeps_label_flip():
    from sim.flower_client import cached_experiment

    with pytest.raises(ConfigError, match="attack.name"):
        cached_experiment(("attack=sign_flip", "attack.f=1", "num_clients=12", "model=logreg"))
    exp = cached_experiment(("attack=label_flip", "attack.f=1", "num_clients=12", "model=logreg"))
    assert exp.attack is not None and len(exp.attack.ids) == 1
