"""Gossip averaging (D-PSGD style): a node keeps a weighted average of itself and what it received.

``weights="mixing"`` uses the node's row of the topology's mixing matrix (Metropolis-Hastings by
default, set by ``topology.mixing``), handed in as ``info.mixing_weights``; ``weights="uniform"``
averages the K models equally. As an FL server rule (no topology, no mixing row) it is the uniform
average of the participants, i.e. FedAvg with uniform weighting.

The rule is linear and keeps no state, so the synchronous gossip loop applies it to all nodes at
once as one sparse ``W @ X`` product (``aggregate_all``); the per-node call gives the same numbers.
"""

from __future__ import annotations

import torch

from sim.errors import ConfigError

from .base import AggregationInfo, State, Strategy, weighted_average

GOSSIP_WEIGHTS = ("mixing", "uniform")


class GossipAvg(Strategy):
    name = "gossip_avg"

    def __init__(self, weights: str = "mixing"):
        if weights not in GOSSIP_WEIGHTS:
            raise ConfigError("strategy.weights", weights, f"one of {', '.join(GOSSIP_WEIGHTS)}")
        self.weights = weights

    def row_weights(self, info: AggregationInfo, count: int) -> torch.Tensor:
        if self.weights == "mixing" and info.mixing_weights is not None:
            return info.mixing_weights.to(torch.float64)
        return torch.ones(count, dtype=torch.float64)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        return weighted_average(models, self.row_weights(info, len(models))), state

    def aggregate_all(self, received: torch.Tensor, models: torch.Tensor, layout) -> torch.Tensor:
        """Every node's merge at once: ``received`` is the sparse ``[N, N]`` matrix of what each node
        merges (its row of the mixing matrix restricted to the messages that arrived, the rest of
        the weight on the diagonal), ``models`` the ``[N, P]`` node models."""
        if self.weights == "uniform":
            received = uniform_rows(received)
        return torch.sparse.mm(received, models)


def uniform_rows(matrix: torch.Tensor) -> torch.Tensor:
    """The same sparsity pattern with each row's stored entries set to 1 / (entries in the row)."""
    matrix = matrix.coalesce()
    rows = matrix.indices()[0]
    counts = torch.bincount(rows, minlength=matrix.shape[0]).to(matrix.dtype)
    return torch.sparse_coo_tensor(matrix.indices(), 1.0 / counts[rows], matrix.shape, check_invariants=False).coalesce()
