"""``backend.train``'s frozen entries, per-call TrainConfig and batch stream: the same numbers on every backend.

FedRep trains the head with the body frozen, then the body with the head frozen, each phase with its own
epochs; fine-tuning draws its batches from a stream apart from the round's training. The sequential
reference is checked against ``torch.optim.SGD`` on a module whose frozen parameters have
``requires_grad=False`` (momentum, weight decay and clipping included); the vectorized (dense and vmap
kernels), auto and Ray backends against the reference.
"""

import dataclasses

import pytest
import torch
from torch import nn

from sim.backends import AutoBackend, SequentialBackend, VectorizedBackend
from sim.experiment import build_experiment
from sim.layout import Layout
from sim.seeding import torch_generator
from sim.training import ClientCorrection, TrainConfig, batch_schedule, local_train

IDS = torch.tensor([4, 0, 2, 5])
ROUND = 3
#: plain SGD (the vectorized backend's in-place path) with weight decay, two epochs
PLAIN = TrainConfig(epochs=2, batch_size=5, lr=0.1, weight_decay=0.01)
STEPS = [1, 1, 4, 1]  # OVERRIDE's unequal local work for IDS in ROUND, drawn from (seed, "local_steps", round, client)
OVERRIDE = TrainConfig(
    local_steps=4,
    local_steps_min=1,
    batch_size=5,
    lr=0.1,
    momentum=0.9,
    weight_decay=0.01,
    clip_grad_norm=0.5,
    label_smoothing=0.1,
)


@pytest.fixture(scope="module")
def exp():
    from hydra import compose, initialize_config_module

    overrides = ["num_clients=6", "model.hidden=[8]", "train.batch_size=7", "train.momentum=0.5", "progress=false"]
    overrides.append("participation.clients_per_round=4")
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return build_experiment(compose(config_name="config", overrides=overrides))


def frozen_mask(layout: Layout) -> torch.Tensor:
    """The first layer's weights and the last layer's bias held fixed: FedRep's body phase and more."""
    mask = torch.zeros(layout.size, dtype=torch.bool)
    mask[layout.spec("net.0.weight").slice] = True
    mask[layout.spec(layout.names[-1]).slice] = True
    return mask


def start_models(exp) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return exp.initial_params + 0.05 * torch.randn(len(IDS), exp.layout.size, generator=g)


def trained(backend, exp, correction=None, train=None, stream="train", start=None):
    backend.setup(exp.setup)
    start = start_models(exp) if start is None else start
    batch = backend.train(IDS, start, ROUND, correction=correction, train=train, stream=stream)
    backend.close()
    return batch


def test_sequential_frozen_equals_torch_sgd_with_requires_grad_false():
    # Prepare: a module of two layers, the first frozen; torch.optim.SGD with momentum, weight decay and clipping
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    layout = Layout.from_module(model)
    params = layout.flatten(model)
    x, y = torch.randn(11, 3) * torch.tensor([1.0, 1e3, 1e-3]), torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 1, 2, 0])
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.2, momentum=0.9, weight_decay=0.05, clip_grad_norm=0.3)
    frozen = torch.zeros(layout.size, dtype=torch.bool)
    frozen[layout.spec("0.weight").slice] = frozen[layout.spec("0.bias").slice] = True
    # Execute
    ours = local_train(model, layout, params, x, y, cfg, torch_generator(7, "s", 1, 0), frozen=frozen).params
    ref = layout.load_into(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)), params)
    for p in ref[0].parameters():
        p.requires_grad_(False)
    trainable = [p for p in ref.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    for idx in batch_schedule(len(y), cfg, torch_generator(7, "s", 1, 0)):
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
        nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)
        opt.step()
    # Check: the reference's numbers, and the frozen entries bit for bit as they came
    assert torch.allclose(ours, layout.flatten(ref), atol=1e-6)
    assert torch.equal(ours[frozen], params[frozen])
    assert not torch.allclose(ours[~frozen], params[~frozen])


def test_frozen_batchnorm_buffers_stay_and_the_others_train():
    # Prepare: a BatchNorm layer frozen whole (weights and running statistics)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    layout = Layout.from_module(model)
    params = layout.flatten(model)
    x, y = torch.randn(12, 3), torch.arange(12) % 2
    frozen = torch.zeros(layout.size, dtype=torch.bool)
    for spec in layout:
        frozen[spec.slice] = spec.name.startswith("1.")
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.1, momentum=0.9)
    # Execute
    free = local_train(model, layout, params, x, y, cfg, torch_generator(0, "train", 1, 0)).params
    held = local_train(model, layout, params, x, y, cfg, torch_generator(0, "train", 1, 0), frozen=frozen).params
    # Check: unfrozen, the running mean moves; frozen, every BatchNorm entry is bit for bit the start
    mean = layout.spec("1.running_mean").slice
    assert not torch.equal(free[mean], params[mean])
    assert torch.equal(held[frozen], params[frozen])
    assert not torch.allclose(held[~frozen], params[~frozen])


@pytest.mark.parametrize("override", [OVERRIDE, PLAIN], ids=["momentum_clip", "plain_sgd"])
@pytest.mark.parametrize(
    "backend",
    [VectorizedBackend(kernel="dense", chunk_size=3), VectorizedBackend(kernel="vmap"), AutoBackend()],
    ids=["dense", "vmap", "auto"],
)
def test_every_in_process_backend_equals_the_reference(exp, backend, override):
    # Prepare
    correction = ClientCorrection(prox=0.3, frozen=frozen_mask(exp.layout))
    # Execute
    ref = trained(SequentialBackend(), exp, correction, override, "finetune")
    got = trained(backend, exp, correction, override, "finetune")
    # Check
    assert torch.allclose(got.params, ref.params, atol=1e-5)
    assert torch.allclose(got.train_loss, ref.train_loss, atol=1e-5)
    assert got.num_steps.tolist() == ref.num_steps.tolist()
    assert override is PLAIN or got.num_steps.tolist() == STEPS
    frozen, start = correction.frozen, start_models(exp)
    assert torch.equal(got.params[:, frozen], start[:, frozen])


def test_override_and_stream_are_what_the_reference_draws(exp):
    # Prepare
    plain = trained(SequentialBackend(), exp)
    # Execute
    override = trained(SequentialBackend(), exp, train=OVERRIDE)
    streamed = trained(SequentialBackend(), exp, stream="finetune")
    # Check: the override's step counts; the stream's batches are those of the named generator
    assert plain.num_steps.tolist() != override.num_steps.tolist()
    assert override.num_steps.tolist() == STEPS
    assert not torch.allclose(plain.params, streamed.params)
    x, y = exp.data.client(int(IDS[1]))
    g = torch_generator(exp.setup.seed, "finetune", ROUND, int(IDS[1]))
    alone = local_train(exp.model, exp.layout, start_models(exp)[1], x, y, exp.train, g)
    assert torch.allclose(streamed.params[1], alone.params, atol=1e-6)


@pytest.mark.parametrize("make", [SequentialBackend, VectorizedBackend], ids=["sequential", "vectorized"])
def test_defaults_are_unchanged_bit_for_bit(exp, make):
    # Prepare: the run's config, the "train" stream and nothing frozen are the defaults
    nothing = ClientCorrection(frozen=torch.zeros(exp.layout.size, dtype=torch.bool))
    # Execute
    plain = trained(make(), exp)
    spelled = trained(make(), exp, nothing, dataclasses.replace(exp.train), "train")
    # Check
    assert torch.equal(plain.params, spelled.params)


def test_ray_actors_equal_the_reference(exp, ray_session):
    # Prepare: one actor, every client trained there (none in the driver)
    from sim.backends.ray_backend import RayBackend

    correction = ClientCorrection(prox=0.3, frozen=frozen_mask(exp.layout))
    # Execute
    ref = trained(SequentialBackend(), exp, correction, OVERRIDE, "finetune")
    got = trained(RayBackend(num_actors=1, driver_max_clients=0), exp, correction, OVERRIDE, "finetune")
    # Check
    assert torch.allclose(got.params, ref.params, atol=1e-5)
    assert got.num_steps.tolist() == STEPS
