"""Gossip mixing weights: who averages with whom, and how much.

``W[i, j]`` is the weight node ``i`` gives node ``j``'s model, so one synchronous gossip step is the
sparse product ``W @ X`` on stacked models ``X [N, P]``. Every rule keeps a positive self weight and
makes rows sum to 1:

- ``metropolis_hastings``: ``W_ij = 1 / (1 + max(d_i, d_j))`` on edges, rest on the diagonal.
  Symmetric and doubly stochastic, so plain gossip converges to the exact average.
- ``uniform``: ``W_ij = 1 / (d_i + 1)`` over self and neighbours. Row stochastic only: gossip converges
  to a degree-weighted average (stationary distribution proportional to ``d_i + 1``).
- ``max_degree``: ``W_ij = 1 / (d_max + 1)``, ``W_ii = 1 - d_i / (d_max + 1)``. Doubly stochastic.

Weights are computed from the edge list with vectorized numpy (no ``[N, N]`` dense matrix), in float64,
and handed out as a coalesced float32 torch sparse COO tensor; 100,000 nodes take well under a second.
For a directed graph (the one-peer exponential schedule), ``d_i`` is node ``i``'s out-degree.
"""

from __future__ import annotations

import numpy as np
import torch

MIXING_RULES = ("metropolis_hastings", "uniform", "max_degree")


def directed_pairs(edges: np.ndarray, directed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(receiver, sender) index arrays: both directions of each undirected edge, or ``edges`` as is."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if directed:
        return edges[:, 0].copy(), edges[:, 1].copy()
    return (np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]]))


def mixing_weights(edges: np.ndarray, num_nodes: int, rule: str, directed: bool = False):
    """``(rows, cols, values)`` of W in float64, off-diagonal entries first, then the diagonal."""
    if rule not in MIXING_RULES:
        raise ValueError(f"unknown mixing rule {rule!r}; one of {', '.join(MIXING_RULES)}")
    rows, cols = directed_pairs(edges, directed)
    degree = np.bincount(rows, minlength=num_nodes).astype(np.float64)
    if rule == "metropolis_hastings":
        values = 1.0 / (1.0 + np.maximum(degree[rows], degree[cols]))
        self_weight = 1.0 - np.bincount(rows, weights=values, minlength=num_nodes)
    elif rule == "uniform":
        values = 1.0 / (degree[rows] + 1.0)
        self_weight = 1.0 / (degree + 1.0)
    else:
        d_max = degree.max(initial=0.0)
        values = np.full(rows.shape, 1.0 / (d_max + 1.0))
        self_weight = 1.0 - degree / (d_max + 1.0)
    diag = np.arange(num_nodes, dtype=np.int64)
    return (np.concatenate([rows, diag]), np.concatenate([cols, diag]), np.concatenate([values, self_weight]))


def mixing_matrix(edges: np.ndarray, num_nodes: int, rule: str, directed: bool = False) -> torch.Tensor:
    """W as a coalesced float32 sparse COO tensor ``[N, N]`` (self weights included)."""
    rows, cols, values = mixing_weights(edges, num_nodes, rule, directed)
    indices = torch.from_numpy(np.stack([rows, cols]))
    values = torch.from_numpy(values.astype(np.float32))
    # Indices are made here and in range, so torch's invariant checks would only cost time.
    w = torch.sparse_coo_tensor(indices, values, (num_nodes, num_nodes), check_invariants=False)
    return w.coalesce()


def stationary(rule: str, degree: np.ndarray) -> np.ndarray:
    """The left eigenvector of W for eigenvalue 1 (a probability vector) on an undirected graph.

    Uniform weights make W reversible with respect to ``pi ~ d + 1``; the other rules are doubly
    stochastic, so ``pi`` is uniform. The summary uses it to symmetrise W for its eigenvalues.
    """
    pi = degree.astype(np.float64) + 1.0 if rule == "uniform" else np.ones(len(degree))
    return pi / pi.sum()
