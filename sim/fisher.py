"""Diagonal Fisher information of a classifier, for Fisher-weighted merging (Matena & Raffel 2022).

``F = E_x[ sum_y p(y|x) (d/dtheta log p(y|x))^2 ]``: empirical over the inputs, exact over the
labels (the model's own predictive distribution, not the data's labels). With ``J = dz/dtheta`` the
Jacobian of the logits and ``d log p_y / dz = e_y - p``, the per-class gradients are the rows of
``J_y - sum_c p_c J_c``; one ``vmap`` over examples of ``jacrev`` gives all of them at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from .layout import Layout


def diagonal_fisher(
    model: nn.Module, layout: Layout, params: torch.Tensor, x: torch.Tensor, batch_size: int = 256, floor: float = 0.0
) -> torch.Tensor:
    """The diagonal Fisher ``[P]`` of the model with flat ``params`` over the inputs ``x [B, D]``.

    Buffer entries are 0 (they are not parameters); ``floor`` is applied to the parameter entries.
    The model is evaluated in eval mode (its deployed predictive distribution) and restored after.
    """
    params = params.detach()
    if len(x) == 0:
        raise ValueError("diagonal_fisher needs at least one input row")

    state = layout.to_state_dict(params)
    specs = layout.of_kind("weight", "bias")
    weights = {s.name: state[s.name] for s in specs}  # differentiated
    buffers = {s.name: state[s.name] for s in layout.of_kind("buffer")}  # constants (e.g. BatchNorm statistics)

    def logits_of(w: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**buffers, **w}, (xi.unsqueeze(0),)).squeeze(0)  # [C]

    jac_fn = vmap(jacrev(logits_of), in_dims=(None, 0))  # -> {name: [b, C, *shape]}
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros_like(params)
        for lo in range(0, len(x), batch_size):
            xb = x[lo : lo + batch_size]
            parts = jac_fn(weights, xb)
            b, c = parts[specs[0].name].shape[:2]
            jac = params.new_zeros(b, c, len(params))  # [b, C, P], buffer columns 0
            for spec in specs:
                jac[..., spec.slice] = parts[spec.name].reshape(b, c, -1)
            with torch.no_grad():
                probs = F.softmax(functional_call(model, state, (xb,)), dim=-1)  # [b, C]
                mean_jac = torch.einsum("bc,bcp->bp", probs, jac)
                grads = jac - mean_jac.unsqueeze(1)  # [b, C, P]: d log p_c / d theta
                total += torch.einsum("bc,bcp->p", probs, grads.square())
    finally:
        model.train(was_training)
    fisher = total / len(x)
    trainable = layout.trainable_mask(device=fisher.device)
    return torch.where(trainable, fisher.clamp_min(floor), torch.zeros_like(fisher))
