"""Robust rules through the Flower adapter: the same numbers as Flower's own robust strategies on the same
replies, and a whole Flower simulation with a robust rule (in a child process, as in test_flower_simulation)."""

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp import strategy as flower  # noqa: E402

from sim.flower_client import model_message  # noqa: E402
from sim.layout import Layout  # noqa: E402
from strategies.flower import GossipsoupStrategy, to_arrayrecord  # noqa: E402
from strategies.robust import Bulyan, CoordinateMedian, Krum  # noqa: E402

LAYOUT = Layout.from_module(torch.nn.Linear(3, 2))  # 8 entries


def replies(count: int) -> list[Message]:
    g = torch.Generator().manual_seed(count)
    out = []
    for node in range(count):
        params = torch.randn(LAYOUT.size, generator=g) * (1 + node % 3)
        ins = model_message(LAYOUT, torch.zeros(LAYOUT.size), {"server-round": 1}, node_id=100 + node)
        content = RecordDict({"arrays": to_arrayrecord(LAYOUT, params), "metrics": MetricRecord({"num-examples": 10})})
        out.append(Message(content, reply_to=ins))
    return out


@pytest.mark.parametrize(
    "ours,theirs,count",
    [
        (CoordinateMedian(f=1), flower.FedMedian(), 6),
        (Krum(f=1), flower.Krum(num_malicious_nodes=1), 7),
        (Krum(f=2, m=3), flower.MultiKrum(num_malicious_nodes=2, num_nodes_to_select=3), 9),
    ],
)
def test_adapter_with_a_robust_rule_equals_flowers_strategy(ours, theirs, count):
    messages = replies(count)
    our_arrays, our_metrics = GossipsoupStrategy(ours, LAYOUT, initial_params=torch.zeros(LAYOUT.size)).aggregate_train(
        1, messages
    )
    their_arrays, _ = theirs.aggregate_train(1, messages)
    for key in their_arrays:
        np.testing.assert_allclose(our_arrays[key].numpy(), their_arrays[key].numpy(), rtol=1e-5, atol=1e-6)
    assert our_metrics["gossipsoup-aggregated"] == count


def test_flowers_message_api_bulyan_selects_in_one_shot_and_ours_as_the_paper():
    """Flower's ``serverapp.strategy.Bulyan`` takes its theta models from one Multi-Krum scoring; the paper
    (and Flower's legacy ``aggregate_bulyan``, tests/test_robust_reference.py) re-scores after each pick."""
    messages = replies(9)
    ours, _ = GossipsoupStrategy(Bulyan(f=1), LAYOUT, initial_params=torch.zeros(LAYOUT.size)).aggregate_train(
        1, messages
    )
    one_shot, _ = GossipsoupStrategy(
        OneShotBulyan(f=1), LAYOUT, initial_params=torch.zeros(LAYOUT.size)
    ).aggregate_train(1, messages)
    theirs, _ = flower.Bulyan(num_malicious_nodes=1).aggregate_train(1, messages)
    for key in theirs:
        np.testing.assert_allclose(one_shot[key].numpy(), theirs[key].numpy(), rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(ours[key].numpy(), theirs[key].numpy()) for key in theirs)


class OneShotBulyan(Bulyan):
    """Bulyan with Flower's message-API selection: the theta lowest Krum scores of one scoring."""

    def aggregate(self, models, info, state):
        from strategies.robust.common import mean_of_nearest, median_of_sorted, pairwise_sq_distances, sort_columns
        from strategies.robust.distance import krum_scores

        f, n = self.f, len(models)
        scores = krum_scores(pairwise_sq_distances(models), n - f - 2)
        selected = models[torch.argsort(scores, stable=True)[: n - 2 * f]]
        return mean_of_nearest(selected, median_of_sorted(sort_columns(selected)), n - 4 * f), state
