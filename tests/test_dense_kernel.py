"""The hand-derived dense kernel gives autograd's gradients, and refuses models it cannot serve."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sim.backends.dense_kernel import DenseKernel, dense_layers
from sim.layout import Layout
from sim.models import MLP, LogisticRegression, SmallCNN


def _autograd_reference(model, layout, params, x, y, mask, smoothing):
    grads, losses = [], []
    for p, xb, yb, m in zip(params, x, y, mask, strict=True):
        p = p.clone().requires_grad_(True)
        real = m.bool()
        logits = functional_call(model, layout.to_state_dict(p), (xb[real],))
        loss = F.cross_entropy(logits, yb[real], label_smoothing=smoothing)
        (g,) = torch.autograd.grad(loss, p)
        grads.append(g)
        losses.append(loss.detach())
    return torch.stack(grads), torch.stack(losses)


@pytest.mark.parametrize(
    "model",
    [
        LogisticRegression(5, 3),
        MLP(5, 3, [4, 6]),
        nn.Sequential(
            nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 4, bias=False), nn.Sigmoid(), nn.Identity(), nn.Linear(4, 3)
        ),
    ],
    ids=["logreg", "mlp", "sequential-tanh-sigmoid-nobias"],
)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_dense_kernel_matches_autograd_on_padded_batches(model, smoothing):
    # Prepare: 4 clients, batches padded to 6 rows, client 2 with a single real row
    torch.manual_seed(0)
    layout = Layout.from_module(model)
    params = layout.flatten(model).expand(4, -1) + 0.3 * torch.randn(4, layout.size)
    x, y = torch.randn(4, 6, 5), torch.randint(0, 3, (4, 6))
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    layers = dense_layers(model, layout)
    assert layers is not None
    # Execute
    grads, loss = DenseKernel(layers, layout.size, smoothing)(params, x, y, mask)
    # Assert
    ref_grads, ref_loss = _autograd_reference(model, layout, params, x, y, mask, smoothing)
    assert torch.allclose(grads, ref_grads, atol=1e-6)
    assert torch.allclose(loss, ref_loss, atol=1e-6)


def test_models_outside_the_dense_family_fall_back_to_vmap():
    cnn = SmallCNN((1, 8, 8), 10, [2, 2], 8)
    assert dense_layers(cnn, Layout.from_module(cnn)) is None
    with_norm = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    assert dense_layers(with_norm, Layout.from_module(with_norm)) is None
    ends_in_relu = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    assert dense_layers(ends_in_relu, Layout.from_module(ends_in_relu)) is None
