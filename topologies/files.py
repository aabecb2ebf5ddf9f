"""Reading a user's graph: a whitespace edge list or GraphML, relabelled to ``0..N-1``.

Edge list: one ``u v`` pair of integers per line; further columns (e.g. weights) are ignored, a
line with a single integer declares an isolated node, ``#`` starts a comment. GraphML (``.graphml``):
any node ids; directed or multi-graphs are read as simple undirected graphs. Nodes are relabelled in
sorted order (numeric when every id is an integer, otherwise "natural" order so ``n2`` < ``n10``),
so the file's node ``k``-th smallest id becomes client ``k``. Every problem is a ConfigError on
``topology.path`` that says what was wrong and where.
"""

from __future__ import annotations

import re

import networkx as nx
import numpy as np

from sim.errors import ConfigError

from .builders import canonical

ALLOWED = "a readable edge list (whitespace separated integer pairs, # comments) or a .graphml file"


def _natural_key(node) -> tuple:
    text = str(node)
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def _sorted_ids(nodes) -> list:
    nodes = list(nodes)
    try:
        as_int = {node: int(str(node)) for node in nodes}
    except ValueError:
        return sorted(nodes, key=_natural_key)
    if len(set(as_int.values())) == len(nodes):
        return sorted(nodes, key=as_int.__getitem__)
    return sorted(nodes, key=_natural_key)


def _read_edge_list(path: str) -> tuple[list, list]:
    nodes, edges = set(), []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            tokens = line.split("#", 1)[0].split()
            if not tokens:
                continue
            try:
                ids = [int(t) for t in tokens[:2]]
            except ValueError:
                raise ConfigError(
                    "topology.path",
                    path,
                    ALLOWED,
                    f"Line {number} does not start with integer node ids: {line.strip()!r}.",
                ) from None
            nodes.update(ids)
            if len(ids) == 2:
                edges.append(ids)
    return sorted(nodes), edges


def _read_graphml(path: str) -> tuple[list, list]:
    try:
        graph = nx.read_graphml(path)
    except Exception as exc:  # networkx raises several types (ParseError, NetworkXError, KeyError)
        raise ConfigError("topology.path", path, ALLOWED, f"GraphML could not be read: {exc}") from None
    return _sorted_ids(graph.nodes()), list(graph.edges())


def read_graph_file(path: str, num_nodes: int) -> np.ndarray:
    """Canonical edge array of the graph in ``path``; its node count must equal ``num_nodes``."""
    try:
        if path.lower().endswith(".graphml"):
            nodes, edges = _read_graphml(path)
        else:
            nodes, edges = _read_edge_list(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("topology.path", path, ALLOWED, f"It could not be read: {exc}") from None
    if len(nodes) != num_nodes:
        raise ConfigError(
            "topology.path",
            path,
            f"a graph with num_clients={num_nodes} nodes",
            f"The file has {len(nodes)} nodes; set num_clients={len(nodes)} or use another graph.",
        )
    index = {node: k for k, node in enumerate(nodes)}
    pairs = np.array([[index[u], index[v]] for u, v in edges], dtype=np.int64).reshape(-1, 2)
    return canonical(pairs, num_nodes)
