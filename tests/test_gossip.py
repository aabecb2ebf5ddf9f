"""Gossip learning loops: equivalences, losses, churn and determinism on small seeded runs."""

import numpy as np
import pandas as pd
import pytest
import torch

from sim.experiment import build_experiment
from sim.gossip import AsyncGossip, SyncGossip
from sim.results import MetricsLog
from sim.run import run_experiment

SMALL = ("num_clients=8", "model=logreg", "train.epochs=1", "rounds=3", "partition=iid")


def _run(make_cfg, tmp_path, *overrides):
    run_experiment(make_cfg(*SMALL, *overrides), tmp_path)
    return pd.read_csv(tmp_path / "metrics.csv")


def test_sync_gossip_on_complete_graph_equals_fedavg_with_full_participation(make_cfg, tmp_path):
    fl = _run(make_cfg, tmp_path / "fl", "participation.clients_per_round=8", "strategy.weighting=uniform")
    gl = _run(make_cfg, tmp_path / "gl", "mode=gossip", "topology=complete", "strategy=gossip_avg",
              "strategy.weights=uniform")
    assert np.allclose(fl["test_accuracy"], gl["test_accuracy"], atol=1e-6)
    assert np.allclose(fl["test_loss"], gl["test_loss"], atol=1e-5)
    assert np.allclose(gl["test_accuracy_min"], gl["test_accuracy_max"])  # all nodes agree
    assert (gl["consensus_distance"] < 1e-4).all()


@pytest.mark.parametrize("drop_prob", [0.0, 0.4])
@pytest.mark.parametrize("strategy", [
    ("strategy=gossip_avg",), ("strategy=gossip_avg", "strategy.weights=uniform"),
    ("strategy=variance_corrected",), ("strategy=variance_corrected", "strategy.weights=uniform"),
    ("strategy=variance_corrected", "strategy.variant=conservative", "strategy.c=0.3",
     "strategy.correct=weights_and_biases"),
], ids=["gossip_avg", "gossip_avg-uniform", "variance", "variance-uniform", "variance-conservative"])
def test_whole_graph_merge_equals_per_node_strategy_calls(make_cfg, strategy, drop_prob):
    # Prepare: independent random node models, so every node's merge and rescaling differ
    exp = build_experiment(make_cfg(*SMALL, "mode=gossip", "topology=random_regular", "topology.degree=3",
                                    f"gossip.drop_prob={drop_prob}", *strategy))
    runner = SyncGossip(exp, exp.topology, exp.gossip)
    params = torch.randn(8, exp.layout.size) * torch.linspace(0.5, 2.0, 8).unsqueeze(1)
    # Execute: the sparse whole-graph path, then the per-node aggregate calls
    fast, sent, lost = runner.mix(params, 1)
    runner.fast_path = False
    slow, sent_slow, lost_slow = runner.mix(params, 1)
    # Assert
    assert sent == sent_slow == 8 * 3 and lost == lost_slow
    assert (lost > 0) == (drop_prob > 0)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


@pytest.mark.parametrize("schedule", ["sync", "async"])
def test_drop_probability_one_means_no_exchange_changes_a_model(make_cfg, schedule):
    exp = build_experiment(make_cfg(*SMALL, "mode=gossip", "topology=ring", "strategy=gossip_avg",
                                    f"gossip.schedule={schedule}", "gossip.drop_prob=1.0"))
    exp.backend.setup(exp.setup)
    if schedule == "sync":
        runner = SyncGossip(exp, exp.topology, exp.gossip)
        params = torch.randn(8, exp.layout.size)
        mixed, sent, lost = runner.mix(params, 1)
        assert torch.equal(mixed, params) and sent == lost == 16
    else:
        runner = AsyncGossip(exp, exp.topology, exp.gossip)
        final = runner.run(MetricsLog("/dev/null"), lambda row: None)
        start = exp.initial_params.expand(8, -1)
        assert torch.equal(final, start)  # nothing arrived, so nobody merged or trained
        assert runner.counts["sent"] > 0 and runner.counts["lost"] == runner.counts["sent"]


def test_offline_nodes_receive_nothing(make_cfg):
    exp = build_experiment(make_cfg(*SMALL, "mode=gossip", "topology=ring", "strategy=gossip_avg",
                                    "gossip.schedule=async", "gossip.churn=sessions", "gossip.mean_online=1.0",
                                    "gossip.mean_offline=1.0", "gossip.delay=exponential", "gossip.delay_value=0.5"))
    exp.backend.setup(exp.setup)
    runner = AsyncGossip(exp, exp.topology, exp.gossip)
    received_while = []
    original = runner.receive

    def spy(node, sender, model):
        received_while.append(bool(runner.online[node]))
        original(node, sender, model)

    runner.receive = spy
    runner.run(MetricsLog("/dev/null"), lambda row: None)
    assert received_while and all(received_while)
    assert runner.counts["lost"] > 0  # some messages met an offline receiver


def test_async_gossip_is_deterministic_for_a_seed(make_cfg, tmp_path):
    args = ("mode=gossip", "topology=random_regular", "topology.degree=3", "strategy=variance_corrected",
            "gossip.schedule=async", "gossip.protocol=push_pull", "gossip.drop_prob=0.2", "gossip.delay=uniform",
            "gossip.delay_value=0.3", "gossip.churn=probability", "gossip.online_prob=0.8",
            "gossip.shared_init=false")
    a = _run(make_cfg, tmp_path / "a", *args).drop(columns=["wall_s"])
    b = _run(make_cfg, tmp_path / "b", *args).drop(columns=["wall_s"])
    c = _run(make_cfg, tmp_path / "c", *args, "seed=1").drop(columns=["wall_s"])
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not a.equals(c)
    assert (a["time"].diff().dropna() > 0).all() and a["messages_sent"].sum() > 0


def test_independent_inits_differ_and_shared_inits_agree(make_cfg, tmp_path):
    shared = _run(make_cfg, tmp_path / "s", "mode=gossip", "topology=ring", "strategy=gossip_avg", "rounds=1")
    indep = _run(make_cfg, tmp_path / "i", "mode=gossip", "topology=ring", "strategy=gossip_avg", "rounds=1",
                 "gossip.shared_init=false")
    assert shared["consensus_distance"].iloc[0] < 1e-5 < indep["consensus_distance"].iloc[0]
    assert "weight_var/linear.weight" in indep.columns


@pytest.mark.parametrize("order", ["update_merge", "merge_update"])
@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_batched_async_exchanges_equal_the_event_by_event_simulation(make_cfg, tmp_path, order, backend):
    # Prepare: pushes and pulls with delays, losses and churn, so batches are cut by every kind of conflict
    args = ("mode=gossip", "num_clients=12", "topology=random_regular", "topology.degree=3",
            "strategy=variance_corrected", "gossip.schedule=async", "gossip.protocol=push_pull",
            f"gossip.order={order}", "gossip.drop_prob=0.1", "gossip.delay=exponential", "gossip.delay_value=0.2",
            "gossip.churn=probability", "gossip.online_prob=0.9", "gossip.shared_init=false", f"backend={backend}")
    # Execute
    one_by_one = _run(make_cfg, tmp_path / "single", *args, "gossip.batch_exchanges=false").drop(columns=["wall_s"])
    batched = _run(make_cfg, tmp_path / "batched", *args).drop(columns=["wall_s"])
    # Assert: the same events and counts exactly, the same models to float rounding
    counts = ["round", "time", "num_participants", "messages_sent", "messages_lost", "merges", "bytes_up"]
    pd.testing.assert_frame_equal(one_by_one[counts], batched[counts], check_exact=True)
    assert one_by_one["num_participants"].sum() > 25
    pd.testing.assert_frame_equal(one_by_one, batched, check_exact=False, atol=1e-5, rtol=0)


def test_async_batches_hold_several_deliveries(make_cfg):
    exp = build_experiment(make_cfg("mode=gossip", "num_clients=40", "rounds=3", "topology=random_regular",
                                    "topology.degree=4", "strategy=gossip_avg", "gossip.schedule=async"))
    exp.backend.setup(exp.setup)
    runner = AsyncGossip(exp, exp.topology, exp.gossip)
    runner.run(MetricsLog("/dev/null"), lambda row: None)
    assert sum(runner.batch_sizes) == runner.counts["trainings"] == runner.counts["merges"]
    assert max(runner.batch_sizes) >= 3
