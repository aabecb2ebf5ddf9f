"""How the ray backend splits one round's clients over its actors: balanced by work, not by count.

Clients differ a lot in size (W1's run from 10 to 300 rows), so cutting the list of K clients into
equal counts leaves one actor busy long after the others. The work of a client is known before it
runs: its number of SGD steps follows from its row count and the training config alone
(``batch_schedule`` draws the order of rows, never how many batches there are). The chunks are made
by the longest-processing-time rule (largest client first, onto the least loaded actor), whose
largest load is at most 4/3 of the best possible; it is deterministic, so a given set of clients
always lands on the same actors. Pure Python and torch: no Ray here, so it can be tested alone.
"""

from __future__ import annotations

import heapq

import torch

from sim.training import TrainConfig, steps_per_client

#: a client costs its steps plus this much (fetching its rows, setting up its generator, returning it)
PER_CLIENT_COST = 1


def client_costs(sizes: torch.Tensor, cfg: TrainConfig) -> list[int]:
    """Work of each client (``sizes`` = its training rows): SGD steps plus a fixed per-client cost."""
    return (steps_per_client(sizes, cfg) + PER_CLIENT_COST).tolist()


def balanced_chunks(costs: list[int], bins: int) -> list[list[int]]:
    """Positions ``0..len(costs)-1`` split into at most ``bins`` chunks of near-equal total cost.

    Each chunk lists its positions in increasing order; empty chunks are left out (fewer clients
    than actors), so the result has ``min(bins, len(costs))`` chunks.
    """
    if bins < 1:
        raise ValueError("bins must be >= 1")
    bins = min(bins, len(costs))
    if bins == 0:
        return []
    loads = [(0, b) for b in range(bins)]  # (load, bin): ties go to the lowest bin
    chunks: list[list[int]] = [[] for _ in range(bins)]
    for pos in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, b = heapq.heappop(loads)
        chunks[b].append(pos)
        heapq.heappush(loads, (load + costs[pos], b))
    return [sorted(c) for c in chunks if c]
