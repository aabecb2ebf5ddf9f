"""Which gossip nodes are tested at each evaluation; node start models and metrics are re-exported here.

The start models (:mod:`sim.node_models`) and the evaluation columns (:mod:`sim.run_metrics`) live below
the loops, where the partition actors and the FL loop use them too.
"""

from __future__ import annotations

import torch

from sim.node_models import initial_node_params
from sim.run_metrics import accuracy_columns, node_metrics, variance_columns, weight_variance_columns
from sim.seeding import torch_generator

__all__ = [
    "accuracy_columns",
    "evaluated_nodes",
    "initial_node_params",
    "node_metrics",
    "variance_columns",
    "weight_variance_columns",
]


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
