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
import numpy.typing as npt
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


# ---- many derived seeds at once -------------------------------------------------------------------
# numpy's SeedSequence hashes its entropy with a fixed sequence of 32-bit multiply-xorshift steps
# (numpy/random/bit_generator.pyx). Deriving 10,000 clients' training seeds one SeedSequence at a
# time costs about 0.4 s a round; the same steps applied to a column of 10,000 words at once give
# bit-identical seeds in a millisecond. tests/test_seeding.py checks the equality with numpy.
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _POOL = 0xCA01F9DD, 0x4973F715, 4
_M32 = 0xFFFFFFFF


def _words(value: int) -> list[int]:
    """numpy's coercion of a non-negative int to little-endian 32-bit words (0 is one word)."""
    if value == 0:
        return [0]
    out = []
    while value:
        out.append(value & _M32)
        value >>= 32
    return out


def derived_seeds(seed: int, keys: tuple, varying: list[np.ndarray]) -> np.ndarray:
    """``derived_seed(seed, *keys, *row)`` for every row of the columns ``varying``, vectorized.

    Each varying column holds non-negative integers below 2**32 (rounds, client ids). Returns an
    int64 array equal, element for element, to the scalar :func:`derived_seed`.
    """
    cols = [np.asarray(c, dtype=np.int64) for c in varying]
    count = len(cols[0]) if cols else 1
    if any(len(c) != count for c in cols) or any(c.size and (c.min() < 0 or c.max() > _M32) for c in cols):
        raise ValueError("varying keys must be equal-length columns of integers in [0, 2**32)")
    run = _words(int(seed))
    run += [0] * (_POOL - len(run))
    fixed = [w for k in keys for w in _words(_key_to_int(k))]
    entropy = [np.full(count, w, dtype=np.uint32) for w in run + fixed] + [c.astype(np.uint32) for c in cols]
    hash_const = _INIT_A

    def hashmix(value: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_A) & _M32
        value = value * np.uint32(hash_const)
        return value ^ (value >> np.uint32(16))

    def mix(x: npt.NDArray[np.uint32], y: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        result = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return result ^ (result >> np.uint32(16))

    with np.errstate(over="ignore"):
        pool = [hashmix(entropy[i]) if i < len(entropy) else hashmix(np.zeros(count, np.uint32)) for i in range(_POOL)]
        for src in range(_POOL):
            for dst in range(_POOL):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        for src in range(_POOL, len(entropy)):
            for dst in range(_POOL):
                pool[dst] = mix(pool[dst], hashmix(entropy[src]))
        state, const = [], _INIT_B
        for i in range(2):
            value = pool[i] ^ np.uint32(const)
            const = (const * _MULT_B) & _M32
            value = value * np.uint32(const)
            state.append(value ^ (value >> np.uint32(16)))
    combined = state[0].astype(np.uint64) | (state[1].astype(np.uint64) << np.uint64(32))
    return (combined >> np.uint64(1)).astype(np.int64)


def torch_generators(seed: int, keys: tuple, varying: list[np.ndarray]) -> list[torch.Generator]:
    """``torch_generator(seed, *keys, *row)`` for every row of ``varying`` (see :func:`derived_seeds`)."""
    out = []
    for s in derived_seeds(seed, keys, varying).tolist():
        g = torch.Generator()
        g.manual_seed(s)
        out.append(g)
    return out
