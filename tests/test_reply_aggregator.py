"""ReplyAggregator on hand-built updates: the cases the Flower adapters never produce themselves.

An API adapter other than ours (or a script) may build :class:`ClientUpdate` objects directly, so the
aggregator must reject an update without a model on its own, and must give node ids of mixed types
a stable order.
"""

import pytest
import torch

pytest.importorskip("flwr")

from sim.errors import ConfigError  # noqa: E402
from sim.layout import Layout  # noqa: E402
from strategies import FedAvg, SparseSoup  # noqa: E402
from strategies.flower import ClientUpdate, InvalidReplyError, ReplyAggregator  # noqa: E402

TINY = Layout.from_module(torch.nn.Linear(1, 1))  # 2 entries: weight [1, 1], bias [1]


def arrays(values):
    return TINY.to_state_dict(torch.tensor(values, dtype=torch.float32))


def test_update_without_a_model_and_no_reason_is_named():
    agg = ReplyAggregator(FedAvg(), TINY, initial_params=torch.zeros(2))
    with pytest.raises(InvalidReplyError, match=r"reply from node 7: the reply carried no model"):
        agg.aggregate(1, [ClientUpdate(7, None, 10), ClientUpdate(8, arrays([1.0, 2.0]), 10)])


def test_update_without_a_model_is_rejected_and_the_others_aggregated():
    agg = ReplyAggregator(FedAvg(), TINY, on_invalid="reject", initial_params=torch.zeros(2))
    params, counts, accepted = agg.aggregate(1, [ClientUpdate(7, None, 10), ClientUpdate(8, arrays([1.0, 2.0]), 10)])
    assert accepted == [1] and counts["gossipsoup-rejected"] == 1.0 and counts["gossipsoup-aggregated"] == 1.0
    assert torch.equal(params, torch.tensor([1.0, 2.0]))


def test_the_adapters_reason_is_not_repeated():
    agg = ReplyAggregator(FedAvg(), TINY, initial_params=torch.zeros(2))
    with pytest.raises(InvalidReplyError) as info:
        agg.aggregate(1, [ClientUpdate(7, None, 10, problems=["no model ArrayRecord 'arrays'"])])
    assert info.value.problems == ["reply from node 7: no model ArrayRecord 'arrays'"]


def test_node_ids_of_mixed_types_are_ordered_by_their_text():
    agg = ReplyAggregator(FedAvg(), TINY, initial_params=torch.zeros(2))
    agg.register(["b", 3, 1])
    agg.register(["a", 2])  # later nodes follow the earlier ones, in their own order ("2" < "a")
    assert agg.node_index == {1: 0, 3: 1, "b": 2, 2: 3, "a": 4}


def test_node_ids_of_one_type_are_ordered_naturally():
    agg = ReplyAggregator(FedAvg(), TINY, initial_params=torch.zeros(2))
    agg.register([100, 16, 3])  # neither the order given, a set's order, nor the text order ("100" < "16" < "3")
    assert agg.node_index == {3: 0, 16: 1, 100: 2}


def test_an_offline_only_rule_is_refused_by_the_server():
    # sparse_soup keeps no mask through local training, so a Flower server must refuse it as runs do
    with pytest.raises(ConfigError, match=r"strategy='sparse_soup'.*sim.merge"):
        ReplyAggregator(SparseSoup(), TINY, initial_params=torch.zeros(2))
