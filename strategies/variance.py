"""Variance-corrected gossip averaging (Tian, Al-Ars, Kitsak, Hofstee 2024).

Averaging K models with uncorrelated weights (independent inits, no server) shrinks each layer's
weight variance by about 1/K, below what Xavier init chose, and training stalls on a plateau. The
fix rescales each merged layer around its mean back to a target variance:

    w' = (w - mean(w)) * sqrt((v_t + eps) / (Var(w) + eps)) + mean(w)

Variants, as read in the first author's code (DFL_torch ``model_variance_correct.py``, DFL2):

- ``follow_others``: merge as gossip averaging does (the topology's mixing row, or uniform), target
  ``v_t`` = mean over the *received* models of the layer's variance;
- ``conservative``: merge ``c self + (1 - c) mean(received)``, target
  ``c Var(self) + (1 - c) mean Var(received)``. Var(self) is the node's own variance before the
  merge (DFL_torch reads it after the merge, which looks unintended; DFL2's "self" variant reads it
  before).

``correct="weights"`` rescales weight tensors only (DFL2); ``"weights_and_biases"`` also biases
(DFL_torch). Buffers (e.g. BatchNorm running statistics) are never rescaled, and one-element tensors
are left alone. Variances are unbiased (N-1) over all elements of a tensor, eps = 1e-4 as in
DFL_torch. As an FL server rule all K models count as received: the merge is their average and the
target their mean variance.
"""

from __future__ import annotations

import torch

from sim.errors import ConfigError
from sim.layout import Layout

from .base import AggregationInfo, State, Strategy, check_positive, check_unit_interval, weighted_average
from .gossip import GOSSIP_WEIGHTS, uniform_rows

VARIANTS = ("follow_others", "conservative")
CORRECTED = {"weights": ("weight",), "weights_and_biases": ("weight", "bias")}


def rescale_to_variance(merged: torch.Tensor, target: torch.Tensor, layout: Layout, kinds: tuple[str, ...],
                        eps: float) -> torch.Tensor:
    """Rescale each corrected tensor of ``merged [..., P]`` to the variance ``target[..., layer]``.

    Works on one model ``[P]`` with ``target [L]`` and on stacks ``[N, P]`` with ``[N, L]``.
    """
    out = merged.clone()
    for j, spec in enumerate(s for s in layout.specs if s.kind in kinds):
        if spec.numel < 2:
            continue
        w = merged[..., spec.slice]
        mean = w.mean(dim=-1, keepdim=True)
        var = w.var(dim=-1, keepdim=True)
        scale = torch.sqrt((target[..., j:j + 1] + eps) / (var + eps))
        out[..., spec.slice] = (w - mean) * scale + mean
    return out


def layer_variances(models: torch.Tensor, layout: Layout, kinds: tuple[str, ...]) -> torch.Tensor:
    """``[..., L]``: the unbiased variance of each corrected tensor of each model."""
    cols = [models[..., s.slice].var(dim=-1) if s.numel > 1 else models.new_zeros(models.shape[:-1])
            for s in layout.specs if s.kind in kinds]
    return torch.stack(cols, dim=-1)


class VarianceCorrected(Strategy):
    name = "variance_corrected"

    def __init__(self, variant: str = "follow_others", c: float = 0.5, correct: str = "weights",
                 weights: str = "mixing", eps: float = 1e-4):
        if variant not in VARIANTS:
            raise ConfigError("strategy.variant", variant, f"one of {', '.join(VARIANTS)}")
        if correct not in CORRECTED:
            raise ConfigError("strategy.correct", correct, f"one of {', '.join(CORRECTED)}")
        if weights not in GOSSIP_WEIGHTS:
            raise ConfigError("strategy.weights", weights, f"one of {', '.join(GOSSIP_WEIGHTS)}")
        self.variant, self.correct, self.weights = variant, correct, weights
        self.c = check_unit_interval(self.name, "c", c, closed_right=True)
        self.eps = check_positive(self.name, "eps", eps, allow_zero=True)
        self.kinds = CORRECTED[correct]

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        k = len(models)
        variances = layer_variances(models, info.layout, self.kinds)  # [K, L]
        if info.self_index is None or k == 1:  # FL server, or a node that received nothing
            merged = weighted_average(models, torch.ones(k, dtype=torch.float64))
            return rescale_to_variance(merged, variances.mean(0), info.layout, self.kinds, self.eps), state
        others = torch.ones(k, dtype=torch.bool)
        others[info.self_index] = False
        target = variances[others].mean(0)
        if self.variant == "conservative":
            merged = self.c * models[info.self_index] + (1 - self.c) * models[others].mean(0)
            target = self.c * variances[info.self_index] + (1 - self.c) * target
        else:
            use_mixing = self.weights == "mixing" and info.mixing_weights is not None
            w = info.mixing_weights.to(torch.float64) if use_mixing else torch.ones(k, dtype=torch.float64)
            merged = weighted_average(models, w)
        return rescale_to_variance(merged, target, info.layout, self.kinds, self.eps), state

    def aggregate_all(self, received: torch.Tensor, models: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Every node's merge and per-layer rescaling at once, from the sparse ``[N, N]`` matrix of
        what each node received (see ``sim.gossip.sync.received_matrix``): the received models'
        mean and mean layer variance are two sparse products, the rescaling one pass over ``[N, P]``.
        Equal to calling :meth:`aggregate` node by node; nodes that received nothing keep their model."""
        received = received.coalesce()
        rows, cols = received.indices()
        off = rows != cols
        n = models.shape[0]
        count = torch.bincount(rows[off], minlength=n)
        others = torch.sparse_coo_tensor(received.indices()[:, off], 1.0 / count[rows[off]].to(models.dtype),
                                         received.shape, check_invariants=False).coalesce()
        variances = layer_variances(models, layout, self.kinds)  # [N, L]
        mean_received_var = torch.sparse.mm(others, variances)
        if self.variant == "conservative":
            merged = self.c * models + (1 - self.c) * torch.sparse.mm(others, models)
            target = self.c * variances + (1 - self.c) * mean_received_var
        else:
            mixing = received if self.weights == "mixing" else uniform_rows(received)
            merged, target = torch.sparse.mm(mixing.to(models.dtype), models), mean_received_var
        out = rescale_to_variance(merged, target, layout, self.kinds, self.eps)
        alone = count == 0
        out[alone] = models[alone]
        return out
