"""Gossip averaging (D-PSGD style): a node keeps a weighted average of itself and what it received.

``weights`` picks the row a node merges with:

- ``mixing``: the node's row of the topology's mixing matrix (Metropolis-Hastings by default, set by
  ``topology.mixing``), handed in as ``info.mixing_weights``;
- ``uniform``: the K models equally;
- ``conservative``: ``c * self + (1 - c) * mean(received)``, whatever the node's degree, and the
  node keeps its own buffers (BatchNorm running statistics), as DFL_torch's
  ``ConservativeModelAverager`` does. With ``c = 0.5`` this is the plain-averaging baseline of the
  variance-correction authors' code (that averager without a corrector).

As an FL server rule (no topology, no mixing row, no "self") it is the uniform average of the
participants, i.e. FedAvg with uniform weighting.

The rule is linear and keeps no state, so the synchronous gossip loop applies it to all nodes at
once as one sparse ``W @ X`` product (``aggregate_all``); the per-node call gives the same numbers.
"""

from __future__ import annotations

import torch

from sim.errors import ConfigError
from sim.layout import Layout

from .base import (
    AggregationInfo,
    State,
    Strategy,
    check_unit_interval,
    weighted_average,
)

GOSSIP_WEIGHTS = ("mixing", "uniform", "conservative")


def merge_weights(weights: str, c: float, info: AggregationInfo, count: int) -> torch.Tensor:
    """``[K]`` weights of one node's merge (see the module docstring); uniform without a "self"."""
    if weights == "mixing" and info.mixing_weights is not None:
        return info.mixing_weights.to(torch.float64)
    w = torch.ones(count, dtype=torch.float64)
    if weights == "conservative" and info.self_index is not None and count > 1:
        w *= (1 - c) / (count - 1)
        w[info.self_index] = c
    return w


def received_mean(received: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sparse ``[N, N]`` operator that averages what each node received (its row's off-diagonal
    entries, each 1 / count), and ``count [N]``. A node that received nothing has an empty row."""
    received = received.coalesce()
    rows, cols = received.indices()
    off = rows != cols
    count = torch.bincount(rows[off], minlength=received.shape[0])
    mean = torch.sparse_coo_tensor(
        received.indices()[:, off], 1.0 / count[rows[off]].to(received.dtype), received.shape, check_invariants=False
    ).coalesce()
    return mean, count


def keep_own_buffers(merged: torch.Tensor, own: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Put the receivers' own buffers back into ``merged`` (``[P]`` or ``[N, P]``, in place)."""
    for spec in layout.of_kind("buffer"):
        merged[..., spec.slice] = own[..., spec.slice]
    return merged


def conservative_merge_all(received: torch.Tensor, models: torch.Tensor, c: float, layout: Layout) -> torch.Tensor:
    """Every node's ``c * self + (1 - c) * mean(received)`` with its own buffers; a node that received
    nothing keeps its model."""
    mean, count = received_mean(received)
    merged = keep_own_buffers(c * models + (1 - c) * torch.sparse.mm(mean.to(models.dtype), models), models, layout)
    alone = count == 0
    merged[alone] = models[alone]
    return merged


def conservative_merge(models: torch.Tensor, info: AggregationInfo, c: float) -> torch.Tensor:
    """One node's ``c * self + (1 - c) * mean(received)`` with its own buffers (``info.self_index`` set)."""
    merged = weighted_average(models, merge_weights("conservative", c, info, len(models)))
    return keep_own_buffers(merged, models[info.self_index], info.layout)


class GossipAvg(Strategy):
    name = "gossip_avg"

    def __init__(self, weights: str = "mixing", c: float = 0.5):
        if weights not in GOSSIP_WEIGHTS:
            raise ConfigError("strategy.weights", weights, f"one of {', '.join(GOSSIP_WEIGHTS)}")
        self.weights = weights
        self.c = check_unit_interval(self.name, "c", c, closed_right=True)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        if self.weights == "conservative" and info.self_index is not None:
            return conservative_merge(models, info, self.c), state
        return weighted_average(models, merge_weights(self.weights, self.c, info, len(models))), state

    def aggregate_all(self, received: torch.Tensor, models: torch.Tensor, layout) -> torch.Tensor:
        """Every node's merge at once: ``received`` is the sparse ``[N, N]`` matrix of what each node
        merges (its row of the mixing matrix restricted to the messages that arrived, the rest of
        the weight on the diagonal), ``models`` the ``[N, P]`` node models."""
        if self.weights == "conservative":
            return conservative_merge_all(received, models, self.c, layout)
        if self.weights == "uniform":
            received = uniform_rows(received)
        return torch.sparse.mm(received, models)


def uniform_rows(matrix: torch.Tensor) -> torch.Tensor:
    """The same sparsity pattern with each row's stored entries set to 1 / (entries in the row)."""
    matrix = matrix.coalesce()
    rows = matrix.indices()[0]
    counts = torch.bincount(rows, minlength=matrix.shape[0]).to(matrix.dtype)
    return torch.sparse_coo_tensor(
        matrix.indices(), 1.0 / counts[rows], matrix.shape, check_invariants=False
    ).coalesce()
