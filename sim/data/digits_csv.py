"""scikit-learn's digits read from the file scikit-learn ships, without importing scikit-learn.

``load_digits`` is one ``np.loadtxt`` of ``sklearn/datasets/data/digits.csv.gz``; importing ``sklearn.datasets`` for
it (SciPy, scikit-learn's validation machinery) cost about a second of the default run's start-up. The same file read
the same way gives the same arrays (tests/test_default_path_imports.py); where an installed scikit-learn keeps the file
elsewhere, its own ``load_digits`` is used.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(data [1797, 64] float64, target [1797] int)`` exactly as ``sklearn.datasets.load_digits()`` has them."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, mode="rt", encoding="utf-8") as fh:  # as sklearn's load_gzip_compressed_csv_data
                data = np.loadtxt(fh, delimiter=",")
            return data[:, :-1], data[:, -1].astype(int, copy=False)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target
