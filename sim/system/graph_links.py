"""Gossip links fixed by the graph: ``bandwidth`` (bytes/s) and ``latency`` (s) edge attributes.

A ``.graphml`` file's edges carry them as data; an edge list carries them as the third and fourth
columns (``u v bandwidth latency``, ``#`` comments), the columns the topology loader ignores
(topologies/files.py). Nodes are relabelled exactly as that loader does, so edge ``(u, v)`` here is the
topology's edge between the same clients. An edge without both attributes keeps the default link.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

Table = dict[tuple[int, int], tuple[float, float]]


def _check(field: str, where: str, bandwidth: Any, latency: Any) -> tuple[float, float]:
    try:
        bw, lat = float(bandwidth), float(latency)
    except (TypeError, ValueError):
        raise ConfigError(
            field, where, "numeric bandwidth and latency", f"Got {bandwidth!r} and {latency!r}."
        ) from None
    if not (math.isfinite(bw) and bw > 0 and math.isfinite(lat) and lat >= 0):
        raise ConfigError(
            field, where, "an edge bandwidth > 0 and latency >= 0, both finite", f"Got bandwidth={bw}, latency={lat}."
        )
    return bw, lat


def graph_link_table(graph: Any, where: str, field: str = "system.links", index: dict | None = None) -> Table:
    """The edges of a networkx graph that carry both ``bandwidth`` and ``latency``."""
    table: Table = {}
    for u, v, data in graph.edges(data=True):
        if "bandwidth" in data and "latency" in data:
            a, b = (u, v) if index is None else (index[u], index[v])
            table[(min(a, b), max(a, b))] = _check(field, f"{where}, edge {u}-{v}", data["bandwidth"], data["latency"])
    return table


def read_link_file(path: str, num_nodes: int, field: str = "system.links.path") -> Table:
    """Edge attributes of a ``.graphml`` file or an edge list ``u v bandwidth latency`` (errors name ``field``)."""
    try:
        if path.lower().endswith(".graphml"):
            import networkx as nx

            from topologies.files import _sorted_ids  # the topology loader's relabelling, so ids agree

            try:
                graph = nx.read_graphml(path)
            except Exception as exc:  # networkx raises several types
                raise ConfigError(
                    field, path, "a readable .graphml file", f"GraphML could not be read: {exc}"
                ) from None
            nodes = _sorted_ids(graph.nodes())
            table = graph_link_table(graph, path, field, {n: k for k, n in enumerate(nodes)})
        else:
            table, ids = {}, set[int]()
            raw: list[tuple[int, int, tuple[float, float]]] = []
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    tokens = line.split("#", 1)[0].split()
                    if not tokens:
                        continue
                    try:
                        u, v = int(tokens[0]), int(tokens[1]) if len(tokens) > 1 else int(tokens[0])
                    except ValueError:
                        raise ConfigError(
                            field, path, "lines 'u v bandwidth latency'", f"Line {number}: {line.strip()!r}."
                        ) from None
                    ids.update((u, v))
                    if len(tokens) >= 4:
                        raw.append((u, v, _check(field, f"{path} line {number}", tokens[2], tokens[3])))
            index = {n: k for k, n in enumerate(sorted(ids))}
            for u, v, link in raw:
                a, b = index[u], index[v]
                table[(min(a, b), max(a, b))] = link
            nodes = sorted(ids)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            field, path, "a readable edge list or .graphml file", f"It could not be read: {exc}"
        ) from None
    if len(nodes) != num_nodes:
        raise ConfigError(
            field, path, f"a graph with num_clients={num_nodes} nodes", f"The file has {len(nodes)} nodes."
        )
    return table
