"""Synthetic(alpha, beta), the FedProx benchmark (Li et al. 2020, ``generate_niid`` in the authors' repo).

For each user k (numpy's ``normal(mean, scale)``, so alpha and beta are scales, as in the paper's
code):

    u_k ~ N(0, alpha),  B_k ~ N(0, beta)
    W_k ~ N(u_k, 1) [F, C],  b_k ~ N(u_k, 1) [C]      (the same u_k for both, as the code does)
    v_k ~ N(B_k, 1) [F]
    x ~ N(v_k, diag(j^-1.2)), j = 1..F,   y = argmax(x W_k + b_k)
    n_k = min(size_offset + floor(lognormal(mean, sigma)), size_cap)

alpha controls how different the users' models are, beta how different their inputs are.
With ``iid: true`` it is FedProx's Synthetic-IID instead (``generate_iid``): one W ~ N(0, 1) and
b ~ N(0, 1) for all users and x ~ N(0, diag(j^-1.2)), i.e. one task spread over users, which the
label partitioners (dirichlet, shards) can then skew.

The covariance is diagonal, so x is drawn as ``v_k + j^-0.6 * z`` instead of with
``multivariate_normal`` (same distribution, orders of magnitude faster), in float32, the dtype the
simulator trains in. Users are generated in blocks of :data:`BLOCK_USERS`, each block with its own
random stream, and the labels of all users of one size in a block come from one batched matmul,
so 100k users cost seconds. The data depend only on the seed (``dataset.data_seed`` when set,
else the run seed), the generator settings and the number of users (``num_clients``), never on
the partition.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import ConfigError
from ..seeding import numpy_rng
from .pool import Pool
from .splits import floor_quota

BLOCK_USERS = 1024
# Refuse to allocate more than this many feature values (4 GB of float32); size_cap is the fix.
MAX_VALUES = 1_000_000_000


def user_sizes(ds: dict, num_users: int, rng: np.random.Generator) -> np.ndarray:
    """Rows per user: ``size_offset + floor(lognormal(mean, sigma))``, capped at ``size_cap``."""
    raw = ds["size_offset"] + np.floor(rng.lognormal(ds["size_lognormal_mean"], ds["size_lognormal_sigma"], num_users))
    if ds["size_cap"] is not None:
        raw = np.minimum(raw, ds["size_cap"])
    total = float(raw.sum())
    if not np.isfinite(total) or total * ds["num_features"] > MAX_VALUES:
        raise ConfigError(
            "dataset.size_cap",
            ds["size_cap"],
            "a cap that keeps the data in memory",
            f"The size distribution asks for {total:.3g} rows of {ds['num_features']} features; "
            "set dataset.size_cap or lower dataset.size_lognormal_mean / sigma.",
        )
    return raw.astype(np.int64)


def _labels_by_size(x: np.ndarray, starts: np.ndarray, sizes: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``argmax(x W_k + b_k)`` for every row, one batched matmul per distinct user size."""
    y = np.empty(len(x), dtype=np.int64)
    for size in np.unique(sizes):
        users = np.flatnonzero(sizes == size)
        rows = starts[users, None] + np.arange(size)  # [U, size]
        logits = np.matmul(x[rows], w[users]) + b[users, None, :]
        y[rows] = logits.argmax(-1)
    return y


def _generate_block(
    ds: dict,
    u: np.ndarray,
    big_b: np.ndarray,
    sizes: np.ndarray,
    rng: np.random.Generator,
    shared: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and labels of one block of users, user after user (``shared``: Synthetic-IID's W, b)."""
    n, f, c = len(u), ds["num_features"], ds["num_classes"]
    if shared is None:
        w = (u[:, None, None] + rng.standard_normal((n, f, c))).astype(np.float32)
        b = (u[:, None] + rng.standard_normal((n, c))).astype(np.float32)
        v = (big_b[:, None] + rng.standard_normal((n, f))).astype(np.float32)
    else:
        w = np.broadcast_to(shared[0], (n, f, c))
        b = np.broadcast_to(shared[1], (n, c))
        v = np.zeros((n, f), dtype=np.float32)
    sd = np.power(np.arange(1, f + 1, dtype=np.float64), -0.6).astype(np.float32)  # sqrt(j^-1.2)
    owner = np.repeat(np.arange(n), sizes)
    x = rng.standard_normal((len(owner), f), dtype=np.float32)
    x *= sd
    x += v[owner]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return x, _labels_by_size(x, starts, sizes, w, b)


def synthetic_blocks(ds: dict, num_users: int, seed: int) -> tuple[np.ndarray, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """Per-user sizes, and the rows ``(x [R, F] float32, y [R] int64)`` of each block of users in turn.

    Blocks are yielded rather than concatenated so the caller can file rows straight into their
    splits: at 100k users the data are gigabytes and every extra copy shows.
    """
    data_seed = seed if ds["data_seed"] is None else ds["data_seed"]
    rng = numpy_rng(data_seed, "data", "synthetic", "users")
    sizes = user_sizes(ds, num_users, rng)
    u = rng.normal(0.0, ds["alpha"], num_users)
    big_b = rng.normal(0.0, ds["beta"], num_users)
    shared = None
    if ds.get("iid"):
        shared = (
            rng.standard_normal((ds["num_features"], ds["num_classes"])).astype(np.float32),
            rng.standard_normal(ds["num_classes"]).astype(np.float32),
        )

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block, lo in enumerate(range(0, num_users, BLOCK_USERS)):
            hi = min(lo + BLOCK_USERS, num_users)
            brng = numpy_rng(data_seed, "data", "synthetic", "block", block)
            yield _generate_block(ds, u[lo:hi], big_b[lo:hi], sizes[lo:hi], brng, shared)

    return sizes, blocks()


def split_per_user(sizes: np.ndarray, test_fraction: float, val_fraction: float) -> np.ndarray:
    """Where each row goes: 0 train, 1 validation, 2 test (``[M]`` int8, rows user after user).

    Each user gives ``floor(test_fraction * n_k)`` rows to the test set and
    ``floor(val_fraction * n_k)`` to the validation set (both fractions of the user's own rows);
    since ``test_fraction + val_fraction < 1`` every user keeps at least one training row, and a
    user with few rows may give none. A user's rows are i.i.d. draws, so taking the first ones is
    as good as a random choice and needs no random stream.
    """
    n_test, n_val = floor_quota(test_fraction, sizes), floor_quota(val_fraction, sizes)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    rank = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    split = np.zeros(len(rank), dtype=np.int8)
    split[rank < (n_test + n_val)[owner]] = 1
    split[rank < n_test[owner]] = 2
    return split


def load_synthetic_pool(ds: dict, num_clients: int, seed: int) -> Pool:
    """One user per client; the natural partition keeps them, the others pool and redistribute."""
    sizes, blocks = synthetic_blocks(ds, num_clients, seed)
    split = split_per_user(sizes, ds["test_fraction"], ds["val_fraction"])
    counts = np.bincount(split, minlength=3)
    f = ds["num_features"]
    xs = [np.empty((int(n), f), dtype=np.float32) for n in counts]
    ys = [np.empty(int(n), dtype=np.int64) for n in counts]
    filled, row = np.zeros(3, dtype=np.int64), 0
    for xb, yb in blocks:
        where = split[row : row + len(yb)]
        for part in range(3):
            mask = where == part
            n = int(mask.sum())
            xs[part][filled[part] : filled[part] + n] = xb[mask]
            ys[part][filled[part] : filled[part] + n] = yb[mask]
            filled[part] += n
        row += len(yb)
    owner = np.repeat(np.arange(num_clients, dtype=np.int64), sizes)
    return Pool(
        x=xs[0],
        y=ys[0],
        groups=owner[split == 0],
        x_val=xs[1],
        y_val=ys[1],
        x_test=xs[2],
        y_test=ys[2],
        num_classes=ds["num_classes"],
        input_shape=(ds["num_features"],),
        name="synthetic",
    )
