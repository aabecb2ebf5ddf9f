"""Per-edge bandwidth and latency of gossip links, when they are not the two clients' access links.

An edge either comes from the graph's own attributes (``bandwidth`` in bytes/s, ``latency`` in
seconds: a ``.graphml`` file's edge data or the third and fourth columns of an edge list) or is drawn
on first use from the ``links`` distributions, each edge from its own seeded stream
``("system", "link", min(u, v), max(u, v))`` so that the draw does not depend on which edge is asked
for first. Edges are undirected: ``u -> v`` and ``v -> u`` share one link.
"""

from __future__ import annotations

from collections.abc import Callable

Draw = Callable[[int, int], tuple[float, float]]


class Links:
    """Bandwidth and latency per undirected edge: from a table, or drawn on first use by ``draw``."""

    def __init__(self, table: dict[tuple[int, int], tuple[float, float]] | None = None, draw: Draw | None = None):
        self.table = dict(table or {})
        self.draw = draw

    def get(self, sender: int, receiver: int) -> tuple[float, float] | None:
        key = (min(sender, receiver), max(sender, receiver))
        found = self.table.get(key)
        if found is None and self.draw is not None:
            found = self.table[key] = self.draw(*key)
        return found
