"""Which graph is in force in which round.

A schedule maps a round to a *key* (rounds with equal keys share one graph, so the topology can
cache it) and a key to an edge array. Three kinds exist:

- :class:`Static`: one graph for every round (deterministic families and files).
- :class:`Resampled`: a random family drawn from the stream ``("topology", key, attempt)``. Static
  random graphs use key 0; with ``time_varying: true`` the key is the round, so every round gets a fresh
  graph that depends only on (seed, round), not on which rounds were asked for before. Draws that
  come out disconnected are redrawn (next ``attempt``) up to ``max_tries`` times unless
  ``allow_disconnected`` is set.
- :class:`OnePeer`: the one-peer exponential graph (Ying et al. 2021): in round t node i pulls only
  from ``i + 2^(t mod tau)``, ``tau = floor(log2(N - 1)) + 1``. Each round is a directed permutation
  (one out-peer, one in-peer per node), so every mixing rule gives weights 1/2 and 1/2; the
  schedule cycles with period ``tau`` and the union of one period is the static exponential graph.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from sim.errors import ConfigError
from sim.seeding import derived_seed

from .builders import BLAME, exponent_count, one_peer_edges, sample_random
from .summary import count_components


class Static:
    time_varying, directed, period = False, False, None

    def __init__(self, edges: np.ndarray):
        self._edges = edges

    def key(self, round_: int) -> int:
        return 0

    def edges_for(self, key: int) -> np.ndarray:
        return self._edges


class OnePeer:
    time_varying, directed = True, True

    def __init__(self, num_nodes: int):
        self.num_nodes = num_nodes
        self.period = exponent_count(num_nodes)

    def key(self, round_: int) -> int:
        return round_ % self.period

    def edges_for(self, key: int) -> np.ndarray:
        return one_peer_edges(self.num_nodes, key)


class Resampled:
    directed, period = False, None

    def __init__(self, name: str, num_nodes: int, params: dict, seed: int):
        self.name, self.num_nodes, self.params, self.seed = name, num_nodes, params, seed
        self.time_varying = bool(params.get("time_varying", False))
        # small_world retries inside networkx (connected_watts_strogatz_graph); scale_free is connected.
        self.tries = params["max_tries"] if name in ("random_regular", "erdos_renyi") else 1

    def key(self, round_: int) -> int:
        return round_ if self.time_varying else 0

    def edges_for(self, key: int) -> np.ndarray:
        components = 0
        for attempt in range(self.tries):
            nx_seed = derived_seed(self.seed, "topology", key, attempt)
            try:
                edges = sample_random(self.name, self.num_nodes, self.params, nx_seed)
            except nx.NetworkXError as exc:
                raise self._error(f"networkx could not build it: {exc}.", key) from None
            if self.params["allow_disconnected"]:
                return edges
            components = count_components(edges, self.num_nodes)
            if components == 1:
                return edges
        raise self._error(f"each of {self.tries} draws was disconnected (the last had {components} components).", key)

    def _error(self, what: str, key: int) -> ConfigError:
        field = BLAME[self.name]
        if self.name == "erdos_renyi" and self.params["p"] is None:
            field = "mean_degree"
        n = self.num_nodes
        hint = ""
        if self.name == "erdos_renyi":
            hint = f" Connectivity needs p above about ln(N)/N = {math.log(n) / n:.3g} (mean degree {math.log(n):.1f})."
        where = f" (round {key})" if self.time_varying else ""
        retry = " raise topology.max_tries," if "max_tries" in self.params else ""
        return ConfigError(
            f"topology.{field}",
            self.params[field],
            "a value that gives a connected graph (or topology.allow_disconnected=true)",
            f"topology.name={self.name} with {n} nodes{where}: {what}{hint} Change "
            f"topology.{field},{retry} or set topology.allow_disconnected=true.",
        )
