"""Gossip learning loops: equivalences, losses, churn and determinism on small seeded runs."""

from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sim.cli import preflight
from sim.errors import ConfigError
from sim.experiment import build_experiment, validate_config
from sim.gossip import AsyncGossip, SyncGossip
from sim.gossip.config import GossipConfig
from sim.gossip.nodes import initial_node_params
from sim.layout import Layout
from sim.results import MetricsLog
from sim.run import run_experiment
from sim.seeding import torch_generator
from sim.training import evaluate, local_train

SMALL = ("num_clients=8", "model=logreg", "train.epochs=1", "rounds=3", "partition=iid")


def _run(make_cfg, tmp_path, *overrides):
    run_experiment(make_cfg(*SMALL, *overrides), tmp_path)
    return pd.read_csv(tmp_path / "metrics.csv")


def test_sync_gossip_on_complete_graph_equals_fedavg_with_full_participation(make_cfg, tmp_path):
    fl = _run(make_cfg, tmp_path / "fl", "participation.clients_per_round=8", "strategy.weighting=uniform")
    gl = _run(
        make_cfg, tmp_path / "gl", "mode=gossip", "topology=complete", "strategy=gossip_avg", "strategy.weights=uniform"
    )
    assert np.allclose(fl["test_accuracy"], gl["test_accuracy"], atol=1e-6)
    assert np.allclose(fl["test_loss"], gl["test_loss"], atol=1e-5)
    assert np.allclose(gl["test_accuracy_min"], gl["test_accuracy_max"])  # all nodes agree
    assert (gl["consensus_distance"] < 1e-4).all()
    assert np.allclose(fl["val_accuracy"], gl["val_accuracy"], atol=1e-6)  # FL's global model is every node's
    for column in [c for c in fl.columns if c.startswith("weight_var/")]:
        assert np.allclose(fl[column], gl[column], rtol=1e-4), column


@pytest.mark.parametrize("schedule", ["sync", "async"])
def test_val_accuracy_is_the_evaluated_nodes_mean_on_the_validation_split(make_cfg, schedule):
    # Prepare: independent inits on a ring, so that the nodes disagree; 3 of the 8 nodes evaluated
    cfg = make_cfg(*SMALL, "mode=gossip", "topology=ring", "gossip.shared_init=false", "gossip.eval_nodes=3")
    cfg.gossip.schedule = schedule
    exp = build_experiment(cfg)
    exp.backend.setup(exp.setup)
    loop = (SyncGossip if schedule == "sync" else AsyncGossip)(exp, exp.topology, exp.gossip)
    log = MetricsLog(Path("unused.csv"))
    # Execute
    params = loop.run(log, lambda row: None)
    # Assert: each evaluated node's model tested alone on the validation split, then averaged
    data, sample = exp.data, loop.eval_sample
    assert sample is not None and len(sample) == 3 and len(data.y_val) > 0
    each = [evaluate(exp.model, exp.layout, params[i], data.x_val, data.y_val)[0] for i in sample.tolist()]
    assert len(set(each)) > 1  # the nodes disagree, so a mean over other nodes would show
    assert log.rows[-1]["val_accuracy"] == pytest.approx(float(np.mean(each)), abs=1e-6)
    assert all(0 <= row["val_accuracy"] <= 1 for row in log.rows if "test_accuracy" in row)


@pytest.mark.parametrize("drop_prob", [0.0, 0.4])
@pytest.mark.parametrize(
    "strategy",
    [
        ("strategy=gossip_avg",),
        ("strategy=gossip_avg", "strategy.weights=uniform"),
        ("strategy=gossip_avg", "strategy.weights=conservative"),
        ("strategy=variance_corrected",),
        ("strategy=variance_corrected", "strategy.c=0.2"),
        ("strategy=variance_corrected", "strategy.variant=follow_others"),
        ("strategy=variance_corrected", "strategy.variant=follow_others", "strategy.weights=uniform"),
        (
            "strategy=variance_corrected",
            "strategy.variant=conservative",
            "strategy.c=0.3",
            "strategy.correct=weights_and_biases",
        ),
    ],
    ids=[
        "gossip_avg",
        "gossip_avg-uniform",
        "gossip_avg-conservative",
        "variance-reference",
        "variance-reference-c",
        "variance-follow_others",
        "variance-follow_others-uniform",
        "variance-conservative",
    ],
)
def test_whole_graph_merge_equals_per_node_strategy_calls(make_cfg, strategy, drop_prob):
    # Prepare: independent random node models, so every node's merge and rescaling differ
    exp = build_experiment(
        make_cfg(
            *SMALL,
            "mode=gossip",
            "topology=random_regular",
            "topology.degree=3",
            f"gossip.drop_prob={drop_prob}",
            *strategy,
        )
    )
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
    exp = build_experiment(
        make_cfg(
            *SMALL,
            "mode=gossip",
            "topology=ring",
            "strategy=gossip_avg",
            f"gossip.schedule={schedule}",
            "gossip.drop_prob=1.0",
        )
    )
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
    exp = build_experiment(
        make_cfg(
            *SMALL,
            "mode=gossip",
            "topology=ring",
            "strategy=gossip_avg",
            "gossip.schedule=async",
            "gossip.churn=sessions",
            "gossip.mean_online=1.0",
            "gossip.mean_offline=1.0",
            "gossip.delay=exponential",
            "gossip.delay_value=0.5",
        )
    )
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
    args = (
        "mode=gossip",
        "topology=random_regular",
        "topology.degree=3",
        "strategy=variance_corrected",
        "gossip.schedule=async",
        "gossip.protocol=push_pull",
        "gossip.drop_prob=0.2",
        "gossip.delay=uniform",
        "gossip.delay_value=0.3",
        "gossip.churn=probability",
        "gossip.online_prob=0.8",
        "gossip.shared_init=false",
    )
    a = _run(make_cfg, tmp_path / "a", *args).drop(columns=["wall_s"])
    b = _run(make_cfg, tmp_path / "b", *args).drop(columns=["wall_s"])
    c = _run(make_cfg, tmp_path / "c", *args, "seed=1").drop(columns=["wall_s"])
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not a.equals(c)
    assert (a["time"].diff().dropna() > 0).all() and a["messages_sent"].sum() > 0


def test_independent_inits_differ_and_shared_inits_agree(make_cfg, tmp_path):
    shared = _run(make_cfg, tmp_path / "s", "mode=gossip", "topology=ring", "strategy=gossip_avg", "rounds=1")
    indep = _run(
        make_cfg,
        tmp_path / "i",
        "mode=gossip",
        "topology=ring",
        "strategy=gossip_avg",
        "rounds=1",
        "gossip.shared_init=false",
    )
    assert shared["consensus_distance"].iloc[0] < 1e-5 < indep["consensus_distance"].iloc[0]
    assert "weight_var/linear.weight" in indep.columns


@pytest.mark.parametrize("order", ["update_merge", "merge_update"])
@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_batched_async_exchanges_equal_the_event_by_event_simulation(make_cfg, tmp_path, order, backend):
    # Prepare: pushes and pulls with delays, losses and churn, so batches are cut by every kind of conflict
    args = (
        "mode=gossip",
        "num_clients=12",
        "topology=random_regular",
        "topology.degree=3",
        "strategy=variance_corrected",
        "gossip.schedule=async",
        "gossip.protocol=push_pull",
        f"gossip.order={order}",
        "gossip.drop_prob=0.1",
        "gossip.delay=exponential",
        "gossip.delay_value=0.2",
        "gossip.churn=probability",
        "gossip.online_prob=0.9",
        "gossip.shared_init=false",
        f"backend={backend}",
    )
    # Execute
    one_by_one = _run(make_cfg, tmp_path / "single", *args, "gossip.batch_exchanges=false").drop(columns=["wall_s"])
    batched = _run(make_cfg, tmp_path / "batched", *args).drop(columns=["wall_s"])
    # Assert: the same events and counts exactly, the same models to float rounding
    counts = ["round", "time", "num_participants", "messages_sent", "messages_lost", "merges", "bytes_up"]
    pd.testing.assert_frame_equal(one_by_one[counts], batched[counts], check_exact=True)
    assert one_by_one["num_participants"].sum() > 25
    pd.testing.assert_frame_equal(one_by_one, batched, check_exact=False, atol=1e-5, rtol=0)


def test_async_batches_hold_several_deliveries(make_cfg):
    exp = build_experiment(
        make_cfg(
            "mode=gossip",
            "num_clients=40",
            "rounds=3",
            "topology=random_regular",
            "topology.degree=4",
            "strategy=gossip_avg",
            "gossip.schedule=async",
        )
    )
    exp.backend.setup(exp.setup)
    runner = AsyncGossip(exp, exp.topology, exp.gossip)
    runner.run(MetricsLog("/dev/null"), lambda row: None)
    # update_merge (the default order): each delivery trains the receiver's model and the received one
    assert sum(runner.batch_sizes) == runner.counts["trainings"] // 2 == runner.counts["merges"]
    assert max(runner.batch_sizes) >= 3


def test_independent_inits_start_norm_scales_at_one_and_keep_buffers():
    # Prepare: a model with a LayerNorm, a BatchNorm (running statistics) and plain Linear layers
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)
    )
    layout = Layout.from_module(model)
    initial = layout.flatten(model)
    # Execute
    nodes = initial_node_params(initial, layout, 3, GossipConfig(shared_init=False), seed=0)
    # Assert: scales 1, biases 0, buffers as the model's, weight matrices drawn per node
    for name in ("1.weight", "3.weight", "3.running_var"):
        assert torch.equal(layout.view(nodes, name), torch.ones(3, layout.spec(name).numel)), name
    for name in ("0.bias", "1.bias", "2.bias", "3.bias", "3.running_mean"):
        assert torch.equal(layout.view(nodes, name), torch.zeros(3, layout.spec(name).numel)), name
    first = layout.view(nodes, "0.weight").reshape(3, -1)
    assert not torch.equal(first[0], first[1]) and first.abs().max() <= (6 / 9) ** 0.5


@pytest.mark.parametrize("batch", [True, False])
def test_async_update_merge_trains_both_models_before_merging(make_cfg, batch):
    # Prepare: two nodes with different models; node 1 pushes its model to node 0
    exp = build_experiment(
        make_cfg(
            *SMALL,
            "num_clients=2",
            "mode=gossip",
            "topology=complete",
            "strategy=gossip_avg",
            "gossip.schedule=async",
            "backend=vectorized",
            f"gossip.batch_exchanges={str(batch).lower()}",
        )
    )
    exp.backend.setup(exp.setup)
    runner = AsyncGossip(exp, exp.topology, exp.gossip)
    runner.params = torch.randn(2, exp.layout.size, generator=torch.Generator().manual_seed(3))
    own, received = runner.params[0].clone(), runner.params[1].clone()
    # Execute: one delivery
    runner.receive(0, 1, received)
    runner.flush()
    # Assert: node 0 trained its own model (its training 0) and the received one (training 1), then averaged
    x, y = exp.data.client(0)
    by_hand = [
        local_train(exp.model, exp.layout, start, x, y, exp.train, torch_generator(0, "train", n, 0)).params
        for n, start in ((0, own), (1, received))
    ]
    assert torch.allclose(runner.params[0], (by_hand[0] + by_hand[1]) / 2, atol=1e-6)
    assert torch.equal(runner.params[1], received)
    assert runner.trained.tolist() == [2, 0] and runner.counts["trainings"] == 2 and runner.counts["merges"] == 1


def test_async_rows_record_the_training_loss_since_the_previous_evaluation(make_cfg, tmp_path):
    # Prepare / Execute: half-round evaluations, so rows hold a few trainings each
    args = ("mode=gossip", "topology=ring", "strategy=gossip_avg", "gossip.schedule=async", "gossip.eval_interval=0.5")
    rows = _run(make_cfg, tmp_path, *args)
    exp = build_experiment(make_cfg(*SMALL, *args))
    exp.backend.setup(exp.setup)
    runner = AsyncGossip(exp, exp.topology, exp.gossip)
    seen = []
    original = runner.record_losses

    def spy(ids, losses):
        seen.append((ids.clone(), losses.clone()))
        original(ids, losses)

    runner.record_losses = spy
    runner.run(MetricsLog("/dev/null"), lambda row: None)
    # Assert: each row's train_loss is the size-weighted mean of its own trainings, in event order
    ids, losses = torch.cat([i for i, _ in seen]), torch.cat([v for _, v in seen]).double()
    sizes = exp.data.client_sizes[ids].double()
    assert len(ids) == rows["num_participants"].sum() > 20
    bounds = np.cumsum([0, *rows["num_participants"]])
    expected = [
        float((sizes[a:b] * losses[a:b]).sum() / sizes[a:b].sum()) if b > a else np.nan for a, b in pairwise(bounds)
    ]
    assert np.isnan(rows["train_loss"].iloc[0])  # the start: no training yet
    assert rows["train_loss"].iloc[1:].notna().sum() >= 4
    assert np.allclose(rows["train_loss"], expected, rtol=1e-6, equal_nan=True)


def test_gossip_mode_brings_a_gossip_graph_and_rule_that_the_command_line_can_override(make_cfg):
    default = make_cfg("mode=gossip")
    assert (default.mode, default.topology.name, default.strategy.name) == ("gossip", "random_regular", "gossip_avg")
    chosen = make_cfg("mode=gossip", "topology=ring", "strategy=variance_corrected")
    assert (chosen.topology.name, chosen.strategy.name) == ("ring", "variance_corrected")
    fl = make_cfg()
    assert (fl.mode, fl.topology.name, fl.strategy.name) == ("federated", "star", "fedavg")
    # an experiment that picks gossip still lets the command line pick FL
    back = make_cfg("experiment=vanishing_variance", "mode=federated", "topology=star", "strategy=fedavg")
    assert back.mode == "federated" and isinstance(back.mode, str)
    for path in sorted((Path(__file__).parents[1] / "configs" / "experiment").glob("*.yaml")):
        validate_config(make_cfg(f"experiment={path.stem}"))
    with pytest.raises(ConfigError) as err:
        preflight(["mode=foo"])
    assert err.value.field == "mode"


def test_variance_correction_lifts_gossip_off_the_plateau_of_plain_averaging(make_cfg, tmp_path):
    # Prepare: experiments/vanishing_variance.md, scaled down (16 nodes, 40 rounds): independent inits
    small = ("experiment=vanishing_variance", "num_clients=16", "rounds=40", "eval_every=40", "model.hidden=[32,32]")
    # Execute: the reference rule against the same 0.5 / 0.5 merge without the rescaling
    run_experiment(make_cfg(*small, "strategy=variance_corrected"), tmp_path / "vc")
    run_experiment(make_cfg(*small, "strategy=gossip_avg", "strategy.weights=conservative"), tmp_path / "plain")
    corrected, plain = pd.read_csv(tmp_path / "vc" / "metrics.csv"), pd.read_csv(tmp_path / "plain" / "metrics.csv")
    # Assert: plain averaging collapses the weight variance and stalls; the correction keeps it and learns
    var = "weight_var/net.0.weight"
    start = corrected[var].iloc[0]
    assert plain[var].iloc[-1] < 0.1 * start < 0.9 * start < corrected[var].iloc[-1]
    assert corrected["test_accuracy"].iloc[-1] > plain["test_accuracy"].iloc[-1] + 0.05


def test_weight_variance_columns_by_hand_and_as_variance_correction_measures_them():
    from sim.run_metrics import weight_variance_columns, weight_variances
    from strategies.variance import layer_variances

    # Prepare: Linear(2, 2) then Linear(2, 1): weights [0:4] and [6:8], biases [4:6] and [8:9] (not counted)
    layout = Layout.from_module(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)))
    models = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0, 9.0, 9.0, 5.0, 7.0, 9.0],  # variances 5/3 and 2
            [0.0, 0.0, 0.0, 4.0, -9.0, 9.0, 1e6, 1e6, 0.0],  # 4 and 0 (equal values 1e6 apart from the rest)
        ]
    )
    # Execute
    per_model = weight_variances(layout, models)
    columns = weight_variance_columns(layout, models)
    # Assert
    assert torch.allclose(per_model, torch.tensor([[5 / 3, 2.0], [4.0, 0.0]]))
    assert torch.equal(per_model, layer_variances(models, layout, ("weight",)))
    assert columns == pytest.approx({"weight_var/0.weight": (5 / 3 + 4) / 2, "weight_var/1.weight": 1.0})


def test_the_import_circle_finder_sees_circles_through_type_checking_and_not_through_functions(tmp_path):
    from import_cycles import cycles, import_graph

    files = {
        "__init__.py": "from .a import A\n",
        "a.py": "from . import b\nA = 1\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n",
        "c.py": "def f():\n    from .d import D\n",  # function level: no edge
        "d.py": "from pkg import c\nD = 1\n",  # a submodule only: not the package
    }
    (tmp_path / "pkg").mkdir()
    for name, text in files.items():
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.d"] == {"pkg.c"} and graph["pkg.c"] == set() and graph["pkg"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_circles_in_gossip_or_backends_and_no_backend_imports_gossip():
    import ast

    from import_cycles import cycles, import_graph

    root = Path(__file__).resolve().parent.parent
    found = cycles(import_graph(root, "sim"))
    assert found == [], found  # none anywhere in sim/ (the gossip and backend packages were the first to have them)
    for path in sorted((root / "sim" / "backends").glob("*.py")):  # anywhere in the file, functions included
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("sim.gossip", "gossip")), (path.name, node.module)
