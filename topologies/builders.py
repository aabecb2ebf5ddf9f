"""Graph builders: from checked parameters to an undirected edge list.

A graph travels as ``edges [E, 2]`` int64 with ``u < v``, no self loops, no duplicates, rows sorted;
nodes are ``0..N-1`` and may be isolated. Deterministic families (complete, star, ring, torus,
exponential) are built straight in numpy so 100,000-node graphs cost milliseconds; random families
come from networkx with a ``seed=`` derived from the run's seed, so a (seed, round, attempt) triple
always gives the same graph.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np


def canonical(edges, num_nodes: int) -> np.ndarray:
    """``[E, 2]`` with ``u < v``, sorted, self loops and duplicates dropped."""
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    e = np.sort(e, axis=1)
    e = e[e[:, 0] != e[:, 1]]
    key = np.unique(e[:, 0] * num_nodes + e[:, 1])
    return np.stack([key // num_nodes, key % num_nodes], axis=1)


def from_networkx(graph: nx.Graph) -> np.ndarray:
    """Edge array of a networkx graph whose nodes are already ``0..N-1``."""
    flat = np.fromiter((x for e in graph.edges() for x in e), dtype=np.int64, count=2 * graph.number_of_edges())
    return canonical(flat, graph.number_of_nodes())


def complete_edges(n: int) -> np.ndarray:
    u, v = np.triu_indices(n, k=1)
    return np.stack([u, v], axis=1).astype(np.int64)


def star_edges(n: int) -> np.ndarray:
    """Node 0 is the hub (the server in federated mode)."""
    leaves = np.arange(1, n, dtype=np.int64)
    return np.stack([np.zeros_like(leaves), leaves], axis=1)


def ring_edges(n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.int64)
    return canonical(np.stack([i, (i + 1) % n], axis=1), n)


def torus_edges(rows: int, cols: int) -> np.ndarray:
    """2-D grid with wraparound: node ``r * cols + c`` links to its four neighbours.

    A side shorter than 3 makes the two wraparound neighbours coincide (or the node itself), so
    degrees drop below 4: a 1 x N torus is a ring.
    """
    idx = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
    right = np.stack([idx.ravel(), np.roll(idx, -1, axis=1).ravel()], axis=1)
    down = np.stack([idx.ravel(), np.roll(idx, -1, axis=0).ravel()], axis=1)
    return canonical(np.concatenate([right, down]), rows * cols)


def exponent_count(n: int) -> int:
    """How many powers of two the exponential graph uses: j = 0 .. floor(log2(n - 1))."""
    return max(int(n - 1).bit_length(), 1)


def exponential_edges(n: int) -> np.ndarray:
    """Node i links to i +- 2^j (mod n) for j = 0 .. floor(log2(n - 1)) (Ying et al. 2021, undirected)."""
    i = np.arange(n, dtype=np.int64)
    pairs = [np.stack([i, (i + (1 << j)) % n], axis=1) for j in range(exponent_count(n))]
    return canonical(np.concatenate(pairs), n)


def one_peer_edges(n: int, round_: int) -> np.ndarray:
    """Directed (receiver, sender) pairs of round ``round_``: i pulls from i + 2^(round mod tau)."""
    shift = 1 << (round_ % exponent_count(n))
    i = np.arange(n, dtype=np.int64)
    return np.stack([i, (i + shift) % n], axis=1)


DETERMINISTIC: dict[str, Callable[[int, dict], np.ndarray]] = {
    "complete": lambda n, p: complete_edges(n),
    "star": lambda n, p: star_edges(n),
    "ring": lambda n, p: ring_edges(n),
    "torus": lambda n, p: torus_edges(p["rows"], p["cols"]),
    "exponential": lambda n, p: exponential_edges(n),
}


def _small_world(n: int, p: dict, seed: int) -> nx.Graph:
    if p["allow_disconnected"]:
        return nx.watts_strogatz_graph(n, p["k"], p["p"], seed=seed)
    return nx.connected_watts_strogatz_graph(n, p["k"], p["p"], tries=p["max_tries"], seed=seed)


# Random families: (num_nodes, params, networkx seed) -> networkx graph on nodes 0..N-1.
RANDOM: dict[str, Callable[[int, dict, int], nx.Graph]] = {
    "random_regular": lambda n, p, s: nx.random_regular_graph(p["degree"], n, seed=s),
    "erdos_renyi": lambda n, p, s: nx.fast_gnp_random_graph(n, p["edge_p"], seed=s),
    "small_world": _small_world,
    "scale_free": lambda n, p, s: nx.barabasi_albert_graph(n, p["m"], seed=s),
}

# The parameter a user should change when a random family keeps coming out disconnected.
BLAME = {"random_regular": "degree", "erdos_renyi": "p", "small_world": "k", "scale_free": "m"}


def sample_random(name: str, n: int, params: dict, seed: int) -> np.ndarray:
    """One draw of a random family as an edge array; networkx errors surface as ``nx.NetworkXError``."""
    return from_networkx(RANDOM[name](n, params, seed))
