"""A user's own data from an ``.npz`` file.

Keys: ``x_train`` and ``y_train`` (required); ``client_train`` (optional, one client id per
training row: integers or strings, enabling ``partition=natural``); ``x_test`` and ``y_test``
(optional, both or neither; without them ``test_fraction`` of the training rows become the test
set). Everything a file can get wrong is reported as a :class:`ConfigError` naming the file and
the array, since a traceback from deep inside numpy would not tell the user what to fix.
"""

from __future__ import annotations

import zipfile

import numpy as np

from ..errors import ConfigError
from .sources import Pool, carve_splits

REQUIRED = ("x_train", "y_train")


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array in the archive, read eagerly so a corrupt member fails here."""
    allowed = "an .npz archive written by numpy.savez"
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ConfigError("dataset.path", path, allowed, "It holds a single array (.npy?), not named arrays.")
        with loaded as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError("dataset.path", path, allowed, f"Reading it failed: {err}") from None


def _as_labels(arrays: dict[str, np.ndarray], key: str, path: str) -> np.ndarray:
    """Integer-valued, non-negative labels as int64 (float files with whole numbers are fine)."""
    y = arrays[key].reshape(-1)
    whole = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.all(np.isfinite(y)) and np.all(y == np.round(y))))
    if not whole:
        raise ConfigError("dataset.path", path, f"integer class labels in {key}",
                          f"{key} has dtype {y.dtype} with values that are not whole numbers.")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ConfigError("dataset.path", path, f"class labels >= 0 in {key}",
                          f"{key} contains {int(y.min())}.")
    return y


def _as_features(arrays: dict[str, np.ndarray], key: str, path: str) -> np.ndarray:
    x = arrays[key]
    if not (np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.bool_)):
        raise ConfigError("dataset.path", path, f"a numeric array in {key}", f"{key} has dtype {x.dtype}.")
    if x.ndim == 0:
        raise ConfigError("dataset.path", path, f"an array with one row per example in {key}", f"{key} is a scalar.")
    return x.reshape(len(x), int(np.prod(x.shape[1:]))).astype(np.float32)


def _client_index(arrays: dict[str, np.ndarray], path: str) -> np.ndarray | None:
    """``client_train`` ids mapped to 0..G-1 in sorted id order, or None when absent."""
    if "client_train" not in arrays:
        return None
    ids = arrays["client_train"].reshape(-1)
    if np.issubdtype(ids.dtype, np.floating) and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
        ids = ids.astype(np.int64)
    if not (np.issubdtype(ids.dtype, np.integer) or ids.dtype.kind in "US"):
        raise ConfigError("dataset.path", path, "integer (or string) client ids in client_train",
                          f"client_train has dtype {ids.dtype}.")
    return np.unique(ids, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _check_keys(arrays: dict[str, np.ndarray], path: str) -> None:
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise ConfigError("dataset.path", path, "an .npz with arrays x_train and y_train",
                          f"Missing {', '.join(missing)}; the file has: {', '.join(sorted(arrays)) or 'no arrays'}.")
    if ("x_test" in arrays) != ("y_test" in arrays):
        have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise ConfigError("dataset.path", path, "x_test and y_test together, or neither",
                          f"The file has {have} but no {lack}.")


def _check_lengths(path: str, **arrays: np.ndarray) -> None:
    lengths = {k: len(v) for k, v in arrays.items() if v is not None}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} has {n} rows" for k, n in lengths.items())
        raise ConfigError("dataset.path", path, "arrays with one row per example", f"Mismatched lengths: {listed}.")


def _input_shape(ds: dict, x_raw: np.ndarray, num_features: int) -> tuple[int, ...]:
    shape = tuple(ds["input_shape"]) if ds["input_shape"] is not None else tuple(x_raw.shape[1:]) or (1,)
    if int(np.prod(shape)) != num_features:
        raise ConfigError("dataset.input_shape", ds["input_shape"], f"a shape with {num_features} values in all",
                          f"Each x_train row of {ds['path']} has {num_features} values.")
    return shape


def load_npz_pool(ds: dict, seed: int) -> Pool:
    """Read, check and split the file: test from ``x_test`` or carved, then validation."""
    path = str(ds["path"])
    arrays = _read_arrays(path)
    _check_keys(arrays, path)
    x, y = _as_features(arrays, "x_train", path), _as_labels(arrays, "y_train", path)
    groups = _client_index(arrays, path)
    _check_lengths(path, x_train=x, y_train=y, client_train=groups)
    has_test = "x_test" in arrays
    if has_test:
        x_test, y_test = _as_features(arrays, "x_test", path), _as_labels(arrays, "y_test", path)
        _check_lengths(path, x_test=x_test, y_test=y_test)
        if x_test.shape[1] != x.shape[1]:
            raise ConfigError("dataset.path", path, "x_test rows shaped like x_train rows",
                              f"x_train rows have {x.shape[1]} values, x_test rows {x_test.shape[1]}.")
    if len(y) == 0:
        raise ConfigError("dataset.path", path, "at least one training row", "x_train is empty.")
    num_classes = int(max(y.max(), y_test.max() if has_test and len(y_test) else 0)) + 1
    parts = carve_splits(x, y, groups, val_fraction=ds["val_fraction"],
                         test_fraction=None if has_test else ds["test_fraction"], rng_key=("data", "npz"), seed=seed)
    if has_test:
        parts["x_test"], parts["y_test"] = x_test, y_test
    return Pool(**parts, num_classes=num_classes, input_shape=_input_shape(ds, arrays["x_train"], x.shape[1]),
                name="npz")
