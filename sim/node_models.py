"""What gossip nodes start from and merge with, shared by the driver's loops and the partition actors.

:mod:`sim.gossip` (the loops that run in the driver) and :mod:`sim.backends.ray_partition` (the Ray
actors of partitioned gossip, which the gossip package starts) both build node models and merge
them with the same code, so that their numbers agree; it lives here, below both, so that no backend
imports the gossip package that drives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from sim.layout import Layout
from sim.seeding import torch_generator
from strategies import AggregationInfo


class InitChoice(Protocol):
    """The part of :class:`sim.gossip.config.GossipConfig` that picks the start models."""

    @property
    def shared_init(self) -> bool: ...


def initial_node_params(
    initial: torch.Tensor,
    layout: Layout,
    num_nodes: int,
    cfg: InitChoice,
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


def received_from_entries(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, lost: torch.Tensor, n: int
) -> torch.Tensor:
    """What each node merges, from the entries of an ``[n, n]`` mixing matrix and which of them were lost.

    Row i holds node i's own model with weight (own + lost) and each model it received with its mixing
    weight; a node that received nothing has a lone 1 on the diagonal. Every diagonal entry is stored,
    also when its weight is zero (a partition actor passes its local matrix over own and received rows).
    """
    off = rows != cols
    keep = off & ~lost
    self_weight = torch.zeros(n, dtype=values.dtype).index_add_(0, rows[~keep], values[~keep])
    diag = torch.arange(n)
    indices = torch.cat([torch.stack([rows[keep], cols[keep]]), torch.stack([diag, diag])], dim=1)
    return torch.sparse_coo_tensor(
        indices, torch.cat([values[keep], self_weight]), (n, n), check_invariants=False
    ).coalesce()


def merge_info(
    members: torch.Tensor,
    num_samples: torch.Tensor,
    round_: int,
    num_nodes: int,
    layout: Layout,
    own: torch.Tensor,
    mixing_weights: torch.Tensor,
    extras: dict[str, torch.Tensor],
    validate: Callable[[torch.Tensor], float] | None = None,
) -> AggregationInfo:
    """What a node's merge sees: its own model first (``self_index = 0``), then the models it received."""
    return AggregationInfo(
        client_ids=members,
        num_samples=num_samples,
        round=round_,
        num_clients=num_nodes,
        layout=layout,
        reference=own,
        self_index=0,
        mixing_weights=mixing_weights,
        validate=validate,
        extras=extras,
    )
