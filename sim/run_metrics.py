"""What a run measures about its models at an evaluation, for the FL loop and both gossip loops alike.

The FL loop (:mod:`sim.federated`), the driver's gossip loops (:mod:`sim.gossip`) and the partition
actors of partitioned gossip (:mod:`sim.backends.ray_partition`) write the same columns from this one
module, below all of them:

- ``test_accuracy``, ``test_loss`` and, where the data have a validation split, ``val_accuracy``: of the
  global model in FL; in gossip the mean over the evaluated nodes (each node's model tested on the
  whole split), with the spread ``test_accuracy_min`` / ``_max`` / ``_std`` over the same nodes;
- ``weight_var/<layer>``: each weight tensor's variance (unbiased, over its elements), averaged over the
  models; in FL the one global model. Averaging uncorrelated models (independent inits, no server)
  shrinks it by about 1/K per merge (Tian et al. 2024), the "vanishing variance" that variance-corrected
  gossip undoes; in FL it shows how far training moves the weights' scale from the init's;
- ``consensus_distance`` (gossip): the nodes' mean distance to their average model.
"""

from __future__ import annotations

import torch

from sim.layout import Layout
from sim.training import evaluate_many


def accuracy_columns(acc: torch.Tensor, loss: torch.Tensor) -> dict[str, float]:
    """The evaluated nodes' test accuracy spread, from their ``[M]`` accuracies and losses in node order."""
    return {
        "test_accuracy": float(acc.mean()),
        "test_loss": float(loss.mean()),
        "test_accuracy_mean": float(acc.mean()),
        "test_accuracy_min": float(acc.min()),
        "test_accuracy_max": float(acc.max()),
        "test_accuracy_std": float(acc.std()) if len(acc) > 1 else 0.0,
    }


def weight_variances(layout: Layout, params: torch.Tensor) -> torch.Tensor:
    """``[N, L]``: the unbiased variance of each weight tensor of each model (0 for a one-element tensor).

    The quantity variance-corrected gossip restores (``strategies.variance.layer_variances`` with kind
    ``weight``, which a test holds equal); summed over a part of the nodes by the partitioned Ray loop,
    whose driver never holds the models.
    """
    models = params.reshape(-1, layout.size)
    cols = [
        models[:, s.slice].var(dim=-1) if s.numel > 1 else models.new_zeros(len(models))
        for s in layout.of_kind("weight")
    ]
    return torch.stack(cols, dim=-1)


def variance_columns(layout: Layout, mean_variances: torch.Tensor) -> dict[str, float]:
    """The ``weight_var/<layer>`` columns from the ``[L]`` variances averaged over the models."""
    return {
        f"weight_var/{spec.name}": float(v)
        for spec, v in zip(layout.of_kind("weight"), mean_variances, strict=True)
        if spec.numel > 1
    }


def weight_variance_columns(layout: Layout, params: torch.Tensor) -> dict[str, float]:
    """``weight_var/<layer>``: each weight tensor's variance, averaged over the models in ``params``."""
    return variance_columns(layout, weight_variances(layout, params).mean(0))


def node_metrics(
    model,
    layout: Layout,
    params: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    sample: torch.Tensor | None = None,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
) -> dict[str, float]:
    """Spread of the nodes' test accuracy, their mean validation accuracy, consensus distance and weight variance.

    Accuracies are over ``sample`` (``sim.gossip.nodes.evaluated_nodes``) when given; consensus distance and
    weight variance always use every node (they cost one pass over ``[N, P]``). ``val_accuracy`` (when
    ``y_val`` has rows) is the evaluated nodes' mean accuracy on the validation split, what a sweep tunes on.
    """
    evaluated = params if sample is None else params[sample]
    acc, loss = evaluate_many(model, layout, evaluated, x_test, y_test)
    row = accuracy_columns(acc, loss)
    if x_val is not None and y_val is not None and len(y_val):
        row["val_accuracy"] = float(evaluate_many(model, layout, evaluated, x_val, y_val)[0].mean())
    row["consensus_distance"] = float((params - params.mean(0)).norm(dim=1).mean())
    row.update(weight_variance_columns(layout, params))
    return row
