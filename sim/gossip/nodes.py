"""Node models at the start of a gossip run, and what is measured about them at each evaluation."""

from __future__ import annotations

import torch

from sim.layout import Layout
from sim.seeding import torch_generator
from sim.training import evaluate_many
from strategies.variance import layer_variances

from .config import GossipConfig


def initial_node_params(
    initial: torch.Tensor,
    layout: Layout,
    num_nodes: int,
    cfg: GossipConfig,
    seed: int,
    nodes: list[int] | None = None,
) -> torch.Tensor:
    """``[N, P]`` start models: the FL init shared by all, or an independent Xavier init per node.

    Independent inits are what a system without a server has, and the setting in which plain
    averaging shrinks weight variance (Tian et al. 2024): weight matrices and kernels Xavier-uniform
    from the node's own stream, biases zero (as DFL_torch does); other 1-D weights (a norm layer's
    scale) and buffers (BatchNorm statistics) as the model's own init, which every node shares, so a
    norm scale starts at 1 and not at 0. ``nodes``: only these nodes' rows (a Ray actor builds its own
    part's models; each row depends on its node's stream alone).
    """
    nodes = list(range(num_nodes)) if nodes is None else nodes
    out = initial.expand(len(nodes), -1).clone()
    if cfg.shared_init:
        return out
    for row, node in enumerate(nodes):
        g = torch_generator(seed, "init", "node", node)
        for spec in layout.of_kind("weight", "bias"):
            view = out[row, spec.slice]
            if spec.kind == "bias":
                view.zero_()
            elif len(spec.shape) >= 2:
                receptive = spec.numel // (spec.shape[0] * spec.shape[1])
                bound = (6.0 / ((spec.shape[0] + spec.shape[1]) * receptive)) ** 0.5
                view.uniform_(-bound, bound, generator=g)
    return out


def evaluated_nodes(num_nodes: int, eval_nodes: int | None, seed: int) -> torch.Tensor | None:
    """The nodes whose test accuracy is measured: all (None), or one seeded sample kept for the run.

    Testing every node of a 10,000-node graph on the pooled test set costs more than training it;
    a fixed sample of nodes gives the accuracy spread at a known cost, and the same nodes at every
    evaluation keep the curve smooth.
    """
    if eval_nodes is None or eval_nodes >= num_nodes:
        return None
    g = torch_generator(seed, "eval", "nodes")
    return torch.randperm(num_nodes, generator=g)[:eval_nodes].sort().values


def node_metrics(
    model,
    layout: Layout,
    params: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    sample: torch.Tensor | None = None,
) -> dict[str, float]:
    """Spread of the nodes' test accuracy, consensus distance and per-layer weight variance.

    Accuracy is over ``sample`` (see :func:`evaluated_nodes`) when given; consensus distance and
    weight variance always use every node (they cost one pass over ``[N, P]``).
    """
    acc, loss = evaluate_many(model, layout, params if sample is None else params[sample], x_test, y_test)
    mean_model = params.mean(0)
    row = accuracy_columns(acc, loss)
    row["consensus_distance"] = float((params - mean_model).norm(dim=1).mean())
    row.update(weight_variance_columns(layout, params))
    return row


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
    """``[N, L]``: the variance of each weight tensor of each model (summed over a part of the nodes by
    the partitioned Ray loop, whose driver never holds the models)."""
    return layer_variances(params.reshape(-1, layout.size), layout, ("weight",))


def weight_variance_columns(layout: Layout, params: torch.Tensor) -> dict[str, float]:
    """``weight_var/<layer>``: each weight tensor's variance, averaged over the models in ``params``.

    This is the quantity that averaging uncorrelated models shrinks (the vanishing variance).
    """
    return variance_columns(layout, weight_variances(layout, params).mean(0))


def variance_columns(layout: Layout, mean_variances: torch.Tensor) -> dict[str, float]:
    """The ``weight_var/<layer>`` columns from the ``[L]`` variances averaged over the nodes."""
    return {
        f"weight_var/{spec.name}": float(v)
        for spec, v in zip(layout.of_kind("weight"), mean_variances, strict=True)
        if spec.numel > 1
    }
