"""Each client's local test split: a seeded share of its own training rows, or a data set's natural one.

Personalization and fairness are judged on each client's own data (LEAF, FLGo, PFLlib report per-client
accuracy on per-client test rows), which the pooled, server-held test set cannot show. With
``eval.local_test_fraction = f > 0`` client k with ``n_k`` training rows gives up
``max(1, floor(f n_k))`` of them, drawn uniformly at random from the stream ``("data", "local_test")``
of the run seed; the rest stay its training rows, in their order. A fraction that would leave some
client without a training row is refused before any work, naming the client. ``f = 0`` changes nothing.

LEAF data sets with a ``test/`` folder have natural per-user test rows; with ``partition=natural`` and
``f = 0`` those become each client's local test (:func:`natural_local_test`); ``f > 0`` carves from the
training rows instead (the explicit setting wins), and the natural rows stay in the pooled test set.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ..seeding import numpy_rng
from .splits import floor_quota, random_rank

FIELD = "eval.local_test_fraction"


def local_test_quota(fraction: float, sizes: np.ndarray) -> np.ndarray:
    """``max(1, floor(fraction * n_k))`` test rows per client (none when ``fraction`` is 0)."""
    if fraction <= 0:
        return np.zeros(len(sizes), dtype=np.int64)
    return np.maximum(floor_quota(fraction, sizes), 1)


def check_local_test(fraction: float, sizes: np.ndarray) -> np.ndarray:
    """The per-client quota; ConfigError naming the first client left without training or test rows."""
    quota = local_test_quota(fraction, sizes)
    if fraction <= 0:
        return quota
    short = np.flatnonzero(sizes - quota < 1)
    if len(short):
        k = int(short[0])
        raise ConfigError(
            FIELD,
            fraction,
            "a fraction in [0, 1) that leaves every client at least one training row and one local test row",
            f"Client {k} has {int(sizes[k])} training row{'s' if sizes[k] != 1 else ''}; its local test would take "
            f"{int(quota[k])} (at least one, floor(fraction * rows) otherwise), leaving none to train on"
            f"{f' ({len(short)} clients in all)' if len(short) > 1 else ''}. Lower the fraction, or give every "
            "client more rows (fewer clients, another partition).",
        )
    return quota


def carve_local_test(
    x: torch.Tensor, y: torch.Tensor, offsets: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, offsets, x_local, y_local, local_offsets)``: each client's local test rows taken out of its rows.

    Rows keep their order on both sides, so client k's training rows are still contiguous. Vectorized:
    one random key per row and one sort (:func:`sim.data.splits.random_rank`), no loop over clients.
    """
    sizes = (offsets[1:] - offsets[:-1]).numpy()
    quota = check_local_test(fraction, sizes)
    client_of_row = np.repeat(np.arange(len(sizes)), sizes)
    rank = random_rank(client_of_row, numpy_rng(seed, "data", "local_test"))
    is_test = torch.from_numpy(rank < quota[client_of_row])
    local_offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    local_offsets[1:] = torch.from_numpy(np.cumsum(quota))
    new_offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    new_offsets[1:] = torch.from_numpy(np.cumsum(sizes - quota))
    return x[~is_test], y[~is_test], new_offsets, x[is_test], y[is_test], local_offsets


def natural_local_test(
    x_test: np.ndarray, y_test: np.ndarray, test_groups: np.ndarray, num_clients: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x_local, y_local, local_offsets)`` from test rows labelled with their client (-1: a user with no client).

    The test rows of client k, in their file order, are its local test; a client may have none.
    """
    keep = test_groups >= 0
    order = np.argsort(test_groups[keep], kind="stable")
    rows = np.flatnonzero(keep)[order]
    counts = np.bincount(test_groups[keep], minlength=num_clients)[:num_clients]
    offsets = np.zeros(num_clients + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    return x_test[rows], y_test[rows], offsets
