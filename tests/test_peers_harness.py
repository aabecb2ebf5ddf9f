"""The peers harness (experiments/peers/) without any peer installed: data files, what peers read, the table.

No virtual environment is built and nothing is fetched: the peers' runs are benchmarks (run_peers.py), not
tests; what is checked here is what every peer's number rests on, namely that all of them read the same
clients and test set from one file, and that the table compares what it says it does.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

PEERS = Path(__file__).resolve().parents[1] / "experiments" / "peers"
sys.path.insert(0, str(PEERS))

import peer_common as pc  # noqa: E402
import peer_data  # noqa: E402
import peer_envs  # noqa: E402
import run_peers  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict[str, np.ndarray], Path]:
    arrays = peer_data.cifar_like(train=80, test=30, clients=5, seed=3)
    path = tmp_path_factory.mktemp("peers") / "tiny.npz"
    np.savez(path, allow_pickle=False, **arrays)
    return arrays, path


def test_dirichlet_partition_gives_every_row_an_owner_and_every_client_two_rows():
    labels = np.repeat(np.arange(4), [1, 2, 30, 7])  # a class with one row, one with two
    rng = np.random.default_rng(0)
    owner = peer_data.dirichlet_partition(labels, clients=6, alpha=0.1, rng=rng)
    assert owner.shape == labels.shape and owner.min() == 0 and owner.max() == 5
    assert np.bincount(owner, minlength=6).min() >= 2


def test_the_cifar_like_file_is_seeded_uint8_nchw_with_its_partition(tiny):
    arrays, _ = tiny
    assert arrays["x_train"].shape == (80, 3, 32, 32) and arrays["x_train"].dtype == np.uint8
    assert arrays["x_test"].shape == (30, 3, 32, 32) and list(arrays["input_shape"]) == [3, 32, 32]
    assert sorted(np.unique(arrays["client_train"])) == [0, 1, 2, 3, 4]
    again = peer_data.cifar_like(train=80, test=30, clients=5, seed=3)
    other = peer_data.cifar_like(train=80, test=30, clients=5, seed=4)
    for key in ("x_train", "y_train", "client_train", "x_test"):
        assert np.array_equal(arrays[key], again[key])
    assert not np.array_equal(arrays["x_train"], other["x_train"])


def test_the_class_pattern_survives_the_noise(tiny):
    """Test rows are nearest to their own class's mean training row (the task is learnable)."""
    arrays, _ = tiny
    x, y = arrays["x_train"].reshape(80, -1).astype(np.float64), arrays["y_train"]
    xt, yt = arrays["x_test"].reshape(30, -1).astype(np.float64), arrays["y_test"]
    classes = [c for c in range(10) if (y == c).sum() >= 3]
    means = np.stack([x[y == c].mean(0) for c in classes])
    nearest = np.array(classes)[((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    keep = np.isin(yt, classes)
    assert (nearest[keep] == yt[keep]).mean() > 0.8


def test_every_peer_and_gossipsoup_read_the_same_clients_and_inputs(tiny):
    arrays, path = tiny
    data = pc.load(str(path))
    sizes = np.bincount(arrays["client_train"])
    assert [len(y) for _, y in data.clients] == sizes.tolist()
    # client 2's rows, in file order, scaled by 1/255 (uint8 pixels as gossipsoup scales them)
    rows = np.flatnonzero(arrays["client_train"] == 2)
    x2, y2 = data.clients[2]
    assert torch.equal(y2, torch.from_numpy(arrays["y_train"][rows]))
    assert torch.allclose(x2, torch.from_numpy(arrays["x_train"][rows].astype(np.float32)) / 255.0, atol=0, rtol=0)
    assert float(x2.max()) <= 1.0 and x2.shape[1:] == (3, 32, 32)

    from sim.data.federated import load_federated_data

    dataset_cfg = OmegaConf.create(
        {"name": "npz", "path": str(path), "val_fraction": 0, "test_fraction": 0.2, "input_shape": None}
        | {"layout": "auto", "train_classes": None}
    )
    fed = load_federated_data(dataset_cfg, OmegaConf.create({"name": "natural"}), 5, 0)
    assert fed.client_sizes.tolist() == sizes.tolist()
    gx, gy = fed.client(2)
    assert torch.equal(gy, y2)
    assert torch.equal(fed.spec.to_model(gx), x2)
    assert torch.equal(fed.spec.to_model(fed.x_test), data.x_test) and torch.equal(fed.y_test, data.y_test)


def test_the_gossipsoup_command_composes_to_the_workload(tiny):
    _, path = tiny
    work = pc.WORKLOADS["cifar"]
    args = run_peers.gossipsoup_args(work, path, 5, 7, Path("/tmp/unused"))
    assert args[:2] == ["-m", "sim"]
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[a for a in args[2:] if not a.startswith("hydra.")])
    assert (cfg.model.name, cfg.rounds, cfg.seed, cfg.num_clients) == ("lenet", 20, 7, 5)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (1, 10, 0.1)
    assert (cfg.participation.clients_per_round, cfg.partition.name, cfg.dataset.val_fraction) == (10, "natural", 0)
    mlp = run_peers.gossipsoup_args(pc.WORKLOADS["w1"], path, 5, 0, Path("/tmp/unused"))
    assert "model.hidden=[64]" in mlp and "participation.clients_per_round=50" in mlp


def test_ratios_table_and_csv(tmp_path):
    rows = [
        {"workload": "w1", "peer": "gossipsoup", "process_s": 2.0, "loop_s": 0.5, "accuracy": 0.25, "cpu_s": 2.1}
        | {"load1": 1.0},
        {"workload": "w1", "peer": "pfl", "process_s": 15.0, "loop_s": 4.0, "accuracy": 0.2, "cpu_s": 14.9}
        | {"load1": 1.5},
        {"workload": "cifar", "peer": "torch", "process_s": 3.0, "loop_s": 1.0, "accuracy": 0.5, "cpu_s": 3.0}
        | {"load1": 2.0},
    ]
    run_peers.add_ratios(rows)
    assert rows[1]["process_x"] == pytest.approx(7.5) and rows[1]["loop_x"] == pytest.approx(8.0)
    assert rows[0]["process_x"] == 1.0 and rows[2]["process_x"] is None  # no gossipsoup row for cifar
    lines = run_peers.format_table(rows).splitlines()
    assert len(lines) == 5 and lines[0].count("|") == lines[1].count("|") == lines[3].count("|")
    assert lines[3] == "| w1 | pfl | 15.00 | 7.50x | 4.00 | 8.00x | 0.2000 | 14.9 | 1.5 |"
    assert lines[4] == "| cifar | torch | 3.00 |  | 1.00 |  | 0.5000 | 3.0 | 2.0 |"
    run_peers.write_csv(rows, tmp_path / "r.csv")
    back = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["peer"] for r in back] == ["gossipsoup", "pfl", "torch"] and float(back[1]["loop_x"]) == 8.0


def test_results_are_read_from_the_result_line_and_from_summary_json(tmp_path):
    out = "noise\n" + pc.RESULT_TAG + json.dumps({"loop_s": 1.5, "accuracy": 0.8125}) + "\nmore noise\n"
    assert run_peers.parse_result("pfl", out, tmp_path) == {"loop_s": 1.5, "accuracy": 0.8125}
    (tmp_path / "summary.json").write_text(json.dumps({"loop_s": 0.4, "final": {"test_accuracy": 0.9}}))
    assert run_peers.parse_result("gossipsoup", "", tmp_path) == {"loop_s": 0.4, "accuracy": 0.9}
    with pytest.raises(RuntimeError, match="PEER_RESULT"):
        run_peers.parse_result("torch", "no result here", tmp_path)


def test_an_environment_is_ready_only_with_the_requirements_it_was_built_from(tmp_path, monkeypatch):
    monkeypatch.setenv("GOSSIPSOUP_PEERS_HOME", str(tmp_path))
    assert not peer_envs.is_ready("pfl")
    (tmp_path / "pfl").mkdir()
    (tmp_path / "pfl" / "ready.json").write_text(json.dumps(peer_envs.REQUIREMENTS["pfl"]))
    assert peer_envs.is_ready("pfl")
    (tmp_path / "pfl" / "ready.json").write_text(json.dumps([["torch==2.13.0"], ["pfl[pytorch]==0.5.0"]]))
    assert not peer_envs.is_ready("pfl")
    assert all(reqs[0] == [peer_envs.TORCH] for reqs in peer_envs.REQUIREMENTS.values())  # torch first, everywhere


def test_the_models_are_gossipsoups_layer_for_layer():
    from sim.models.tabular import MLP
    from sim.models.vision import LeNet5

    ours = pc.LeNet5((3, 32, 32), 10)
    theirs = LeNet5((3, 32, 32), 10)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    mlp, ref = pc.MLP((60,), 10, (64,)), MLP(60, 10, [64])
    ref.load_state_dict(mlp.state_dict())
    x = torch.randn(5, 60)
    assert torch.allclose(mlp(x), ref(x), atol=1e-6)
