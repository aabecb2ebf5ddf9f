"""The data sources: each turns its config into a :class:`Pool` ready to be partitioned.

A pool is the training rows still in one piece (with their natural client ids when the source has
them), plus the server-held validation and test splits, which are final once the pool is built.
Partitioning is a separate step (:mod:`sim.data.partition`) so that every source works with every
partitioner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..seeding import numpy_rng
from .inputs import InputSpec
from .splits import take_per_group, take_stratified


@dataclass
class Pool:
    x: np.ndarray  # [M, D] flat training rows in their storage dtype (float32, uint8 images, int64 tokens)
    y: np.ndarray  # [M] int64
    groups: np.ndarray | None  # [M] int64 natural client 0..G-1 of each row, or None
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    inputs: InputSpec | None = None  # how rows become model inputs; None: float features of input_shape

    def input_spec(self) -> InputSpec:
        return self.inputs if self.inputs is not None else InputSpec(tuple(int(d) for d in self.input_shape))


def carve_splits(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None,
    *,
    val_fraction: float,
    test_fraction: float | None,
    rng_key: tuple,
    seed: int,
) -> dict[str, np.ndarray]:
    """Split rows into train / val / test: test first (skipped when ``test_fraction`` is None),
    then ``val_fraction`` of the rows that remain.

    Without natural clients the splits are stratified by label; with them each client gives up its
    own share (at least one row always stays), so natural clients remain whole.
    """

    def take(keep: np.ndarray, fraction: float, stream: str) -> np.ndarray:
        rng = numpy_rng(seed, *rng_key, stream)
        if groups is None:
            return take_stratified(y[keep], fraction, rng)
        return take_per_group(groups[keep], fraction, rng)

    rows = np.arange(len(y))
    test_rows = rows[:0]
    if test_fraction is not None:
        is_test = take(rows, test_fraction, "test")
        test_rows, rows = rows[is_test], rows[~is_test]
    is_val = take(rows, val_fraction, "val")
    val_rows, train_rows = rows[is_val], rows[~is_val]
    out = {
        "x": x[train_rows],
        "y": y[train_rows],
        "x_val": x[val_rows],
        "y_val": y[val_rows],
        "x_test": x[test_rows],
        "y_test": y[test_rows],
    }
    out["groups"] = None if groups is None else groups[train_rows]
    return out


def load_digits_pool(ds: dict, seed: int) -> Pool:
    """scikit-learn's 8x8 digits (1,797 real images shipped with the library), scaled to [0, 1].

    The test split is stratified and drawn from the run seed, then ``val_fraction`` of the
    remaining rows (stratified) become the server's validation split.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
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
