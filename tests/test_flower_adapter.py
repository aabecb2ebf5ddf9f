"""The Flower adapters on real Flower messages (Prepare / Execute / Assert).

Replies are real ``flwr.app.Message`` replies to real instruction messages (so ``src_node_id`` is
set the way Flower sets it), built either by gossipsoup's client helper after real local training
or directly from hand-chosen arrays where the expected numbers are computed by hand.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server.compat.grid_client_proxy import GridClientProxy  # noqa: E402
from flwr.server.strategy import FedAvg as LegacyFlowerFedAvg  # noqa: E402
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg  # noqa: E402

from sim.errors import ConfigError, RunError  # noqa: E402
from sim.fisher import diagonal_fisher  # noqa: E402
from sim.flower_client import model_message, train_reply  # noqa: E402
from sim.layout import Layout  # noqa: E402
from sim.seeding import torch_generator  # noqa: E402
from sim.training import TrainConfig, local_train  # noqa: E402
from strategies import AggregationInfo, FedAU, FedAvg, FisherMerge, GreedySoup  # noqa: E402
from strategies.flower import GossipsoupStrategy, InvalidReplyError, to_arrayrecord  # noqa: E402
from strategies.flower_legacy import GossipsoupLegacyStrategy, encode_extra, to_ndarrays  # noqa: E402

TINY = Layout.from_module(torch.nn.Linear(1, 1))  # 2 entries: weight [1, 1], bias [1]


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    return model, Layout.from_module(model)


def client_data(node: int, rows: int):
    g = torch.Generator().manual_seed(node)
    return torch.randn(rows, 4, generator=g), torch.randint(0, 2, (rows,), generator=g)


def reply(node, params, n=10, layout=TINY, arrays=None, metrics=None, **records):
    """A client's reply to the server's train message, with the records given."""
    ins = model_message(layout, torch.zeros(layout.size), {"server-round": 1}, node_id=node)
    content = RecordDict(
        {
            "arrays": arrays if arrays is not None else to_arrayrecord(layout, torch.tensor(params)),
            "metrics": MetricRecord(metrics if metrics is not None else {"num-examples": n}),
        }
    )
    for key, value in records.items():
        content[key] = value
    return Message(content, reply_to=ins)


def flat(record, layout=TINY):
    return torch.cat([torch.from_numpy(record[n].numpy()).reshape(-1) for n in layout.names])


# ---- (a) the adapter with fedavg is Flower's FedAvg -----------------------------------------
def test_adapter_fedavg_matches_flower_fedavg_on_trained_replies(mlp):
    model, layout = mlp
    start = layout.flatten(model)
    replies = [
        train_reply(
            model_message(layout, start, {"server-round": 1}, node_id=node),
            model,
            layout,
            *client_data(node, rows),
            TrainConfig(),
            client=node,
        )
        for node, rows in ((11, 13), (22, 40), (33, 7))
    ]

    ours, our_metrics = GossipsoupStrategy(FedAvg(), layout, initial_params=start).aggregate_train(1, replies)
    theirs, their_metrics = FlowerFedAvg().aggregate_train(1, replies)

    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key].numpy(), theirs[key].numpy(), rtol=1e-6, atol=1e-7)
    assert our_metrics["train-loss"] == pytest.approx(their_metrics["train-loss"])
    assert our_metrics["gossipsoup-aggregated"] == 3 and our_metrics["gossipsoup-rejected"] == 0


def test_legacy_adapter_fedavg_matches_flower_legacy_fedavg(mlp):
    model, layout = mlp
    start = layout.flatten(model)
    results = []
    for node, rows in ((11, 13), (22, 40), (33, 7)):
        trained = local_train(model, layout, start, *client_data(node, rows), TrainConfig(), torch_generator(0, node))
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(to_ndarrays(layout, trained.params)), rows, {})
        results.append((GridClientProxy(node, None, 1), res))

    ours, metrics = GossipsoupLegacyStrategy(FedAvg(), layout, initial_params=start).aggregate_fit(1, results, [])
    theirs, _ = LegacyFlowerFedAvg().aggregate_fit(1, results, [])

    for a, b in zip(parameters_to_ndarrays(ours), parameters_to_ndarrays(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert metrics["gossipsoup-aggregated"] == 3


# ---- identity, state and extras ---------------------------------------------------------------
def test_fedau_memory_follows_src_node_id_across_rounds():
    adapter = GossipsoupStrategy(FedAU(), TINY, num_clients=3, initial_params=torch.zeros(2))
    # round 1: nodes 101 and 202 take part; both weights 1 -> x = (1/3) (2 + 4) = 2
    arrays, _ = adapter.aggregate_train(1, [reply(202, [4.0, 4.0]), reply(101, [2.0, 2.0])])
    assert flat(arrays).tolist() == pytest.approx([2.0, 2.0])
    # round 2: 303 (no interval yet, weight 1) and 101 (interval 1) -> x = 2 + (1/3) (1 + 1) = 2.6667
    arrays, _ = adapter.aggregate_train(2, [reply(303, [3.0, 3.0]), reply(101, [3.0, 3.0])])
    assert flat(arrays).tolist() == pytest.approx([8 / 3, 8 / 3])
    # round 3: 202 (intervals [1]: weight 1) and 303 (intervals [2]: weight 2)
    x = 8 / 3
    arrays, _ = adapter.aggregate_train(3, [reply(303, [x + 3, x + 3]), reply(202, [x + 3, x + 3])])
    assert flat(arrays).tolist() == pytest.approx([x + (1 * 3 + 2 * 3) / 3] * 2)

    index = adapter.aggregator.node_index
    assert sorted(index) == [101, 202, 303]  # registered in order of first sight, sorted within a round
    assert index[101] == 0 and index[202] == 1 and index[303] == 2
    weights = FedAU.weights(adapter.state)
    assert weights[index[101]] == 1.0 and weights[index[202]] == 1.5 and weights[index[303]] == 1.5


def test_node_beyond_num_clients_is_named():
    adapter = GossipsoupStrategy(FedAU(), TINY, num_clients=1, initial_params=torch.zeros(2))
    adapter.aggregate_train(1, [reply(7, [1.0, 1.0])])
    with pytest.raises(InvalidReplyError, match=r"node 8: node is beyond num_clients=1"):
        adapter.aggregate_train(2, [reply(8, [1.0, 1.0])])


def test_a_node_that_joins_later_gets_a_fresh_row_of_state():
    adapter = GossipsoupStrategy(FedAU(), TINY, initial_params=torch.zeros(2))  # N from the nodes seen
    adapter.aggregate_train(1, [reply(1, [3.0, 3.0]), reply(2, [3.0, 3.0])])
    adapter.aggregate_train(2, [reply(1, [3.0, 3.0])])

    adapter.aggregate_train(3, [reply(9, [3.0, 3.0])])  # a third node connects

    assert adapter.aggregator.num_clients == 3 and adapter.aggregator.node_index[9] == 2
    # node 1: two intervals, absent in round 3; node 2: one interval, absent in rounds 2 and 3;
    # node 9: its first interval recorded in round 3 from a fresh row (count 0)
    assert adapter.state["interval_num"].tolist() == [2.0, 1.0, 1.0]
    assert adapter.state["count"].tolist() == [1.0, 2.0, 0.0]


def test_fisher_extras_travel_in_their_own_record(mlp):
    model, layout = mlp
    start = layout.flatten(model)
    config = {"server-round": 1, "gossipsoup-requires": ["fisher"]}  # what the adapter's configure_train adds
    data = {node: client_data(node, 12) for node in (5, 6)}
    replies = [
        train_reply(model_message(layout, start, config, node_id=n), model, layout, *data[n], TrainConfig(), client=n)
        for n in (5, 6)
    ]

    models = torch.stack([flat(r.content["arrays"], layout) for r in replies])
    fishers = torch.stack([flat(r.content["fisher"], layout) for r in replies])
    assert torch.allclose(fishers[0], diagonal_fisher(model, layout, models[0], data[5][0]))
    info = AggregationInfo(
        client_ids=torch.arange(2),
        num_samples=torch.tensor([12, 12]),
        round=1,
        num_clients=2,
        layout=layout,
        reference=start,
        extras={"fisher": fishers},
    )
    expected, _ = FisherMerge().aggregate(models, info, {})

    arrays, _ = GossipsoupStrategy(FisherMerge(), layout, initial_params=start).aggregate_train(1, replies)
    assert torch.allclose(flat(arrays, layout), expected, atol=1e-6)

    del replies[1].content["fisher"]
    with pytest.raises(InvalidReplyError, match=r"node 6: no 'fisher' record"):
        GossipsoupStrategy(FisherMerge(), layout, initial_params=start).aggregate_train(1, replies)


def test_greedy_soup_scores_with_the_server_side_function():
    target = torch.tensor([1.0, 1.0])
    scored = []

    def validate(params):  # a held-out score on the server: closer to the target is better
        scored.append(params.clone())
        return -float((params - target).norm())

    adapter = GossipsoupStrategy(GreedySoup(), TINY, validate=validate, initial_params=torch.zeros(2))
    # best alone: [1.2, 1.2]; + [0.7, 0.7] -> [0.95, 0.95] (better, kept); + [5, 5] -> worse, dropped
    arrays, metrics = adapter.aggregate_train(1, [reply(1, [5.0, 5.0]), reply(2, [1.2, 1.2]), reply(3, [0.7, 0.7])])
    assert flat(arrays).tolist() == pytest.approx([0.95, 0.95])
    assert metrics["greedy_kept"] == 2
    index = adapter.aggregator.node_index
    assert adapter.state["kept_clients"].tolist() == [index[2], index[3]]
    assert len(scored) == 5  # 3 candidates + 2 soups

    with pytest.raises(ConfigError, match="validate"):
        GossipsoupStrategy(GreedySoup(), TINY)


def test_client_helper_trains_like_the_simulator(mlp):
    model, layout = mlp
    start, (x, y) = layout.flatten(model), client_data(3, 25)
    msg = model_message(layout, start, {"server-round": 4, "lr": 0.1}, node_id=9)

    out = train_reply(msg, model, layout, x, y, TrainConfig(lr=0.05), seed=7, client=3)

    expected = local_train(model, layout, start, x, y, TrainConfig(lr=0.1), torch_generator(7, "train", 4, 3))
    assert torch.equal(flat(out.content["arrays"], layout), expected.params)
    assert out.content["metrics"]["num-examples"] == 25
    assert out.metadata.src_node_id == 9 and "fisher" not in out.content


# ---- bad input (6) ----------------------------------------------------------------------------
def test_mismatched_keys_are_named():
    bad = to_arrayrecord(TINY, torch.ones(2))
    bad["extra.weight"] = bad.pop("bias")
    with pytest.raises(InvalidReplyError) as err:
        GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2)).aggregate_train(
            3, [reply(1, [1.0, 1.0]), reply(42, None, arrays=bad)]
        )
    message = str(err.value)
    assert "round 3" in message and "node 42" in message
    assert "missing ['bias']" in message and "unexpected ['extra.weight']" in message


def test_mismatched_shape_is_named():
    bad = to_arrayrecord(Layout.from_module(torch.nn.Linear(2, 1)), torch.ones(3))
    with pytest.raises(
        InvalidReplyError,
        match=r"node 5: arrays: array 'weight' has shape \[1, 2\], "
        r"the layout expects \[1, 1\]",
    ):
        GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2)).aggregate_train(
            1, [reply(5, None, arrays=bad)]
        )


def test_reply_without_num_examples_is_named():
    with pytest.raises(InvalidReplyError, match=r"node 5: its MetricRecord has no 'num-examples'"):
        GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2)).aggregate_train(
            1, [reply(5, [1.0, 1.0], metrics={"train-loss": 0.5})]
        )


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_arrays_raise_by_default(value):
    with pytest.raises(InvalidReplyError, match=r"node 8: arrays: array 'bias' has 1 NaN/Inf entry"):
        GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2)).aggregate_train(
            1, [reply(7, [1.0, 1.0]), reply(8, [1.0, value])]
        )


def test_reject_mode_drops_and_counts_bad_replies():
    adapter = GossipsoupStrategy(FedAvg(), TINY, on_invalid="reject", initial_params=torch.zeros(2))
    replies = [
        reply(1, [1.0, 2.0], n=1),
        reply(2, [math.nan, 0.0]),
        reply(3, [3.0, 4.0], n=3),
        reply(4, [9.0, 9.0], metrics={}),
        reply(3, [0.0, 0.0]),
    ]  # NaN, no count, second reply of node 3

    arrays, metrics = adapter.aggregate_train(1, replies)

    assert flat(arrays).tolist() == pytest.approx([2.5, 3.5])  # (1 * [1, 2] + 3 * [3, 4]) / 4
    assert metrics["gossipsoup-rejected"] == 3 and metrics["gossipsoup-aggregated"] == 2
    adapter.aggregate_train(2, [reply(1, [math.inf, 0.0])])
    assert adapter.aggregator.rejected_total == 4


def test_all_rejected_is_an_empty_round_that_fedau_counts():
    adapter = GossipsoupStrategy(FedAU(), TINY, num_clients=2, on_invalid="reject", initial_params=torch.ones(2))
    adapter.aggregate_train(1, [reply(1, [2.0, 2.0]), reply(2, [2.0, 2.0])])
    before = adapter.aggregator.reference.clone()

    arrays, metrics = adapter.aggregate_train(2, [reply(1, [math.nan, 0.0])])

    assert torch.equal(flat(arrays), before) and metrics["gossipsoup-aggregated"] == 0
    assert adapter.state["count"].tolist() == [1.0, 1.0]  # both absent this round


def test_error_replies_are_counted_as_failures_not_aggregated():
    ins = model_message(TINY, torch.zeros(2), node_id=9)
    failed = Message(Error(code=0, reason="client crashed"), reply_to=ins)
    arrays, metrics = GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2)).aggregate_train(
        1, [reply(1, [1.0, 1.0]), failed]
    )
    assert flat(arrays).tolist() == [1.0, 1.0] and metrics["gossipsoup-failed"] == 1


def test_bad_options_fail_at_construction():
    with pytest.raises(ConfigError, match="on_invalid"):
        GossipsoupStrategy(FedAvg(), TINY, on_invalid="ignore")
    with pytest.raises(ConfigError, match="num_clients"):
        GossipsoupStrategy(FedAU(), TINY, num_clients=0)
    with pytest.raises(RunError, match="no current global model"):
        GossipsoupStrategy(FedAvg(), TINY).aggregate_train(1, [reply(1, [1.0, 1.0])])


def test_legacy_adapter_names_bad_replies_and_reads_extras(mlp):
    model, layout = mlp
    start = layout.flatten(model)
    good = to_ndarrays(layout, start + 1)

    def fit(node, arrays, n=5, metrics=None):
        return GridClientProxy(node, None, 1), FitRes(
            Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, metrics or {}
        )

    with pytest.raises(InvalidReplyError, match=r"node 2: it sent 3 arrays, the model's layout has 4"):
        GossipsoupLegacyStrategy(FedAvg(), layout, initial_params=start).aggregate_fit(
            1, [fit(1, good), fit(2, good[:3])], []
        )
    nan = [a.copy() for a in good]
    nan[0][0, 0] = np.nan
    adapter = GossipsoupLegacyStrategy(FedAvg(), layout, on_invalid="reject", initial_params=start)
    params, metrics = adapter.aggregate_fit(1, [fit(1, good), fit(2, nan)], [])
    assert metrics["gossipsoup-rejected"] == 1
    assert np.allclose(parameters_to_ndarrays(params)[0], good[0])

    fisher = torch.rand(layout.size)
    legacy = GossipsoupLegacyStrategy(FisherMerge(), layout, initial_params=start)
    params, _ = legacy.aggregate_fit(1, [fit(1, good, metrics={"fisher": encode_extra(fisher)})], [])
    assert np.allclose(parameters_to_ndarrays(params)[0], good[0])  # one model: the merge is that model
    with pytest.raises(InvalidReplyError, match=r"node 1: no 'fisher' record"):
        legacy.aggregate_fit(2, [fit(1, good)], [])


def test_import_strategies_does_not_need_flwr():
    code = "import sys, strategies; assert not [m for m in sys.modules if m.split('.')[0] == 'flwr']"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
