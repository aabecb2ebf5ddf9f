"""The vectorized backend reproduces the sequential reference: per client, and over whole runs."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sim.backends import AutoBackend, SequentialBackend, TrainingSetup, VectorizedBackend
from sim.errors import ConfigError
from sim.experiment import build_experiment
from sim.layout import Layout
from sim.run import run_experiment
from sim.training import TrainConfig, local_train

SMALL = ("num_clients=8", "model.hidden=[16]", "rounds=2", "train.epochs=1")


@pytest.mark.parametrize("kernel", ["dense", "vmap"])
@pytest.mark.parametrize("local_steps", [None, 7])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_vectorized_batch_equals_local_train_per_client(make_cfg, local_steps, chunk_size, kernel):
    exp = build_experiment(
        make_cfg(
            "num_clients=7",
            "model.hidden=[16]",
            "partition=dirichlet",
            "partition.alpha=0.3",
            "participation.clients_per_round=7",
        )
    )
    cfg = TrainConfig(
        epochs=2, batch_size=7, lr=0.05, momentum=0.9, weight_decay=1e-3, local_steps=local_steps, label_smoothing=0.1
    )
    setup = dataclasses.replace(exp.setup, train=cfg)
    sizes = (setup.data.offsets[1:] - setup.data.offsets[:-1]).tolist()
    assert len(set(sizes)) > 1 and any(n % 7 for n in sizes)  # uneven clients, partial batches
    backend = VectorizedBackend(chunk_size=chunk_size, kernel=kernel)
    backend.setup(setup)
    assert backend.kernel_used == kernel
    ids = torch.tensor([5, 0, 3, 6, 1, 2, 4])
    torch.manual_seed(1)
    for start in (exp.initial_params, exp.initial_params + 0.01 * torch.randn(7, setup.layout.size)):
        batch = backend.train(ids, start, round_=3)
        starts = start.expand(7, -1) if start.dim() == 1 else start
        for k, c in enumerate(ids.tolist()):
            x, y = setup.data.client(c)
            ref = local_train(setup.model, setup.layout, starts[k], x, y, cfg, setup.generator(3, c))
            gap = (batch.params[k] - ref.params).abs().max()
            assert torch.allclose(batch.params[k], ref.params, atol=1e-5), (c, gap)
            assert abs(float(batch.train_loss[k]) - ref.loss) < 1e-5
            assert int(batch.num_samples[k]) == ref.num_samples
        assert batch.client_ids.tolist() == ids.tolist()


def test_vectorized_extras_match_sequential(make_cfg):
    exp = build_experiment(make_cfg("num_clients=6", "model=logreg", "participation.clients_per_round=3"))
    seq, vec = SequentialBackend(), VectorizedBackend()
    seq.setup(exp.setup)
    vec.setup(exp.setup)
    ids = torch.tensor([2, 4, 1])
    a = seq.train(ids, exp.initial_params, 1, frozenset({"fisher"}))
    b = vec.train(ids, exp.initial_params, 1, frozenset({"fisher"}))
    assert torch.allclose(a.params, b.params, atol=1e-5)
    assert torch.allclose(a.extras["fisher"], b.extras["fisher"], atol=1e-5)
    with pytest.raises(NotImplementedError):
        vec.train(ids, exp.initial_params, 1, frozenset({"hessian"}))


RUNS = {
    "fedavg": ("participation.clients_per_round=5",),
    "sync_gossip": ("mode=gossip", "topology=ring", "strategy=gossip_avg"),
    "fedadam": ("strategy=fedadam", "participation.clients_per_round=5"),
    "fedau": ("strategy=fedau", "participation=bernoulli", "participation.probability=constant", "participation.p=0.5"),
    "variance_corrected": ("mode=gossip", "strategy=variance_corrected", "gossip.shared_init=false"),
    "fisher_merge": ("strategy=fisher_merge", "participation.clients_per_round=5"),
    "async_gossip": (
        "mode=gossip",
        "topology=ring",
        "strategy=gossip_avg",
        "gossip.schedule=async",
        "gossip.delay=exponential",
        "gossip.delay_value=0.3",
    ),
    "cnn_vmap_kernel": ("model=cnn", "model.channels=[2,4]", "model.hidden=8", "participation.clients_per_round=4"),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_whole_run_matches_sequential(make_cfg, tmp_path, name):
    metrics = {}
    for backend in ("sequential", "vectorized"):
        out = tmp_path / backend
        run_experiment(make_cfg(*SMALL, *RUNS[name], f"backend={backend}"), out)
        metrics[backend] = pd.read_csv(out / "metrics.csv")
    seq, vec = metrics["sequential"], metrics["vectorized"]
    assert len(seq) == len(vec) == 3
    for col in ("test_accuracy", "test_loss", "train_loss"):
        assert np.allclose(seq[col], vec[col], atol=1e-5, equal_nan=True), (col, seq[col].tolist(), vec[col].tolist())


def test_batchnorm_model_is_refused_with_the_layer_named():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    layout = Layout.from_module(model)
    setup = TrainingSetup(model=model, layout=layout, data=None, train=TrainConfig(), seed=0)
    with pytest.raises(ConfigError, match="'1'") as info:
        VectorizedBackend().setup(setup)
    assert info.value.field == "backend.name" and "BatchNorm1d" in str(info.value)


def test_auto_backend_picks_sequential_only_for_models_vmap_cannot_train(make_cfg):
    exp = build_experiment(make_cfg("num_clients=4", "model=logreg", "participation.clients_per_round=2"))
    auto = AutoBackend()
    auto.setup(exp.setup)
    assert auto.chosen.name == "vectorized"
    model = nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10))
    bn_setup = dataclasses.replace(exp.setup, model=model, layout=Layout.from_module(model))
    auto = AutoBackend()
    auto.setup(bn_setup)
    assert auto.chosen.name == "sequential"
    start = bn_setup.layout.flatten(model)
    batch = auto.train(torch.tensor([0, 2]), start, 1)
    assert batch.params.shape == (2, bn_setup.layout.size) and torch.isfinite(batch.params).all()


def test_auto_is_the_default_backend(make_cfg, tmp_path):
    summary = run_experiment(make_cfg("num_clients=4", "rounds=1", "participation.clients_per_round=2"), tmp_path)
    assert summary["backend"] == "auto: vectorized"


def test_activation_bytes_counts_every_layer_output_for_one_row_and_leaves_the_model_alone():
    from sim.backends.vectorized import activation_bytes
    from sim.data.inputs import InputSpec, attach_inputs

    # Prepare: 4 -> 3 -> ReLU -> BatchNorm -> 2: outputs of 3 + 3 + 3 + 2 floats per row
    model = attach_inputs(
        nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.Linear(3, 2)), InputSpec((4,))
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Execute / Assert
    assert activation_bytes(model, torch.randn(1, 4)) == 4 * (3 + 3 + 3 + 2)
    assert activation_bytes(model, torch.zeros(0, 4)) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
