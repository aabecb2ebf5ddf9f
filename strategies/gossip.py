"""Gossip averaging (D-PSGD style): a node keeps a weighted average of itself and what it received.

``weights="mixing"`` uses the node's row of the topology's mixing matrix (Metropolis-Hastings by
default, set by ``topology.mixing``), handed in as ``info.mixing_weights``; ``weights="uniform"``
averages the K models equally. As an FL server rule (no topology, no mixing row) it is the uniform
average of the participants, i.e. FedAvg with uniform weighting.

The rule is linear and keeps no state, so the synchronous gossip loop may apply it to all nodes at
once as one sparse ``W @ X`` product (``mixing_matrix``); the per-node call gives the same numbers.
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

    def mixing_matrix(self, topology_matrix: torch.Tensor) -> torch.Tensor:
        """The ``[N, N]`` sparse matrix that applies this rule to every node at once."""
        w = topology_matrix.coalesce()
        if self.weights == "mixing":
            return w
        rows = w.indices()[0]
        degree_plus_one = torch.bincount(rows, minlength=w.shape[0]).to(w.dtype)  # W stores its diagonal
        values = 1.0 / degree_plus_one[rows]
        return torch.sparse_coo_tensor(w.indices(), values, w.shape, check_invariants=False).coalesce()
