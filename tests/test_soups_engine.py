"""Soups inside the engine: Fisher diagonals computed only when asked (also before a first merge that
comes before any training), validation reaching greedy soups, sparse soups refused in runs and applied
offline. Each expected model is rebuilt here from the pieces (training, Fisher) with the merge
written out independently, on inputs where a rule that skipped its defining step is far off."""

import pandas as pd
import pytest
import torch

from sim.backends import SequentialBackend
from sim.checkpoint import load_checkpoint, save_checkpoint
from sim.errors import ConfigError
from sim.experiment import build_experiment
from sim.fisher import diagonal_fisher
from sim.gossip.nodes import initial_node_params
from sim.merge import main as merge_main
from sim.run import run_experiment

SMALL = ("num_clients=6", "participation.clients_per_round=3", "rounds=2", "model=logreg", "train.epochs=1")
FLOOR = 1e-6


def reference_merge(models: torch.Tensor, fishers: torch.Tensor, target: int) -> torch.Tensor:
    """Matena & Raffel's merge with the reference defaults (uniform coefficients, each Fisher divided by
    its L2 norm, only the target's Fisher floored), written per entry for all-parameter layouts."""
    models, fishers = models.double(), fishers.double()
    num = torch.zeros(models.shape[1], dtype=torch.float64)
    den = torch.zeros_like(num)
    for j in range(len(models)):
        diag = fishers[j].clamp_min(FLOOR) if j == target else fishers[j]
        coeff = 1.0 / float(fishers[j].norm())
        num += coeff * diag * models[j]
        den += coeff * diag
    return num / den


def trained(exp, ids: list[int], start: torch.Tensor, round_: int) -> torch.Tensor:
    """The clients' models after local training, from the reference (sequential) backend."""
    backend = SequentialBackend()
    backend.setup(exp.setup)
    return backend.train(torch.tensor(ids), start, round_).params


def fishers_of(exp, models: torch.Tensor, ids: list[int]) -> torch.Tensor:
    return torch.stack(
        [diagonal_fisher(exp.model, exp.layout, models[k], exp.data.client(c)[0]) for k, c in enumerate(ids)]
    )


# ---- Fisher merging ------------------------------------------------------------------------------
def test_fisher_merge_gets_fisher_diagonals_from_the_backend(make_cfg, tmp_path):
    summary = run_experiment(make_cfg(*SMALL, "strategy=fisher_merge"), tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    model_bytes = summary["num_parameters"] * 4
    assert m["bytes_up"].tolist()[1:] == [3 * 2 * model_bytes] * 2  # each client sends model + Fisher
    assert m["bytes_down"].tolist()[1:] == [3 * model_bytes] * 2
    assert m["test_accuracy"].iloc[-1] > m["test_accuracy"].iloc[0]


def test_fl_fisher_merge_is_the_fisher_weighted_merge_of_the_trained_clients(make_cfg, tmp_path):
    cfg = make_cfg(
        "num_clients=3",
        "participation.clients_per_round=3",
        "rounds=1",
        "model=logreg",
        "strategy=fisher_merge",
        "save_model=true",
        "partition=shards",
        "partition.shards_per_client=1",
    )
    run_experiment(cfg, tmp_path)
    _, saved, _ = load_checkpoint(tmp_path / "model.safetensors")
    exp = build_experiment(cfg)
    ids = [0, 1, 2]
    models = trained(exp, ids, exp.initial_params, 1)
    expected = reference_merge(models, fishers_of(exp, models, ids), target=0)  # FL: the first received model
    assert (expected - models.double().mean(0)).abs().max() > 0.05  # ignoring the Fisher would be far off
    assert torch.allclose(saved.double(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("order", ["update_merge", "merge_update"])
def test_gossip_fisher_merge_runs_in_either_order_and_sends_fishers(make_cfg, tmp_path, order):
    summary = run_experiment(
        make_cfg(*SMALL, "strategy=fisher_merge", "mode=gossip", "topology=ring", f"gossip.order={order}"), tmp_path
    )
    m = pd.read_csv(tmp_path / "metrics.csv")
    message_bytes = 2 * summary["num_parameters"] * 4  # a model and its sender's Fisher
    assert m["messages_sent"].tolist()[1:] == [12, 12]  # 6 nodes on a ring, 2 neighbours each
    assert m["bytes_up"].tolist()[1:] == [12 * message_bytes] * 2
    assert m["test_accuracy"].iloc[-1] > m["test_accuracy"].iloc[0] + 0.1


def test_merge_update_first_merge_uses_the_fishers_of_the_initial_models(make_cfg, tmp_path):
    # independent inits: the first merge (before any training) mixes different models with different Fishers
    cfg = make_cfg(
        "num_clients=4",
        "rounds=1",
        "model=logreg",
        "strategy=fisher_merge",
        "mode=gossip",
        "topology=ring",
        "gossip.order=merge_update",
        "gossip.shared_init=false",
        "save_model=true",
    )
    run_experiment(cfg, tmp_path)
    _, saved, _ = load_checkpoint(tmp_path / "model.safetensors")  # the nodes' mean model
    exp = build_experiment(cfg)
    ids = [0, 1, 2, 3]
    init = initial_node_params(exp.initial_params, exp.layout, 4, exp.gossip, int(cfg.seed))
    fishers = fishers_of(exp, init, ids)
    rows = [[i, (i - 1) % 4, (i + 1) % 4] for i in ids]  # each node and its ring neighbours, itself first
    merged = torch.stack([reference_merge(init[r], fishers[r], target=0) for r in rows]).float()
    plain = torch.stack([init[r].mean(0) for r in rows])
    assert (merged - plain).abs().max() > 0.05
    expected = trained(exp, ids, merged, 1).mean(0)
    assert torch.allclose(saved, expected, atol=1e-4, rtol=0)


# ---- greedy soup ---------------------------------------------------------------------------------
def test_greedy_soup_as_server_rule_and_as_gossip_merge(make_cfg, tmp_path):
    fl = run_experiment(make_cfg(*SMALL, "strategy=greedy_soup"), tmp_path / "fl")
    gl = run_experiment(make_cfg(*SMALL, "strategy=greedy_soup", "mode=gossip", "topology=ring"), tmp_path / "gl")
    assert fl["status"] == gl["status"] == "completed"
    assert fl["final"]["test_accuracy"] > 0.3 and gl["final"]["test_accuracy"] > 0.3


def test_greedy_soup_adds_models_when_the_soup_is_better_than_any_one(make_cfg, tmp_path):
    # one label shard per client: each client's model knows about two classes, their soup knows all ten
    cfg = make_cfg(
        "num_clients=5",
        "participation.clients_per_round=5",
        "rounds=1",
        "model=logreg",
        "strategy=greedy_soup",
        "partition=shards",
        "partition.shards_per_client=1",
    )
    run_experiment(cfg, tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    exp = build_experiment(cfg)
    models = trained(exp, [0, 1, 2, 3, 4], exp.initial_params, 1)
    validate = exp.validation_fn()
    best_single = max(validate(x) for x in models)
    assert best_single < 0.35
    assert m["greedy_kept"].iloc[-1] >= 3
    assert m["val_accuracy"].iloc[-1] > best_single + 0.3  # a soup that never adds stays at best_single


# ---- sparse soup ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [(), ("mode=gossip", "topology=ring")])
def test_sparse_soup_is_refused_in_runs_before_any_work(make_cfg, tmp_path, mode):
    with pytest.raises(ConfigError, match="sim.merge") as exc:
        run_experiment(make_cfg(*SMALL, "strategy=sparse_soup", *mode), tmp_path / "run")
    assert exc.value.field == "strategy"
    assert not (tmp_path / "run").exists()


def test_sparse_soup_merges_masked_checkpoints_offline(make_cfg, tmp_path, capsys):
    paths = []
    for seed in range(3):
        run_experiment(
            make_cfg(
                "num_clients=2",
                "participation.clients_per_round=2",
                "rounds=1",
                "model=logreg",
                "save_model=true",
                "dataset.data_seed=0",
                f"seed={seed}",
            ),
            tmp_path / str(seed),
        )
        paths.append(tmp_path / str(seed) / "model.safetensors")
    layout = load_checkpoint(paths[0])[0]
    g = torch.Generator().manual_seed(0)
    shared = torch.rand(layout.size, generator=g) < 0.5  # the common pruning mask
    models = []
    for path in paths:  # each model also lost a few entries of its own (e.g. pruned again after retraining)
        _, params, meta = load_checkpoint(path)
        own = torch.rand(layout.size, generator=g) < 0.2
        params = params.masked_fill(shared | own, 0.0)
        save_checkpoint(path, layout, params, meta)
        models.append(params)
    models = torch.stack(models)
    zero = models == 0
    merged = {}
    for mask in ("intersection", "union", "first"):
        out = tmp_path / f"{mask}.safetensors"
        args = [*map(str, paths), "--method", "sparse_soup", "--set", f"mask={mask}", "--out", str(out)]
        assert merge_main(args) == 0
        merged[mask] = load_checkpoint(out)[1]
    mean = models.mean(0)
    capsys.readouterr()
    for mask, masked in (("intersection", zero.all(0)), ("union", zero.any(0)), ("first", zero[0])):
        assert torch.equal(merged[mask] == 0, masked | (mean == 0)), mask
        assert torch.allclose(merged[mask][~masked], mean[~masked], atol=1e-7)
    assert int((zero.any(0) & ~zero.all(0)).sum()) > 50  # union zeroes many entries the intersection keeps
    assert not torch.equal(merged["union"], merged["intersection"])
