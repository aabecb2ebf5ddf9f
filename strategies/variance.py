"""Variance-corrected gossip averaging (Tian, Al-Ars, Kitsak, Hofstee 2024).

Averaging K models with uncorrelated weights (independent inits, no server) shrinks each layer's
weight variance by about 1/K, below what Xavier init chose, and training stalls on a plateau. The
fix rescales each merged layer around its mean back to a target variance:

    w' = (w - mean(w)) * sqrt((v_t + eps) / (Var(w) + eps)) + mean(w)

where ``w`` is the merged tensor and ``Var(w)`` its own variance. Variants (``variant``), as read in
the first author's code (DFL_torch ``model_average.py`` / ``model_variance_correct.py``, and DFL2):

- ``reference`` (the default): DFL_torch's ``VC`` preset, ``ConservativeModelAverager(0.5)`` with a
  ``FollowOthers`` corrector. Merge ``c * self + (1 - c) * mean(received)`` (``c = 0.5``; received =
  the neighbours' models only), target ``v_t`` = mean over the received models of the tensor's
  variance; every parameter is rescaled (``correct`` defaults to ``weights_and_biases``);
- ``follow_others``: merge as gossip averaging does (the topology's mixing row, or uniform), the
  same target; weight tensors only by default;
- ``conservative``: merge as ``reference``, target ``c Var(self) + (1 - c) mean Var(received)``.
  Var(self) is the node's own variance before the merge (DFL_torch reads it after the merge, which
  looks unintended; DFL2's "self" variant reads it before).

``correct``: ``weights`` rescales weight tensors (2-D and more, and 1-D parameters not named bias,
e.g. a norm layer's scale), ``weights_and_biases`` also biases; null takes the variant's default.
Buffers (e.g. BatchNorm running statistics) are never rescaled; the ``c * self + (1 - c) * mean``
merge keeps the receiver's own (as DFL_torch does), follow_others averages them with the
parameters. One-element tensors are left alone. Variances are unbiased (N-1) over all elements of
a tensor, eps = 1e-4 as in DFL_torch; eps must be > 0 (with 0 a constant tensor, e.g. zero biases,
gives 0/0). A node that received nothing keeps its model (DFL_torch merges only once models
arrived). As an FL server rule there is no "self": all K models count as received, the merge is
their average and the target their mean variance.
"""

from __future__ import annotations

import torch

from sim.errors import ConfigError
from sim.layout import Layout

from .base import (
    AggregationInfo,
    State,
    Strategy,
    check_positive,
    check_unit_interval,
    weighted_average,
)
from .gossip import (
    GOSSIP_WEIGHTS,
    conservative_merge,
    conservative_merge_all,
    merge_weights,
    received_mean,
    uniform_rows,
)

#: variant -> its default for ``correct``
VARIANTS = {"reference": "weights_and_biases", "follow_others": "weights", "conservative": "weights"}
CORRECTED = {"weights": ("weight",), "weights_and_biases": ("weight", "bias")}


def rescale_to_variance(
    merged: torch.Tensor, target: torch.Tensor, layout: Layout, kinds: tuple[str, ...], eps: float
) -> torch.Tensor:
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
        scale = torch.sqrt((target[..., j : j + 1] + eps) / (var + eps))
        out[..., spec.slice] = (w - mean) * scale + mean
    return out


def layer_variances(models: torch.Tensor, layout: Layout, kinds: tuple[str, ...]) -> torch.Tensor:
    """``[..., L]``: the unbiased variance of each corrected tensor of each model."""
    cols = [
        models[..., s.slice].var(dim=-1) if s.numel > 1 else models.new_zeros(models.shape[:-1])
        for s in layout.specs
        if s.kind in kinds
    ]
    return torch.stack(cols, dim=-1)


class VarianceCorrected(Strategy):
    name = "variance_corrected"

    def __init__(
        self,
        variant: str = "reference",
        c: float = 0.5,
        correct: str | None = None,
        weights: str = "mixing",
        eps: float = 1e-4,
    ):
        if variant not in VARIANTS:
            raise ConfigError("strategy.variant", variant, f"one of {', '.join(VARIANTS)}")
        correct = VARIANTS[variant] if correct is None else correct
        if correct not in CORRECTED:
            raise ConfigError("strategy.correct", correct, f"null or one of {', '.join(CORRECTED)}")
        if weights not in GOSSIP_WEIGHTS:
            raise ConfigError("strategy.weights", weights, f"one of {', '.join(GOSSIP_WEIGHTS)}")
        self.variant, self.correct, self.weights = variant, correct, weights
        self.c = check_unit_interval(self.name, "c", c, closed_right=True)
        self.eps = check_positive(self.name, "eps", eps)  # finite and > 0: with 0, a constant tensor gives 0/0
        self.kinds = CORRECTED[correct]
        # the merge: follow_others uses gossip averaging's row, the others c * self + (1 - c) * mean
        self.merge_rule = weights if variant == "follow_others" else "conservative"

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        k = len(models)
        variances = layer_variances(models, info.layout, self.kinds)  # [K, L]
        if info.self_index is None:  # FL server: every model counts as received
            merged = weighted_average(models, torch.ones(k, dtype=torch.float64))
            return rescale_to_variance(merged, variances.mean(0), info.layout, self.kinds, self.eps), state
        if k == 1:  # a node that received nothing keeps its model
            return models[0].clone(), state
        others = torch.ones(k, dtype=torch.bool)
        others[info.self_index] = False
        target = variances[others].mean(0)
        if self.variant == "conservative":
            target = self.c * variances[info.self_index] + (1 - self.c) * target
        if self.merge_rule == "conservative":
            merged = conservative_merge(models, info, self.c)
        else:
            merged = weighted_average(models, merge_weights(self.merge_rule, self.c, info, k))
        return rescale_to_variance(merged, target, info.layout, self.kinds, self.eps), state

    def aggregate_all(self, received: torch.Tensor, models: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Every node's merge and per-layer rescaling at once, from the sparse ``[N, N]`` matrix of
        what each node received (see ``sim.gossip.sync.received_matrix``): the received models'
        mean and mean layer variance are two sparse products, the rescaling one pass over ``[N, P]``.
        Equal to calling :meth:`aggregate` node by node; nodes that received nothing keep their model."""
        mean, count = received_mean(received)
        variances = layer_variances(models, layout, self.kinds)  # [N, L]
        target = torch.sparse.mm(mean.to(models.dtype), variances)
        if self.variant == "conservative":
            target = self.c * variances + (1 - self.c) * target
        if self.merge_rule == "conservative":
            merged = conservative_merge_all(received, models, self.c, layout)
        else:
            mixing = received if self.merge_rule == "mixing" else uniform_rows(received)
            merged = torch.sparse.mm(mixing.to(models.dtype), models)
        out = rescale_to_variance(merged, target, layout, self.kinds, self.eps)
        alone = count == 0
        out[alone] = models[alone]
        return out
