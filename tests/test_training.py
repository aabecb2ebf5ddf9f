"""Local training: the hand-written SGD on flat parameters equals torch.optim.SGD on the module."""

import copy

import pytest
import torch
import torch.nn.functional as F

from sim.layout import Layout
from sim.models import build_model
from sim.training import TrainConfig, batch_schedule, local_train


def _data(n=23, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("momentum, weight_decay, local_steps", [(0.0, 0.0, None), (0.9, 1e-3, None), (0.5, 0.0, 7)])
def test_local_train_matches_torch_optim_sgd(momentum, weight_decay, local_steps):
    x, y = _data()
    model = build_model({"name": "mlp", "hidden": [8]}, (6,), 3, seed=0)
    layout = Layout.from_module(model)
    cfg = TrainConfig(
        epochs=2, batch_size=5, lr=0.1, momentum=momentum, weight_decay=weight_decay, local_steps=local_steps
    )
    result = local_train(model, layout, layout.flatten(model), x, y, cfg, torch.Generator().manual_seed(7))

    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    batches = batch_schedule(len(y), cfg, torch.Generator().manual_seed(7))
    for idx in batches:
        opt.zero_grad()
        F.cross_entropy(reference(x[idx]), y[idx]).backward()
        opt.step()
    assert result.steps == len(batches) == (7 if local_steps else 2 * 5)
    assert torch.allclose(result.params, layout.flatten(reference), atol=1e-6)


def test_batch_schedule_covers_every_row_each_epoch():
    cfg = TrainConfig(epochs=3, batch_size=4)
    batches = batch_schedule(10, cfg, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    for e in range(3):
        assert sorted(torch.cat(batches[3 * e : 3 * e + 3]).tolist()) == list(range(10))


def test_local_train_leaves_input_untouched_and_is_deterministic():
    x, y = _data()
    model = build_model({"name": "logreg"}, (6,), 3, seed=0)
    layout = Layout.from_module(model)
    start = layout.flatten(model)
    before = start.clone()
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.5)
    a = local_train(model, layout, start, x, y, cfg, torch.Generator().manual_seed(3))
    b = local_train(model, layout, start, x, y, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(start, before)
    assert torch.equal(a.params, b.params) and not torch.equal(a.params, start)
    assert a.num_samples == 23 and a.loss > 0
