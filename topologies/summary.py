"""Figures that describe a topology: components, degrees, diameter, spectral gap.

The spectral gap ``1 - |lambda_2|`` of the mixing matrix (second largest eigenvalue modulus) says how
fast plain gossip forgets its start: the consensus error shrinks roughly like ``|lambda_2|^t``. Exact
figures cost ``O(N^3)`` (eigenvalues) or ``O(N E)`` (diameter), so both are exact up to
:data:`EXACT_LIMIT` nodes and estimated above it (flagged ``*_estimated: true``): the diameter by
repeated BFS sweeps (a lower bound), the gap by power iteration on the deflated matrix (the modulus
found is a lower bound on ``|lambda_2|``, so the gap is an upper bound). Graph searches run in
scipy's compiled csgraph routines, not in Python loops.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from .mixing import mixing_weights, stationary

EXACT_LIMIT = 2000
POWER_ITERATIONS = 300
BFS_SWEEPS = 4
DENSE_DEGREE = 50  # mean degree above which exact_diameter uses matrix products


def adjacency(edges: np.ndarray, num_nodes: int) -> sp.csr_matrix:
    """Symmetric 0/1 adjacency in CSR (directed edges are read as undirected)."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    rows, cols = np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]])
    a = sp.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num_nodes, num_nodes))
    a.data[:] = 1  # duplicates (a directed pair both ways) were summed
    return a


def count_components(edges: np.ndarray, num_nodes: int) -> int:
    return int(csgraph.connected_components(adjacency(edges, num_nodes), directed=False)[0])


def _bfs(adj: sp.csr_matrix, source: int) -> np.ndarray:
    return csgraph.shortest_path(adj, unweighted=True, directed=False, indices=source)


def exact_diameter(adj: sp.csr_matrix) -> int:
    """Exact diameter of a connected graph (meant for N <= EXACT_LIMIT).

    Sparse graphs: a BFS from every node in scipy's C code, about ``N * (N + 2E)`` steps (under a
    second for 2,000 nodes of mean degree 50). Denser graphs have small diameters, so reachability
    ``(I + A)^k > 0`` grown by dense matrix products reaches everyone in a few BLAS calls.
    """
    n = adj.shape[0]
    if n == 1:
        return 0
    if adj.nnz <= DENSE_DEGREE * n:
        return int(csgraph.shortest_path(adj, unweighted=True, directed=False).max())
    step = adj.toarray().astype(np.float32) + np.eye(n, dtype=np.float32)
    reach, hops = step > 0, 1
    while not reach.all():
        reach = (reach.astype(np.float32) @ step) > 0
        hops += 1
    return hops


def estimated_diameter(adj: sp.csr_matrix, sweeps: int = BFS_SWEEPS) -> int:
    """Lower bound from repeated double sweeps: BFS to the farthest node, then BFS again from it."""
    v, best = 0, 0
    for _ in range(sweeps):
        dist = _bfs(adj, v)
        far = int(np.argmax(dist))
        best = max(best, int(dist[far]))
        if far == v:
            break
        v = far
    return best


def _symmetric_operator(edges: np.ndarray, num_nodes: int, rule: str, directed: bool):
    """A symmetric sparse S, its top unit eigenvector, and the power p with |lambda(W)| = |lambda(S)|^p.

    Undirected: S = D^(1/2) W D^(-1/2), D = diag(pi), has W's eigenvalues (W is reversible w.r.t. pi;
    for doubly stochastic rules pi is uniform and S = W). Directed (only the one-peer schedule, whose
    W = (I + P) / 2 with P a permutation is normal and doubly stochastic): S = W^T W, whose
    eigenvalues are W's squared moduli, so p = 1/2.
    """
    rows, cols, values = mixing_weights(edges, num_nodes, rule, directed)
    if directed:
        w = sp.csr_matrix((values, (rows, cols)), shape=(num_nodes, num_nodes))
        return (w.T @ w).tocsr(), np.full(num_nodes, num_nodes**-0.5), 0.5
    pi = stationary(rule, np.bincount(rows[: len(rows) - num_nodes], minlength=num_nodes))
    scale = np.sqrt(pi)
    values = values * scale[rows] / scale[cols]
    return sp.csr_matrix((values, (rows, cols)), shape=(num_nodes, num_nodes)), scale, 1.0


def spectral_gap(edges: np.ndarray, num_nodes: int, rule: str, directed: bool) -> tuple[float, bool]:
    """``(1 - |lambda_2(W)|, estimated)`` for the graph's mixing matrix W."""
    if num_nodes == 1:
        return 1.0, False
    s, top, power = _symmetric_operator(edges, num_nodes, rule, directed)
    if num_nodes <= EXACT_LIMIT:
        modulus = np.sort(np.abs(np.linalg.eigvalsh(s.toarray())))[::-1][1]
        return round(float(max(0.0, 1.0 - modulus**power)), 12), False
    # Power iteration on S with its top eigenvector projected out: the norm ratio converges to
    # |lambda_2(S)| from below.
    x = np.random.default_rng(0).standard_normal(num_nodes)
    x -= top * (top @ x)
    x /= np.linalg.norm(x)
    modulus = 0.0
    for _ in range(POWER_ITERATIONS):
        y = s @ x
        y -= top * (top @ y)
        modulus = float(np.linalg.norm(y))
        if modulus == 0.0:
            break
        x = y / modulus
    return float(max(0.0, 1.0 - modulus**power)), True


def summarize(topology) -> dict:
    """The JSON-serialisable summary of a topology's round-0 graph (see ``Topology.summary``)."""
    n = topology.num_nodes
    edges = topology.edges(0)
    adj = adjacency(edges, n)
    degree = np.bincount(edges[:, 0], minlength=n) if topology.directed else np.diff(adj.indptr)
    components = int(csgraph.connected_components(adj, directed=False)[0])
    connected = components == 1
    diameter, diameter_estimated = None, False
    if connected:
        diameter_estimated = n > EXACT_LIMIT
        diameter = estimated_diameter(adj) if diameter_estimated else exact_diameter(adj)
    if connected:
        gap, gap_estimated = spectral_gap(edges, n, topology.mixing, topology.directed)
    else:
        gap, gap_estimated = 0.0, False  # each component keeps its own average: lambda_2 = 1
    out = {
        "name": topology.name,
        "num_nodes": n,
        "num_edges": int(len(edges)),
        "directed": topology.directed,
        "degree_min": int(degree.min()),
        "degree_max": int(degree.max()),
        "degree_mean": float(degree.mean()),
        "connected": connected,
        "components": components,
        "diameter": diameter,
        "diameter_estimated": diameter_estimated,
        "mixing": topology.mixing,
        "spectral_gap": gap,
        "spectral_gap_estimated": gap_estimated,
        "time_varying": topology.time_varying,
    }
    if topology.period is not None:
        out["period"] = topology.period
    return out
