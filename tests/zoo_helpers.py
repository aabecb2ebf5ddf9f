"""Tiny federated data sets in storage dtypes, and the check that both backends train a model alike."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from sim.backends.base import TrainingSetup
from sim.backends.sequential import SequentialBackend
from sim.backends.vectorized import VectorizedBackend
from sim.data.inputs import InputSpec
from sim.data.types import FederatedData
from sim.layout import Layout
from sim.models import build_model
from sim.training import TrainConfig


def model_cfg(name: str, **overrides):
    """configs/model/<name>.yaml with ``overrides``, as the run would read it."""
    cfg = OmegaConf.load(f"configs/model/{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def tiny_data(spec: InputSpec, num_classes: int, sizes: list[int], seed: int = 0) -> FederatedData:
    """Clients of ``sizes`` random rows stored as the spec says: uint8 pixels or int64 token ids."""
    g = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    if spec.kind == "tokens":
        assert spec.vocab_size is not None
        x = torch.randint(0, spec.vocab_size, (total, spec.num_values), generator=g)
    else:
        x = torch.randint(0, 256, (total, spec.num_values), generator=g, dtype=torch.uint8)
    y = torch.randint(0, num_classes, (total,), generator=g)
    offsets = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    return FederatedData(
        x=x,
        y=y,
        offsets=offsets,
        x_val=x[:0],
        y_val=y[:0],
        x_test=x[:4],
        y_test=y[:4],
        num_classes=num_classes,
        input_shape=spec.shape,
        name="tiny",
        inputs=spec,
    )


def training_setup(cfg, spec: InputSpec, num_classes: int, sizes: list[int], train: TrainConfig) -> TrainingSetup:
    data = tiny_data(spec, num_classes, sizes)
    model = build_model(cfg, spec, num_classes, seed=0)
    return TrainingSetup(model=model, layout=Layout.from_module(model), data=data, train=train, seed=0)


def assert_backends_agree(setup: TrainingSetup, atol: float = 1e-5) -> None:
    """One round of every client, sequential and vectorized, from one start: same models and losses."""
    start = setup.layout.flatten(setup.model)
    ids = torch.arange(setup.data.num_clients)
    results = []
    for backend in (SequentialBackend(), VectorizedBackend(kernel="vmap")):
        backend.setup(setup)
        results.append(backend.train(ids, start, round_=1))
        backend.close()
    seq, vec = results
    assert not torch.equal(seq.params, start.expand_as(seq.params))  # training moved the models
    gap = (seq.params - vec.params).abs().max().item()
    assert torch.allclose(seq.params, vec.params, atol=atol, rtol=0), gap
    assert torch.allclose(seq.train_loss, vec.train_loss, atol=atol, rtol=0)
