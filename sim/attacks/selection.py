"""Which clients are Byzantine, and the label-flipping attack's change to their data.

The ids come from their own seeded stream (``"byzantine"``), so choosing them shifts no other
draw: with the same seed, a run with an attack has the same partition, initial model, participants
and honest clients' batches as the run without one.
"""

from __future__ import annotations

import dataclasses

import torch

from sim.data import FederatedData
from sim.seeding import numpy_rng


def byzantine_ids(num_clients: int, count: int, seed: int) -> torch.Tensor:
    """``[count]`` sorted int64 ids: the first ``count`` of a seeded permutation of the clients."""
    if count == 0:
        return torch.zeros(0, dtype=torch.int64)
    chosen = numpy_rng(seed, "byzantine").permutation(num_clients)[:count]
    return torch.from_numpy(chosen).sort().values.to(torch.int64)


def flip_labels(data: FederatedData, ids: torch.Tensor) -> FederatedData:
    """``data`` with the training labels of clients ``ids`` mapped ``y -> C - 1 - y`` (a new object).

    Flipping the stored labels rather than each batch means every backend (sequential, vectorized,
    Ray) trains the Byzantine clients on flipped labels without knowing of the attack. Validation
    and test splits are the server's and stay as they are.
    """
    client_of_row = torch.repeat_interleave(torch.arange(data.num_clients), data.client_sizes)
    byzantine_row = torch.isin(client_of_row, ids)
    y = torch.where(byzantine_row, data.num_classes - 1 - data.y, data.y)
    return dataclasses.replace(data, y=y)
