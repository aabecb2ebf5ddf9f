"""The pool every data source builds, and the carving of validation and test rows that most of them share.

A pool is the training rows still in one piece (with their natural client ids when the source has
them), plus the server-held validation and test splits, which are final once the pool is built.
Kept below the sources and the dispatcher (:mod:`sim.data.sources`), so that a source never imports
the module that imports it.
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
    test_groups: np.ndarray | None = None  # [T] natural client of each test row (-1: none), where the data have it

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
