"""Whether the rule tolerates the aggregations the run will give it, asked before any work.

A robust rule refuses more Byzantine inputs than it tolerates (Krum needs n > 2f + 2, Bulyan
n > 4f + 3) through ``Strategy.check_tolerance(n, num_byzantine)``; every other rule accepts
anything. The run asks it about the aggregations it will make, in the worst case the config allows:

- FL: ``n`` is ``clients_per_round`` for uniform participation, else every client (the largest
  round), with as many Byzantine participants as can be in one round, ``min(f, n)``;
- synchronous gossip: for each honest node, its own model plus its in-neighbours in the round-1
  graph, and how many of them are Byzantine. A time-varying graph's later rounds, and rounds in
  which messages are lost, are checked by the rule as they come.
"""

from __future__ import annotations

from typing import Any

import torch

from strategies import Strategy


def check_fl_tolerance(strategy: Strategy, participation_cfg: Any, num_clients: int, num_byzantine: int) -> None:
    per_round = num_clients
    if participation_cfg.get("name") == "uniform":
        per_round = min(int(participation_cfg.get("clients_per_round", num_clients)), num_clients)
    strategy.check_tolerance(per_round, min(num_byzantine, per_round))


def check_gossip_tolerance(strategy: Strategy, topology: Any, byzantine: torch.Tensor | None) -> None:
    """``byzantine``: the ``[N]`` mask of Byzantine nodes, or None without an attack."""
    w = topology.mixing_matrix(1).coalesce()
    rows, cols = w.indices()
    n = w.shape[0]
    off = rows != cols
    inputs = torch.bincount(rows[off], minlength=n) + 1
    if byzantine is None:
        byzantine = torch.zeros(n, dtype=torch.bool)
    bad = torch.bincount(rows[off & byzantine[cols]], minlength=n)
    honest = ~byzantine
    for size, count in sorted(set(zip(inputs[honest].tolist(), bad[honest].tolist(), strict=True))):
        strategy.check_tolerance(size, count)
