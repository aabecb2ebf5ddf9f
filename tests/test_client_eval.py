"""Per-client evaluation (eval.clients, eval.local_test_fraction): the local test split, the scores, the columns,
clients.csv and its resume, refusals. Tiny runs (digits, a few clients, a few rounds), in-process."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_data_leaf import femnist_user, leaf_cfg, write_leaf

from sim.client_eval import (
    EvalConfig,
    distribution_columns,
    evaluated_clients,
    own_model_scores,
    sequential_scores,
    shared_model_scores,
    worst_share_mean,
)
from sim.client_eval.scores import client_rows
from sim.data import load_federated_data
from sim.data.local_test import carve_local_test
from sim.errors import ConfigError
from sim.experiment import build_experiment
from sim.layout import Layout
from sim.resume import read_checkpoint
from sim.run import run_experiment
from sim.run_state import load_state

TINY = ("num_clients=5", "participation.clients_per_round=3", "model.hidden=[8]", "train.epochs=1")
TINY += ("checkpoint.every=null",)
DIGITS = {"name": "digits", "val_fraction": 0.0}
IID = {"name": "iid"}


def _linear(weight, bias):
    """A 2-feature, 2-class linear model and its flat parameters (weight rows then bias)."""
    model = torch.nn.Linear(2, 2)
    layout = Layout.from_module(model)
    params = torch.cat([torch.tensor(weight, dtype=torch.float32).flatten(), torch.tensor(bias, dtype=torch.float32)])
    return model, layout, params


# ---------------------------------------------------------------- the local test split


def test_split_is_seeded_disjoint_from_training_and_takes_max_1_floor_f_n_rows():
    full = load_federated_data(DIGITS, IID, 7, 3)
    a = load_federated_data(DIGITS, IID, 7, 3, local_test_fraction=0.25)
    b = load_federated_data(DIGITS, IID, 7, 3, local_test_fraction=0.25)
    other = load_federated_data(DIGITS, IID, 7, 4, local_test_fraction=0.25)
    assert torch.equal(a.x_local, b.x_local) and torch.equal(a.x, b.x)  # the same seed: the same split
    sizes = full.client_sizes.numpy()
    quota = np.maximum(1, np.floor(0.25 * sizes)).astype(int)
    assert a.local_sizes.tolist() == quota.tolist()
    assert a.client_sizes.tolist() == (sizes - quota).tolist()
    for k in range(7):
        # the client's rows (with their labels) split in two: together exactly its rows before, none twice
        whole = torch.cat([full.client(k)[0], full.client(k)[1][:, None].to(full.x.dtype)], 1)
        parts = [torch.cat([xs, ys[:, None].to(xs.dtype)], 1) for xs, ys in (a.client(k), a.local(k))]
        assert sorted(map(tuple, torch.cat(parts).tolist())) == sorted(map(tuple, whole.tolist()))
    # another seed picks other rows (of at least one client)
    assert not torch.equal(a.x_local, other.x_local)
    # default 0.0: nothing carved, the data are those of before
    assert torch.equal(full.x, load_federated_data(DIGITS, IID, 7, 3, 0.0).x)
    assert full.local_sizes.sum() == 0 and full.x_local.shape == (0, full.x.shape[1])


def test_a_fraction_leaving_a_client_without_training_rows_is_refused_naming_the_client():
    x, y = torch.arange(12.0).reshape(6, 2), torch.zeros(6, dtype=torch.int64)
    with pytest.raises(ConfigError) as info:
        carve_local_test(x, y, torch.tensor([0, 4, 5, 6]), 0.3, 0)  # client 1 has one row: its test takes it
    assert info.value.field == "eval.local_test_fraction" and info.value.value == 0.3
    assert "Client 1 has 1 training row;" in str(info.value) and "(2 clients in all)" in str(info.value)
    with pytest.raises(ConfigError, match="Client 1 has 0 training rows"):  # an empty client has no test row
        carve_local_test(x, y, torch.tensor([0, 4, 4, 6]), 0.5, 0)
    carve_local_test(x, y, torch.tensor([0, 4, 6]), 0.99, 0)  # floor(0.99 n) < n: rows of 2 or more always leave one
    _, _, offsets, _, _, local = carve_local_test(x, y, torch.tensor([0, 4, 6]), 0.5, 0)
    assert offsets.tolist() == [0, 2, 3] and local.tolist() == [0, 2, 3]


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"clients": 0}, "eval.clients"),
        ({"clients": "some"}, "eval.clients"),
        ({"clients": True}, "eval.clients"),
        ({"clients": 2.0}, "eval.clients"),
        ({"local_test_fraction": 1.0}, "eval.local_test_fraction"),
        ({"local_test_fraction": -0.1}, "eval.local_test_fraction"),
        ({"local_test_fraction": float("nan")}, "eval.local_test_fraction"),
        ({"finetune_steps": -1}, "eval.finetune_steps"),
    ],
)
def test_bad_eval_values_are_refused_naming_the_field(block, field):
    with pytest.raises(ConfigError) as info:
        EvalConfig.from_config(block)
    assert info.value.field == field


def test_eval_clients_null_reads_as_none_and_the_accepted_values_parse():
    assert EvalConfig.from_config({"clients": None}).clients is None  # eval.clients=null on the command line
    assert not EvalConfig.from_config({"clients": None}).active
    assert EvalConfig.from_config({"clients": "all"}).clients == "all"
    assert EvalConfig.from_config({"clients": 3}).clients == 3


def test_run_config_checks_happen_before_any_work(make_cfg, tmp_path):
    with pytest.raises(ConfigError) as info:
        run_experiment(make_cfg(*TINY, "eval.clients=0"), tmp_path / "a")
    assert info.value.field == "eval.clients" and not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="has none") as info:  # per-client evaluation without local test rows
        build_experiment(make_cfg(*TINY, "eval.clients=all"))
    assert info.value.field == "eval.local_test_fraction"


def test_leaf_per_user_test_rows_are_the_clients_local_test_with_partition_natural(tmp_path):
    root = tmp_path / "leaf"
    write_leaf(root / "train" / "a.json", {"u1": femnist_user(1, 3), "u2": femnist_user(2, 4)})
    test_users = {"u2": femnist_user(2, 2, 1), "u9": femnist_user(9, 1), "u1": femnist_user(1, 1)}
    write_leaf(root / "test" / "t.json", test_users)
    data = load_federated_data(leaf_cfg(root), {"name": "natural"}, 2, 0)
    assert data.local_sizes.tolist() == [1, 2]  # u1's one test row, u2's two; u9 (no training rows) only pooled
    assert data.x_local[:, 0].tolist() == [1, 2, 2] and data.y_local.tolist() == [0, 1, 2]
    assert data.client_sizes.tolist() == [3, 4] and len(data.y_test) == 4
    carved = load_federated_data(leaf_cfg(root), {"name": "natural"}, 2, 0, local_test_fraction=0.34)
    assert carved.local_sizes.tolist() == [1, 1] and carved.client_sizes.tolist() == [2, 3]  # the setting wins


# ---------------------------------------------------------------- the scores


def test_scores_by_hand_and_every_path_agrees():
    # logits = x @ W.T + b with W = I, b = 0: the predicted class is the larger feature
    model, layout, params = _linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 3.0], [1.0, 0.0], [0.0, 5.0]])
    y = torch.tensor([0, 0, 1, 0, 1])
    lo, n = torch.tensor([0, 3]), torch.tensor([3, 2])
    # client 0: rows 0-2 predict 0, 1, 0 (a tie goes to class 0) against 0, 0, 1: 1 of 3; client 1: 2 of 2
    correct, loss_sum = shared_model_scores(model, layout, params, x, y, lo, n)
    assert correct.tolist() == [1, 2]
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(1)), math.log(2), math.log(1 + math.exp(-1))]
    ce.append(math.log(1 + math.exp(-5)))
    assert loss_sum.tolist() == pytest.approx([ce[0] + ce[1] + ce[2], ce[3] + ce[4]], rel=1e-6)
    stacked = params.expand(2, -1)
    own = own_model_scores(model, layout, stacked, x, y, lo, n, chunk=1)
    assert own[0].tolist() == [1, 2] and own[1].tolist() == pytest.approx(loss_sum.tolist(), rel=1e-6)
    acc, loss = sequential_scores(model, layout, stacked, x, y, lo, n)
    assert acc.tolist() == [1 / 3, 1.0] and loss.tolist() == pytest.approx((loss_sum / n).tolist(), rel=1e-6)
    cols = distribution_columns(correct, loss_sum, n)
    assert cols["client_accuracy_mean"] == pytest.approx(2 / 3)
    assert cols["client_accuracy_weighted"] == 3 / 5
    assert cols["client_accuracy_std"] == pytest.approx(1 / 3)  # population std of (1/3, 1)
    assert cols["client_accuracy_min"] == 1 / 3 and cols["client_accuracy_max"] == 1.0
    assert cols["client_accuracy_p10"] == 1 / 3 and cols["client_accuracy_median"] == pytest.approx(2 / 3)
    assert cols["client_loss_weighted"] == pytest.approx(sum(ce) / 5)


def test_client_rows_place_each_clients_rows_and_a_kept_placement_scores_the_same():
    # the evaluated clients' local test blocks are not contiguous (a sample skips clients) and one is empty
    lo, n = torch.tensor([5, 0, 9]), torch.tensor([2, 0, 3])
    rows, owner = client_rows(lo, n)
    assert rows.tolist() == [5, 6, 9, 10, 11] and owner.tolist() == [0, 0, 2, 2, 2]
    model, layout, params = _linear([[1.0, -1.0], [0.5, 2.0]], [0.1, -0.2])
    x = torch.randn(12, 2, generator=torch.Generator().manual_seed(3)) * torch.tensor([1.0, 1e6])
    y = torch.tensor([0, 1] * 6)
    fresh = shared_model_scores(model, layout, params, x, y, lo, n, chunk=2)
    kept = shared_model_scores(model, layout, params, x, y, lo, n, chunk=2, placed=(rows, owner))
    assert kept[0].tolist() == fresh[0].tolist() and kept[1].tolist() == fresh[1].tolist()
    acc, loss = sequential_scores(model, layout, params.expand(3, -1), x, y, lo, n)
    has = n > 0
    assert (kept[0][has].double() / n[has]).tolist() == acc[has].tolist()
    assert (kept[1][has] / n[has]).tolist() == pytest.approx(loss[has].tolist(), rel=1e-5)


def test_each_client_scores_its_own_model_and_vectorized_equals_sequential():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    layout = Layout.from_module(model)
    sizes = torch.tensor([1, 7, 2, 0, 5, 3])  # unequal, one client without rows
    x = torch.randn(int(sizes.sum()), 3) * torch.tensor([1.0, 1e3, 1e-3])
    x[4] = x[3]  # duplicated rows
    y = torch.randint(0, 3, (len(x),))
    lo = torch.cumsum(sizes, 0) - sizes
    stacked = torch.randn(6, layout.size)
    for chunk in (1, 4, 32):
        correct, loss_sum = own_model_scores(model, layout, stacked, x, y, lo, sizes, chunk=chunk)
        acc, loss = sequential_scores(model, layout, stacked, x, y, lo, sizes)
        has = sizes > 0
        assert (correct[has].double() / sizes[has]).tolist() == acc[has].tolist()
        assert (loss_sum[has] / sizes[has]).tolist() == pytest.approx(loss[has].tolist(), rel=1e-5)
        assert correct[3] == 0 and loss_sum[3] == 0
    cols = distribution_columns(correct, loss_sum, sizes)
    assert cols["clients_evaluated"] == 5  # the client without rows is left out of the distribution


def test_worst_10_percent_is_fair_flearns_mean_of_the_lowest_int_tenth():
    acc = np.array([0.9, 0.2, 0.5, 0.1, 0.8, 0.3, 0.7, 0.6, 0.4, 1.0, 0.95, 0.85, 0.05, 0.55, 0.65, 0.75, 0.15, 0.25])
    acc = np.concatenate([acc, [0.35, 0.45]])  # 20 clients: int(20 * 0.1) = 2 worst
    assert worst_share_mean(acc) == pytest.approx(np.mean(np.sort(acc)[: int(len(acc) * 0.1)]))
    assert worst_share_mean(acc) == pytest.approx(0.075)
    assert worst_share_mean(np.array([0.4, 0.2, 0.9])) == 0.2  # fewer than 10 clients: the worst one
    rng = np.random.default_rng(0)
    for k in (10, 19, 29, 30, 70, 123):  # fair_flearn's int(num_user * 0.1), ties included (values on a 1/8 grid)
        acc = rng.integers(0, 9, k) / 8
        assert worst_share_mean(acc) == np.mean(np.sort(acc)[: int(k * 0.1)])


def test_the_client_sample_is_seeded_fixed_and_skips_ineligible_clients():
    eligible = torch.tensor([True, False, True, True, True, False, True])
    assert evaluated_clients("all", eligible, 0).tolist() == [0, 2, 3, 4, 6]
    a = evaluated_clients(3, eligible, 0)
    assert a.tolist() == evaluated_clients(3, eligible, 0).tolist() and len(a) == 3
    assert set(a.tolist()) <= {0, 2, 3, 4, 6} and a.tolist() == sorted(a.tolist())
    assert evaluated_clients(9, eligible, 0).tolist() == [0, 2, 3, 4, 6]


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A default run, the same run with a local test split, and with per-client evaluation of all clients."""
    from hydra import compose, initialize_config_module

    def cfg(*extra):
        with initialize_config_module(config_module="configs", version_base="1.3"):
            return compose(config_name="config", overrides=["progress=false", *TINY, "rounds=3", *extra])

    root = tmp_path_factory.mktemp("client_eval")
    out = {}
    for name, extra in {
        "default": ("checkpoint.every=1",),
        "split": ("eval.local_test_fraction=0.2", "eval_every=2"),
        "clients": ("eval.local_test_fraction=0.2", "eval.clients=all", "eval_every=2", "checkpoint.every=1")
        + ("checkpoint.keep_every=1",),
    }.items():
        run_experiment(cfg(*extra), root / name)
        out[name] = root / name
    out["cfg"] = cfg
    return out


def test_default_run_writes_no_per_client_file_column_or_checkpoint_entry(runs):
    default = runs["default"]
    assert not (default / "clients.csv").exists()
    assert not [c for c in pd.read_csv(default / "metrics.csv").columns if c.startswith("client")]
    assert "clients" not in read_checkpoint(default)


def test_per_client_evaluation_changes_no_other_number(runs):
    split = pd.read_csv(runs["split"] / "metrics.csv")
    clients = pd.read_csv(runs["clients"] / "metrics.csv")
    shared = [c for c in split.columns if c != "wall_s"]
    assert clients[shared].equals(split[shared])


def test_clients_csv_rows_equal_the_clients_models_scored_one_by_one(runs):
    from sim.training import evaluate

    table = pd.read_csv(runs["clients"] / "clients.csv")
    metrics = pd.read_csv(runs["clients"] / "metrics.csv")
    assert list(table.columns) == ["round", "time_s", "client", "accuracy", "loss", "samples"]
    assert sorted(set(table["round"])) == [0, 2, 3]  # eval_every=2 and after the last round
    exp = build_experiment(runs["cfg"]("eval.local_test_fraction=0.2", "eval.clients=all"))
    state = read_checkpoint(runs["clients"])
    last = table[table["round"] == 3]
    assert last["client"].tolist() == list(range(5)) and last["samples"].tolist() == exp.data.local_sizes.tolist()
    for k, acc, loss in zip(last["client"], last["accuracy"], last["loss"], strict=True):
        x, y = exp.data.local(int(k))
        ref_acc, ref_loss = evaluate(exp.model, exp.layout, state["params"], x, y)
        assert acc == ref_acc and loss == pytest.approx(ref_loss, rel=1e-5)
    row = metrics[metrics["round"] == 3].iloc[0]
    assert row["client_accuracy_mean"] == pytest.approx(last["accuracy"].mean())
    assert row["client_accuracy_min"] == last["accuracy"].min()
    weighted = (last["accuracy"] * last["samples"]).sum() / last["samples"].sum()
    assert row["client_accuracy_weighted"] == pytest.approx(weighted)
    assert row["time_s"] == last["time_s"].iloc[0] and metrics["client_eval_s"].notna().sum() == 3


def test_a_resumed_run_continues_clients_csv_byte_for_byte(runs, tmp_path):
    cfg = runs["cfg"]
    extra = ("eval.local_test_fraction=0.2", "eval.clients=all", "eval_every=2", "checkpoint.every=1")
    state = load_state(runs["clients"] / "checkpoint_round1.safetensors")  # the run as it was after round 1
    assert state["round"] == 1 and "clients" in state
    run_experiment(cfg(*extra, "checkpoint.keep_every=1"), tmp_path, resume_state=state)
    assert (tmp_path / "clients.csv").read_bytes() == (runs["clients"] / "clients.csv").read_bytes()


def test_a_rule_with_personal_models_is_scored_with_them(make_cfg):
    from sim.client_eval import ClientEvaluator
    from sim.results import MetricsLog

    exp = build_experiment(make_cfg(*TINY, "eval.local_test_fraction=0.2", "eval.clients=3"))

    class Shifted(type(exp.strategy)):  # client k's own model: the global one with its last bias raised by 10 k
        def personal_models(self, client_ids, params, state):
            models = params.expand(len(client_ids), -1).clone()
            models[:, -1] += 10.0 * client_ids.to(models.dtype)
            return models

    exp.strategy.__class__ = Shifted
    log = MetricsLog(Path("/nonexistent/metrics.csv"))
    evaluator = ClientEvaluator.for_run(exp, log)
    assert evaluator is not None and len(evaluator.ids) == 3
    evaluator.fl(exp.initial_params, None)
    staged = log.clients.staged
    from sim.training import evaluate

    for k, acc in zip(staged["client"], staged["accuracy"], strict=True):
        own = exp.initial_params.clone()
        own[-1] += 10.0 * k
        assert acc == evaluate(exp.model, exp.layout, own, *exp.data.local(k))[0]


@pytest.mark.parametrize("schedule", ["sync", "async"])
def test_gossip_nodes_are_scored_on_their_own_and_on_the_pooled_test(make_cfg, tmp_path, schedule):
    from sim.gossip import run_gossip
    from sim.results import MetricsLog
    from sim.training import evaluate

    cfg = make_cfg(*TINY, "rounds=2", "mode=gossip", f"gossip.schedule={schedule}", "gossip.shared_init=false")
    cfg.eval.clients, cfg.eval.local_test_fraction = 4, 0.2
    exp = build_experiment(cfg)
    exp.backend.setup(exp.setup)
    log = MetricsLog(tmp_path / "metrics.csv")
    params = run_gossip(exp, log, lambda row: None)
    log.flush()
    table = pd.read_csv(tmp_path / "clients.csv")
    last = table[table["round"] == table["round"].max()]
    assert len(last) == 4 and list(table.columns)[-2:] == ["test_accuracy", "test_loss"]
    for k, acc, pooled in zip(last["client"], last["accuracy"], last["test_accuracy"], strict=True):
        assert acc == evaluate(exp.model, exp.layout, params[k], *exp.data.local(int(k)))[0]
        assert pooled == evaluate(exp.model, exp.layout, params[k], exp.data.x_test, exp.data.y_test)[0]


def test_async_fl_writes_the_per_client_rows_at_every_row(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "rounds=4", "eval_every=2", "federated.schedule=async", "async_fl.concurrency=2")
    cfg.async_fl.buffer_size = 2
    cfg.eval.clients, cfg.eval.local_test_fraction = "all", 0.2
    run_experiment(cfg, tmp_path)
    table = pd.read_csv(tmp_path / "clients.csv")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert sorted(set(table["round"])) == metrics["round"].tolist() == [0, 2, 4]
    assert table.groupby("round")["accuracy"].mean().tolist() == pytest.approx(metrics["client_accuracy_mean"].tolist())
