"""The :class:`Topology` the gossip engine talks to, and the two entry points that make one.

``validate_topology_config`` runs the cheap checks (no graph built, no file read) so a sweep can be
checked before its first job; ``build_topology`` runs them again, builds round 0 (so a disconnected
graph or an unreadable file fails before any training) and returns the topology. Per-round graphs are
kept in a small cache: the engine asks for the mixing matrix and neighbours of the same round many
times, and a time-varying topology only ever needs the current round.
"""

from __future__ import annotations

from collections import OrderedDict

import networkx as nx
import numpy as np
import torch

from sim.errors import ConfigError

from .builders import DETERMINISTIC
from .config import normalize
from .dynamic import OnePeer, Resampled, Static
from .files import read_graph_file
from .mixing import directed_pairs, mixing_matrix
from .summary import count_components, summarize

CACHED_ROUNDS = 4


class _RoundGraph:
    """One round's graph: its edges plus lazily built adjacency, networkx view and W."""

    def __init__(self, edges: np.ndarray, num_nodes: int, directed: bool):
        edges.setflags(write=False)
        self.edges, self.num_nodes, self.directed = edges, num_nodes, directed
        self._csr: tuple[np.ndarray, np.ndarray] | None = None  # neighbour lists in CSR form: (indptr, indices)
        self._graph: nx.Graph | None = None
        self._w: torch.Tensor | None = None

    def neighbors(self, node: int) -> list[int]:
        if self._csr is None:
            rows, cols = directed_pairs(self.edges, self.directed)
            order = np.lexsort((cols, rows))
            indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=self.num_nodes))])
            self._csr = (indptr, cols[order])
        indptr, indices = self._csr
        return indices[indptr[node] : indptr[node + 1]].tolist()

    def graph(self) -> nx.Graph:
        if self._graph is None:
            graph = nx.DiGraph() if self.directed else nx.Graph()
            graph.add_nodes_from(range(self.num_nodes))
            graph.add_edges_from(self.edges.tolist())
            self._graph = nx.freeze(graph)
        return self._graph

    def mixing_matrix(self, rule: str) -> torch.Tensor:
        if self._w is None:
            self._w = mixing_matrix(self.edges, self.num_nodes, rule, self.directed)
        return self._w


class Topology:
    """A communication graph over nodes ``0..N-1``, possibly changing with the round.

    ``graph``, ``neighbors`` and ``mixing_matrix`` are deterministic in (seed, round). For the
    directed one-peer schedule, ``graph`` is a ``networkx.DiGraph`` with edges receiver -> sender and
    ``neighbors`` lists the node(s) a node receives from. Returned graphs are frozen and tensors are
    shared with the cache: read them, do not modify them.
    """

    def __init__(self, name: str, num_nodes: int, schedule, mixing: str, seed: int, params: dict):
        self.name, self.num_nodes, self.mixing, self.seed = name, num_nodes, mixing, seed
        self.params = params
        self._schedule = schedule
        self._cache: OrderedDict[int, _RoundGraph] = OrderedDict()

    @property
    def time_varying(self) -> bool:
        return self._schedule.time_varying

    @property
    def directed(self) -> bool:
        return self._schedule.directed

    @property
    def period(self) -> int | None:
        """Rounds after which a cyclic schedule repeats (one-peer exponential); None otherwise."""
        return self._schedule.period

    def _round(self, round_: int) -> _RoundGraph:
        if isinstance(round_, bool) or not isinstance(round_, (int, np.integer)) or round_ < 0:
            raise ValueError(f"round_ must be an integer >= 0, got {round_!r}")
        key = self._schedule.key(int(round_))
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            self._cache[key] = _RoundGraph(self._schedule.edges_for(key), self.num_nodes, self.directed)
            if len(self._cache) > CACHED_ROUNDS:
                self._cache.popitem(last=False)
        return self._cache[key]

    def edges(self, round_: int = 0) -> np.ndarray:
        """Read-only ``[E, 2]`` int64: undirected ``u < v`` pairs, or (receiver, sender) if directed."""
        return self._round(round_).edges

    def graph(self, round_: int = 0) -> nx.Graph:
        return self._round(round_).graph()

    def neighbors(self, node: int, round_: int = 0) -> list[int]:
        if not 0 <= node < self.num_nodes:
            raise IndexError(f"node {node} is not in 0..{self.num_nodes - 1}")
        return self._round(round_).neighbors(int(node))

    def mixing_matrix(self, round_: int = 0) -> torch.Tensor:
        """Coalesced float32 sparse COO ``W [N, N]``; ``W[i, j]`` is the weight node i gives node j."""
        return self._round(round_).mixing_matrix(self.mixing)

    def summary(self) -> dict:
        """JSON-serialisable figures of the round-0 graph (see ``topologies.summary``)."""
        return summarize(self)

    def __repr__(self) -> str:
        return f"Topology(name={self.name!r}, num_nodes={self.num_nodes}, mixing={self.mixing!r})"


def validate_topology_config(topology_cfg, num_nodes: int) -> None:
    """The checks that need no graph: names, types, ranges, shapes, that a graph file exists."""
    normalize(topology_cfg, num_nodes)


def _schedule(p: dict, num_nodes: int, seed: int):
    name = p["name"]
    if name == "exponential" and p["one_peer"]:
        return OnePeer(num_nodes)
    if name in DETERMINISTIC:
        return Static(DETERMINISTIC[name](num_nodes, p))
    if name == "file":
        edges = read_graph_file(p["path"], num_nodes)
        components = count_components(edges, num_nodes)
        if components > 1 and not p["allow_disconnected"]:
            raise ConfigError(
                "topology.path",
                p["path"],
                "a connected graph (or topology.allow_disconnected=true)",
                f"topology.name=file: the graph has {components} connected components; connect "
                "it or set topology.allow_disconnected=true.",
            )
        return Static(edges)
    return Resampled(name, num_nodes, p, seed)


def build_topology(topology_cfg, num_nodes: int, seed: int) -> Topology:
    """Check ``topology_cfg``, build round 0 and return the topology; raises ConfigError."""
    p = normalize(topology_cfg, num_nodes)
    topology = Topology(p["name"], num_nodes, _schedule(p, num_nodes, seed), p["mixing"], seed, p)
    topology.edges(0)  # random families draw (and check) round 0 now, before any training
    return topology
