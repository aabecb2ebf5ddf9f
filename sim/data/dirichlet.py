"""flwr-datasets' ``DirichletPartitioner``, transcribed in NumPy: the same rows per client, without its imports.

``partition=dirichlet`` is the default run's partition. Through flwr-datasets it imports Hugging Face ``datasets``
(pyarrow, pandas) and flwr-datasets' plotting (matplotlib), about a second of a two-second start-up, to split a label
array. This transcription of flwr-datasets 0.6's algorithm draws the same numbers from the same seeded generator in
the same order, so every client gets the rows the partitioner gives it (tests/test_default_path_imports.py checks
equality with flwr-datasets over seeds, alphas, self-balancing, retries and failures).
"""

from __future__ import annotations

import numpy as np

#: flwr-datasets draws again when some client is left with fewer than min_partition_size rows, at most this many times
MAX_RETRIES = 10


def dirichlet_partition(
    labels: np.ndarray, num_partitions: int, alpha: float, min_partition_size: int, self_balancing: bool, seed: int
) -> list[np.ndarray]:
    """Row indices (int64) of each partition, as ``DirichletPartitioner(partition_by="label", shuffle=True)`` makes
    them for a dataset whose ``label`` column is ``labels``; ValueError with flwr-datasets' message where it fails."""
    if not num_partitions > 0:
        raise ValueError("The number of partitions needs to be greater than zero.")
    alphas = np.array([float(alpha)], dtype=float).repeat(num_partitions)
    if not (alphas > 0).all():
        raise ValueError(f"Alpha values should be strictly greater than zero. Instead it'd be converted to {alphas}")
    rng = np.random.default_rng(seed=seed)
    targets = np.asarray(labels)
    if num_partitions > len(targets):
        raise ValueError("The number of partitions needs to be smaller than the number of samples in the dataset.")
    classes = sorted(np.unique(targets).tolist())
    average = len(targets) / num_partitions
    tries = 0
    while True:
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for k in classes:
            rows_of_k = np.nonzero(targets == k)[0]
            proportions = list(rng.dirichlet(alphas))
            if self_balancing:
                proportions = [0 if len(parts[n]) > average else p for n, p in enumerate(proportions)]
                total = sum(proportions)
                proportions = [p / total for p in proportions]
            cuts = (np.cumsum(proportions) * len(rows_of_k)).astype(int)[:-1]
            for part, piece in zip(parts, np.split(rows_of_k, cuts), strict=True):
                part.extend(piece.tolist())
        if min(len(part) for part in parts) >= min_partition_size:
            break
        if tries == MAX_RETRIES:
            raise ValueError(
                "The max number of attempts (10) was reached. Please update the values of alpha and try again."
            )
        tries += 1
    for part in parts:
        rng.shuffle(part)  # a list, in place, as flwr-datasets shuffles it
    return [np.asarray(part, dtype=np.int64) for part in parts]
