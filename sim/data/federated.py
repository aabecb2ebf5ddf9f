"""From configs to :class:`FederatedData`: check, load the source, partition, lay clients out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .config import checked_configs
from .feature_skew import apply_feature_skew
from .local_test import carve_local_test, natural_local_test
from .partition import partition_rows
from .pool import Pool
from .sources import load_pool
from .types import FederatedData


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _storage_dtype(a: np.ndarray) -> torch.dtype:
    """uint8 stays uint8 (decoded images), integers become int64 (token ids), the rest float32."""
    if a.dtype == np.uint8:
        return torch.uint8
    if np.issubdtype(a.dtype, np.integer):
        return torch.int64
    return torch.float32


def keep_classes(pool: Pool, classes) -> Pool:
    """Training rows of the listed labels only (a source split, e.g. for pre-training);
    validation and test keep every class so the model is scored on the whole task."""
    from dataclasses import replace

    present = set(np.unique(pool.y).tolist())
    absent = sorted({int(c) for c in classes} - present)
    if absent:
        raise ConfigError(
            "dataset.train_classes",
            list(classes),
            "labels that the training rows have",
            f"No training row of {pool.name} has label {absent}; its labels are "
            f"{sorted(present) if len(present) <= 20 else f'{min(present)}..{max(present)}'}.",
        )
    keep = np.isin(pool.y, np.asarray(list(classes)))
    groups = None if pool.groups is None else pool.groups[keep]
    return replace(pool, x=pool.x[keep], y=pool.y[keep], groups=groups)


def load_federated_data(
    dataset_cfg: Any, partition_cfg: Any, num_clients: int, seed: int, local_test_fraction: float = 0.0
) -> FederatedData:
    """Build the clients' data for one run.

    Same configs and seed give bit-identical tensors. Client k's training rows are
    ``x[offsets[k]:offsets[k + 1]]``; validation and test splits are server-held and never
    partitioned. ``local_test_fraction > 0`` takes each client's local test rows out of its training
    rows (:mod:`sim.data.local_test`); at 0 a data set's natural per-user test rows (LEAF with ``test/``
    and ``partition=natural``) are the local test, and the training rows are untouched. Raises
    :class:`~sim.errors.ConfigError` for anything the user can fix.
    """
    ds, part = checked_configs(dataset_cfg, partition_cfg, num_clients)
    pool = load_pool(ds, num_clients, int(seed))
    if ds.get("train_classes") is not None:
        pool = keep_classes(pool, ds["train_classes"])
    order, offsets = partition_rows(pool.y, pool.groups, part, num_clients, int(seed), ds["name"])
    identity = len(order) == len(pool.y) and bool(np.all(order == np.arange(len(order))))
    x, y = (pool.x, pool.y) if identity else (pool.x[order], pool.y[order])  # natural synthetic: no copy
    x = apply_feature_skew(x, offsets, pool.input_spec(), part, int(seed))  # none: x itself
    x_t, y_t, offsets_t = _tensor(x, _storage_dtype(x)), _tensor(y, torch.int64), _tensor(offsets, torch.int64)
    local: dict[str, torch.Tensor] = {}
    if local_test_fraction > 0:  # eval.local_test_fraction: each client's local test out of its rows
        x_t, y_t, offsets_t, x_local, y_local, local_offsets = carve_local_test(
            x_t, y_t, offsets_t, float(local_test_fraction), int(seed)
        )
        local = {"x_local": x_local, "y_local": y_local, "local_offsets": local_offsets}
    elif pool.test_groups is not None and part["name"] == "natural":  # LEAF's per-user test rows
        xl, yl, lo = natural_local_test(pool.x_test, pool.y_test, pool.test_groups, len(offsets) - 1)
        xl = apply_feature_skew(xl, lo, pool.input_spec(), part, int(seed))  # the client's transform
        local = {"x_local": _tensor(xl, _storage_dtype(xl)), "y_local": _tensor(yl, torch.int64)}
        local["local_offsets"] = _tensor(lo, torch.int64)
    return FederatedData(
        x=x_t,
        y=y_t,
        offsets=offsets_t,
        x_val=_tensor(pool.x_val, _storage_dtype(pool.x_val)),
        y_val=_tensor(pool.y_val, torch.int64),
        x_test=_tensor(pool.x_test, _storage_dtype(pool.x_test)),
        y_test=_tensor(pool.y_test, torch.int64),
        num_classes=int(pool.num_classes),
        input_shape=tuple(int(d) for d in pool.input_shape),
        name=pool.name,
        inputs=pool.input_spec(),
        **local,
    )
