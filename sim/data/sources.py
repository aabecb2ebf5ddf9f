"""The data sources: each turns its config into a :class:`Pool` ready to be partitioned.

A pool (:mod:`sim.data.pool`) is the training rows still in one piece, plus the server-held
validation and test splits. This module dispatches on ``dataset.name``; the sources import only
:mod:`sim.data.pool`, never this module, so no source imports another through it.
Partitioning is a separate step (:mod:`sim.data.partition`) so that every source works with every
partitioner.
"""

from __future__ import annotations

import numpy as np

from .inputs import InputSpec
from .pool import Pool, carve_splits


def load_digits_pool(ds: dict, seed: int) -> Pool:
    """scikit-learn's 8x8 digits (1,797 real images shipped with the library), scaled to [0, 1].

    The test split is stratified and drawn from the run seed, then ``val_fraction`` of the
    remaining rows (stratified) become the server's validation split.
    """
    from .digits_csv import digits_arrays  # sklearn's file, read without importing sklearn

    data, target = digits_arrays()
    x = (data / 16.0).astype(np.float32)
    y = target.astype(np.int64)
    parts = carve_splits(
        x,
        y,
        None,
        val_fraction=ds["val_fraction"],
        test_fraction=ds["test_fraction"],
        rng_key=("data", "digits"),
        seed=seed if ds.get("data_seed") is None else ds["data_seed"],
    )
    image = InputSpec((1, 8, 8), "image")  # pixels already scaled to [0, 1], stored as float32
    return Pool(**parts, num_classes=10, input_shape=(1, 8, 8), name="digits", inputs=image)


def load_pool(ds: dict, num_clients: int, seed: int) -> Pool:
    """Build the pool for ``dataset.name`` (already checked by :mod:`sim.data.config`)."""
    if ds["name"] == "digits":
        return load_digits_pool(ds, seed)
    if ds["name"] == "synthetic":
        from .synthetic import load_synthetic_pool

        return load_synthetic_pool(ds, num_clients, seed)
    if ds["name"] in ("hf", "leaf", "mnist1d"):
        import importlib

        return importlib.import_module(f"sim.data.{ds['name']}").load_pool(ds, num_clients, seed)
    from .npz import load_npz_pool

    return load_npz_pool(ds, seed)
