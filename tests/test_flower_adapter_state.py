"""The Flower adapters' state across rounds, counters and reply checks, with hand-computed numbers.

Complements tests/test_flower_adapter.py (FedAU's 1-D per-client state) with rules whose state has
other shapes (MIFA's ``[N, P]`` memory, FedAvgM's ``[P]`` momentum), empty rounds, boundary sample
counts and the legacy adapter's failure handling. Replies are real Flower messages and FitRes.
"""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server.client_manager import SimpleClientManager  # noqa: E402
from flwr.server.compat.grid_client_proxy import GridClientProxy  # noqa: E402

from sim.errors import ConfigError  # noqa: E402
from sim.flower_client import model_message  # noqa: E402
from sim.layout import Layout  # noqa: E402
from strategies import MIFA, AggregationInfo, FedAvg, FisherMerge, GreedySoup, ServerOptimizer  # noqa: E402
from strategies.flower import (  # noqa: E402
    REQUIRES_KEY,
    ClientUpdate,
    GossipsoupStrategy,
    InvalidReplyError,
    to_arrayrecord,
)
from strategies.flower_legacy import GossipsoupLegacyStrategy, encode_extra, to_ndarrays  # noqa: E402
from strategies.soups import UniformSoup  # noqa: E402
from strategies.task_merging import TaskArithmetic  # noqa: E402

TINY = Layout.from_module(torch.nn.Linear(1, 1))  # 2 entries: weight [1, 1], bias [1]


def reply(node, params, n=10, records=None):
    """A client's reply to the server's train message; ``records`` replaces the default content."""
    ins = model_message(TINY, torch.zeros(TINY.size), {"server-round": 1}, node_id=node)
    content = records or {
        "arrays": to_arrayrecord(TINY, torch.tensor(params)),
        "metrics": MetricRecord({"num-examples": n}),
    }
    return Message(RecordDict(content), reply_to=ins)


def failure(node):
    return Message(Error(code=0, reason="client crashed"), reply_to=model_message(TINY, torch.zeros(2), node_id=node))


def flat(record):
    return torch.cat([torch.from_numpy(record[n].numpy()).reshape(-1) for n in TINY.names])


def momentum():
    return ServerOptimizer("avgm", server_lr=1.0, beta1=0.5, weighting="uniform")


# ---- per-client state of other shapes when nodes join late ----------------------------------
def test_mifa_memory_grows_by_a_row_for_a_late_node():
    adapter = GossipsoupStrategy(MIFA(), TINY, initial_params=torch.zeros(2))
    # round 1: memory [[2, 2], [4, 4]], x = mean = 3
    arrays, _ = adapter.aggregate_train(1, [reply(1, [2.0, 2.0]), reply(2, [4.0, 4.0])])
    assert flat(arrays).tolist() == [3.0, 3.0]
    # round 2: node 9 joins with delta 6: memory [[2, 2], [4, 4], [6, 6]], x = 3 + 4
    arrays, _ = adapter.aggregate_train(2, [reply(9, [9.0, 9.0])])
    assert flat(arrays).tolist() == [7.0, 7.0]
    assert adapter.state["memory"].tolist() == [[2.0, 2.0], [4.0, 4.0], [6.0, 6.0]]


def test_fedavgm_momentum_is_kept_when_a_node_joins():
    adapter = GossipsoupStrategy(momentum(), TINY, initial_params=torch.zeros(2))
    arrays, _ = adapter.aggregate_train(1, [reply(1, [2.0, 2.0])])  # m = 2, x = 2
    assert flat(arrays).tolist() == [2.0, 2.0]
    # node 9 joins (N 1 -> 2); the momentum [P] is no per-client entry: m = 0.5 * 2 + 1 = 2, x = 4
    arrays, _ = adapter.aggregate_train(2, [reply(1, [3.0, 3.0]), reply(9, [3.0, 3.0])])
    assert flat(arrays).tolist() == [4.0, 4.0] and adapter.state["m"].tolist() == [2.0, 2.0]


def test_fedavgm_momentum_survives_an_empty_round():
    adapter = GossipsoupStrategy(momentum(), TINY, on_invalid="reject", initial_params=torch.zeros(2))
    adapter.aggregate_train(1, [reply(1, [2.0, 2.0])])  # m = 2, x = 2
    arrays, metrics = adapter.aggregate_train(2, [reply(1, [math.nan, 0.0])])  # all rejected: nothing changes
    assert flat(arrays).tolist() == [2.0, 2.0] and metrics["gossipsoup-aggregated"] == 0
    arrays, _ = adapter.aggregate_train(3, [reply(1, [3.0, 3.0])])  # m = 0.5 * 2 + 1 = 2, x = 4
    assert flat(arrays).tolist() == [4.0, 4.0]


def test_first_round_without_replies_sizes_the_state_for_one_client():
    adapter = GossipsoupStrategy(MIFA(), TINY, initial_params=torch.zeros(2))
    arrays, metrics = adapter.aggregate_train(1, [])
    assert flat(arrays).tolist() == [0.0, 0.0] and metrics["gossipsoup-aggregated"] == 0
    assert adapter.aggregator.num_clients == 1 and adapter.state["memory"].shape == (1, 2)
    fixed = GossipsoupStrategy(MIFA(), TINY, num_clients=3, initial_params=torch.zeros(2))
    fixed.aggregate_train(1, [])
    assert fixed.state["memory"].shape == (3, 2)  # the state a checkpoint saves exists from round 1


def test_fisher_merge_round_with_every_reply_rejected_keeps_the_model():
    adapter = GossipsoupStrategy(FisherMerge(), TINY, on_invalid="reject", initial_params=torch.zeros(2))
    fisher = to_arrayrecord(TINY, torch.ones(2))
    good = {
        "arrays": to_arrayrecord(TINY, torch.tensor([2.0, 2.0])),
        "metrics": MetricRecord({"num-examples": 1}),
        "fisher": fisher,
    }
    arrays, _ = adapter.aggregate_train(1, [reply(1, None, records=good)])
    assert flat(arrays).tolist() == [2.0, 2.0]
    arrays, metrics = adapter.aggregate_train(2, [reply(1, [5.0, 5.0])])  # no Fisher record: rejected
    assert flat(arrays).tolist() == [2.0, 2.0] and metrics["gossipsoup-rejected"] == 1


def test_round_and_layout_reach_the_strategy():
    # DARE draws from the (seed, round) stream and reads the layout's buffers
    dare = TaskArithmetic(method="dare", density=0.5, seed=3)
    adapter = GossipsoupStrategy(dare, TINY, initial_params=torch.zeros(2))
    models = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    arrays, _ = adapter.aggregate_train(4, [reply(1, models[0].tolist(), n=1), reply(2, models[1].tolist(), n=1)])
    info = AggregationInfo(
        client_ids=torch.tensor([0, 1]),
        num_samples=torch.tensor([1.0, 1.0]),
        round=4,
        num_clients=2,
        layout=TINY,
        reference=torch.zeros(2),
    )
    assert torch.equal(flat(arrays), dare.aggregate(models, info, {})[0])
    info.round = 5
    assert not torch.equal(flat(arrays), dare.aggregate(models, info, {})[0])  # the round matters here


# ---- sample counts, odd keys and counters ---------------------------------------------------
def test_zero_examples_is_a_valid_count():
    adapter = GossipsoupStrategy(UniformSoup(), TINY, initial_params=torch.zeros(2))
    arrays, metrics = adapter.aggregate_train(1, [reply(1, [2.0, 2.0], n=0), reply(2, [4.0, 4.0], n=10)])
    assert flat(arrays).tolist() == [3.0, 3.0] and metrics["gossipsoup-rejected"] == 0


def test_infinite_examples_are_rejected():
    adapter = GossipsoupStrategy(FedAvg(), TINY, on_invalid="reject", initial_params=torch.zeros(2))
    arrays, metrics = adapter.aggregate_train(1, [reply(1, [5.0, 5.0], n=math.inf), reply(2, [1.0, 1.0], n=1)])
    assert flat(arrays).tolist() == [1.0, 1.0] and metrics["gossipsoup-rejected"] == 1


def test_boolean_examples_are_named():
    # MetricRecord refuses a bool, so an update built by another adapter carries it
    adapter = GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2))
    with pytest.raises(InvalidReplyError, match=r"'num-examples' is True"):
        adapter.aggregator.aggregate(1, [ClientUpdate(1, to_arrayrecord(TINY, torch.ones(2)), True)])


def test_a_single_array_record_under_another_key_is_the_model():
    adapter = GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2))
    other = {"weights": to_arrayrecord(TINY, torch.tensor([2.0, 2.0])), "metrics": MetricRecord({"num-examples": 1})}
    arrays, _ = adapter.aggregate_train(1, [reply(1, None, records=other), reply(2, [4.0, 4.0], n=1)])
    assert flat(arrays).tolist() == [3.0, 3.0]


def test_the_model_under_its_own_key_is_found_next_to_other_records():
    adapter = GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2))
    content = {
        "arrays": to_arrayrecord(TINY, torch.tensor([2.0, 2.0])),
        "debug": to_arrayrecord(TINY, torch.ones(2)),
        "metrics": MetricRecord({"num-examples": 1}),
    }
    arrays, _ = adapter.aggregate_train(1, [reply(1, None, records=content)])
    assert flat(arrays).tolist() == [2.0, 2.0]


def test_two_unnamed_array_records_are_no_model():
    adapter = GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2))
    two = {"a": to_arrayrecord(TINY, torch.ones(2)), "b": ArrayRecord(), "metrics": MetricRecord({"num-examples": 1})}
    with pytest.raises(InvalidReplyError, match=r"no model ArrayRecord 'arrays'"):
        adapter.aggregate_train(1, [reply(1, None, records=two)])


def test_failures_add_up_over_rounds():
    adapter = GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2))
    adapter.aggregate_train(1, [reply(1, [1.0, 1.0]), failure(2)])
    _, metrics = adapter.aggregate_train(2, [reply(1, [1.0, 1.0]), failure(2), failure(3)])
    assert metrics["gossipsoup-failed"] == 2 and adapter.aggregator.failed_total == 3


def test_invalid_reply_error_keeps_every_problem_and_shows_five():
    err = InvalidReplyError(1, [f"p{i}" for i in range(6)])
    assert err.problems == [f"p{i}" for i in range(6)]
    assert "p4" in str(err) and "p5" not in str(err) and "... and 1 more" in str(err)
    assert "... and" not in str(InvalidReplyError(1, ["a"] * 5))


# ---- the legacy adapter ---------------------------------------------------------------------
def fit(node, values, n=1, metrics=None):
    arrays = to_ndarrays(TINY, torch.tensor(values))
    return GridClientProxy(node, None, 1), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, metrics or {})


def legacy_params(params):
    return np.concatenate([a.reshape(-1) for a in parameters_to_ndarrays(params)]).tolist()


def test_legacy_failures_are_counted_or_stop_the_round():
    adapter = GossipsoupLegacyStrategy(FedAvg(), TINY, initial_params=torch.zeros(2), accept_failures=True)
    params, metrics = adapter.aggregate_fit(1, [fit(1, [1.0, 1.0])], [RuntimeError(), RuntimeError()])
    assert legacy_params(params) == [1.0, 1.0] and metrics["gossipsoup-failed"] == 2.0
    adapter.aggregate_fit(2, [fit(1, [1.0, 1.0])], [RuntimeError()])
    assert adapter.aggregator.failed_total == 3
    strict = GossipsoupLegacyStrategy(FedAvg(), TINY, initial_params=torch.zeros(2), accept_failures=False)
    assert strict.aggregate_fit(1, [fit(1, [1.0, 1.0])], [RuntimeError()]) == (None, {})
    params, metrics = strict.aggregate_fit(1, [fit(1, [1.0, 1.0])], [])
    assert legacy_params(params) == [1.0, 1.0] and metrics["gossipsoup-failed"] == 0.0


def test_legacy_client_metrics_are_aggregated_over_accepted_replies():
    def mean_acc(pairs):
        return {"acc": sum(n * m["acc"] for n, m in pairs) / sum(n for n, _ in pairs)}

    adapter = GossipsoupLegacyStrategy(
        FedAvg(), TINY, initial_params=torch.zeros(2), fit_metrics_aggregation_fn=mean_acc
    )
    _, metrics = adapter.aggregate_fit(
        1, [fit(1, [1.0, 1.0], 1, {"acc": 0.2}), fit(2, [1.0, 1.0], 3, {"acc": 0.6})], []
    )
    assert metrics["acc"] == pytest.approx(0.5)


def test_legacy_nodes_are_keyed_by_their_integer_node_id():
    adapter = GossipsoupLegacyStrategy(FedAvg(), TINY, initial_params=torch.zeros(2))
    adapter.aggregate_fit(1, [fit(11, [1.0, 1.0])], [])
    assert adapter.aggregator.node_index == {11: 0}


def test_legacy_initial_parameters_explicit_wins():
    assert legacy_params(
        GossipsoupLegacyStrategy(FedAvg(), TINY, initial_params=torch.ones(2)).initialize_parameters(
            SimpleClientManager()
        )
    ) == [1.0, 1.0]
    explicit = ndarrays_to_parameters(to_ndarrays(TINY, torch.zeros(2)))
    adapter = GossipsoupLegacyStrategy(FedAvg(), TINY, initial_params=torch.ones(2), initial_parameters=explicit)
    assert legacy_params(adapter.initialize_parameters(SimpleClientManager())) == [0.0, 0.0]


def test_legacy_passes_num_clients_and_validate_on():
    adapter = GossipsoupLegacyStrategy(FedAvg(), TINY, num_clients=1, initial_params=torch.zeros(2))
    with pytest.raises(InvalidReplyError, match=r"node 2: node is beyond num_clients=1"):
        adapter.aggregate_fit(1, [fit(1, [1.0, 1.0]), fit(2, [1.0, 1.0])], [])
    with pytest.raises(ConfigError, match="validate"):
        GossipsoupLegacyStrategy(GreedySoup(), TINY)
    kept = GossipsoupLegacyStrategy(GreedySoup(), TINY, validate=lambda p: -float(p[0]), initial_params=torch.zeros(2))
    params, _ = kept.aggregate_fit(1, [fit(1, [1.0, 1.0]), fit(2, [3.0, 3.0])], [])
    assert legacy_params(params) == [1.0, 1.0]  # 1 scores best, the soup of both (2) scores worse


def test_legacy_configure_fit_registers_nodes_and_asks_for_extras():
    manager = SimpleClientManager()
    for node in (12, 11):
        manager.register(GridClientProxy(node, None, 1))
    adapter = GossipsoupLegacyStrategy(
        FisherMerge(),
        TINY,
        min_available_clients=2,
        min_fit_clients=2,
        on_fit_config_fn=lambda server_round: {"round": server_round},
    )
    pairs = adapter.configure_fit(3, ndarrays_to_parameters(to_ndarrays(TINY, torch.tensor([5.0, 6.0]))), manager)
    assert adapter.aggregator.node_index == {11: 0, 12: 1}
    assert adapter.aggregator.reference.tolist() == [5.0, 6.0]
    assert len(pairs) == 2 and all(ins.config[REQUIRES_KEY] == "fisher" for _, ins in pairs)
    # Flower's own part of the instruction: the global model and the round's config
    assert all(legacy_params(ins.parameters) == [5.0, 6.0] and ins.config["round"] == 3 for _, ins in pairs)
    fisher = {"fisher": encode_extra(torch.ones(2))}
    params, _ = adapter.aggregate_fit(1, [fit(11, [1.0, 1.0], 1, fisher), fit(12, [3.0, 3.0], 1, fisher)], [])
    assert legacy_params(params) == [2.0, 2.0]  # equal Fishers: the plain mean


def test_a_missing_array_alone_is_named():
    adapter = GossipsoupStrategy(FedAvg(), TINY, initial_params=torch.zeros(2))
    weight_only = ArrayRecord({"weight": to_arrayrecord(TINY, torch.ones(2))["weight"]})
    content = {"arrays": weight_only, "metrics": MetricRecord({"num-examples": 1})}
    with pytest.raises(InvalidReplyError, match=r"keys do not match the model's layout \(missing \['bias'\]\)"):
        adapter.aggregate_train(1, [reply(1, None, records=content)])


@pytest.mark.parametrize("num_clients", [True, 2.5, 0])
def test_num_clients_must_be_a_positive_int(num_clients):
    with pytest.raises(ConfigError, match="num_clients"):
        GossipsoupStrategy(MIFA(), TINY, num_clients=num_clients)


def test_a_bad_model_is_rejected_even_when_its_extra_is_fine():
    adapter = GossipsoupStrategy(FisherMerge(), TINY, on_invalid="reject", initial_params=torch.zeros(2))
    fisher = to_arrayrecord(TINY, torch.ones(2))

    def content(params):
        return {
            "arrays": to_arrayrecord(TINY, torch.tensor(params)),
            "metrics": MetricRecord({"num-examples": 1}),
            "fisher": fisher,
        }

    arrays, metrics = adapter.aggregate_train(
        1, [reply(1, None, records=content([math.nan, 0.0])), reply(2, None, records=content([4.0, 4.0]))]
    )
    assert flat(arrays).tolist() == [4.0, 4.0] and metrics["gossipsoup-rejected"] == 1
