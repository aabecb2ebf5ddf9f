"""One seed drives everything.

Each consumer of randomness (partitioning, client sampling, participation, graph generation,
message loss, each client's local training in each round) gets its own generator derived from the
run's seed and a tuple of keys. Streams are therefore independent of each other and of the order in
which they are drawn, so adding a new random consumer never shifts the numbers of an existing one,
and every backend can rebuild exactly the generator that another backend used for a client.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _key_to_int(key: object) -> int:
    if isinstance(key, (int, np.integer)) and key >= 0:
        return int(key)
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def seed_sequence(seed: int, *keys: object) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(_key_to_int(k) for k in keys))


def numpy_rng(seed: int, *keys: object) -> np.random.Generator:
    """A numpy generator for the stream named by ``keys`` (e.g. ``"partition"``)."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, *keys)))


def derived_seed(seed: int, *keys: object) -> int:
    """A 63-bit integer seed for libraries that take one (torch, flwr-datasets, networkx)."""
    return int(seed_sequence(seed, *keys).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def torch_generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU torch generator for the stream named by ``keys`` (e.g. ``"train", round, client``)."""
    g = torch.Generator()
    g.manual_seed(derived_seed(seed, *keys))
    return g
