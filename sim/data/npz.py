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
from numpy.typing import ArrayLike

from ..errors import ConfigError
from .sources import Pool, carve_splits

REQUIRED = ("x_train", "y_train")
MAX_CLASSES = 100_000  # more outputs than any classification data set here needs (ImageNet-21k: 21,841)


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


def _is_real(a: np.ndarray) -> bool:
    return any(np.issubdtype(a.dtype, t) for t in (np.integer, np.floating, np.bool_))


def _scalar(value: np.generic) -> str:
    """A numpy scalar as the user would write it: -1 rather than np.float64(-1.0)."""
    x = value.item()
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _where(bad: ArrayLike) -> str:
    """ "row 3" (and how many rows in all) for a boolean row mask with at least one True."""
    rows = np.flatnonzero(bad)
    more = f" and {len(rows) - 1} other row(s)" if len(rows) > 1 else ""
    return f"row {int(rows[0])}{more}"


def _as_labels(arrays: dict[str, np.ndarray], key: str, path: str) -> np.ndarray:
    """Whole-number labels in ``[0, MAX_CLASSES)`` as int64 (float files with whole numbers are fine).

    The model gets ``max label + 1`` outputs, so a stray huge label would silently build a giant
    output layer; labels must be class indices 0..C-1.
    """
    y = arrays[key].reshape(-1)
    if not _is_real(y):
        raise ConfigError("dataset.path", path, f"integer class labels in {key}", f"Array {key} has dtype {y.dtype}.")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(
                "dataset.path",
                path,
                f"integer class labels in {key}",
                f"Array {key} holds {_scalar(y[i])} at {_where(bad)}, which is not a whole number.",
            )
    for bad, allowed in (
        (y < 0, f"class labels >= 0 in {key}"),
        (y >= MAX_CLASSES, f"class labels below {MAX_CLASSES} in {key}"),
    ):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(
                "dataset.path",
                path,
                allowed,
                f"Array {key} holds {_scalar(y[i])} at {_where(bad)}. Labels are class indices "
                "(the model gets max label + 1 outputs); map other ids with "
                "np.unique(y, return_inverse=True).",
            )
    return y.astype(np.int64)


def _as_features(arrays: dict[str, np.ndarray], key: str, path: str) -> np.ndarray:
    """Finite float32 rows: a NaN or Inf input would only show up later, as a diverged training run."""
    x = arrays[key]
    if not _is_real(x):
        raise ConfigError("dataset.path", path, f"a numeric (real) array in {key}", f"Array {key} has dtype {x.dtype}.")
    if x.ndim == 0:
        raise ConfigError(
            "dataset.path", path, f"an array with one row per example in {key}", f"Array {key} is a scalar."
        )
    with np.errstate(over="ignore"):  # values beyond float32 become Inf, reported just below
        flat = x.reshape(len(x), int(np.prod(x.shape[1:]))).astype(np.float32)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "NaN" if np.isnan(flat[i]).any() else "Inf (or a value beyond float32's range)"
        raise ConfigError(
            "dataset.path", path, f"finite features in {key}", f"Array {key} holds {what} at {_where(bad)}."
        )
    return flat


def _client_index(arrays: dict[str, np.ndarray], path: str) -> np.ndarray | None:
    """``client_train`` ids mapped to 0..G-1 in sorted id order, or None when absent."""
    if "client_train" not in arrays:
        return None
    ids = arrays["client_train"].reshape(-1)
    if np.issubdtype(ids.dtype, np.floating) and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
        ids = ids.astype(np.int64)
    if not (np.issubdtype(ids.dtype, np.integer) or ids.dtype.kind in "US"):
        raise ConfigError(
            "dataset.path",
            path,
            "integer (or string) client ids in client_train",
            f"client_train has dtype {ids.dtype}.",
        )
    return np.unique(ids, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _check_keys(arrays: dict[str, np.ndarray], path: str) -> None:
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise ConfigError(
            "dataset.path",
            path,
            "an .npz with arrays x_train and y_train",
            f"Missing {', '.join(missing)}; the file has: {', '.join(sorted(arrays)) or 'no arrays'}.",
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise ConfigError(
            "dataset.path", path, "x_test and y_test together, or neither", f"The file has {have} but no {lack}."
        )


def _check_lengths(path: str, **arrays: np.ndarray | None) -> None:
    lengths = {k: len(v) for k, v in arrays.items() if v is not None}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} has {n} rows" for k, n in lengths.items())
        raise ConfigError("dataset.path", path, "arrays with one row per example", f"Mismatched lengths: {listed}.")


def _input_shape(ds: dict, x_raw: np.ndarray, num_features: int) -> tuple[int, ...]:
    shape = tuple(ds["input_shape"]) if ds["input_shape"] is not None else tuple(x_raw.shape[1:]) or (1,)
    if int(np.prod(shape)) != num_features:
        raise ConfigError(
            "dataset.input_shape",
            ds["input_shape"],
            f"a shape with {num_features} values in all",
            f"Each x_train row of {ds['path']} has {num_features} values.",
        )
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
            raise ConfigError(
                "dataset.path",
                path,
                "x_test rows shaped like x_train rows",
                f"x_train rows have {x.shape[1]} values, x_test rows {x_test.shape[1]}.",
            )
    if len(y) == 0:
        raise ConfigError("dataset.path", path, "at least one training row", "x_train is empty.")
    num_classes = int(max(y.max(), y_test.max() if has_test and len(y_test) else 0)) + 1
    parts = carve_splits(
        x,
        y,
        groups,
        val_fraction=ds["val_fraction"],
        test_fraction=None if has_test else ds["test_fraction"],
        rng_key=("data", "npz"),
        seed=seed,
    )
    if has_test:
        parts["x_test"], parts["y_test"] = x_test, y_test
    return Pool(
        **parts, num_classes=num_classes, input_shape=_input_shape(ds, arrays["x_train"], x.shape[1]), name="npz"
    )
