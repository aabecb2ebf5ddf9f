"""A user's own data from an ``.npz`` file.

Keys: ``x_train`` and ``y_train`` (required); ``client_train`` (optional, one client id per
training row: integers or strings, enabling ``partition=natural``); ``x_test`` and ``y_test``
(optional, both or neither; without them ``test_fraction`` of the training rows become the test
set). Everything a file can get wrong is reported as a :class:`ConfigError` naming the file and
the array, since a traceback from deep inside numpy would not tell the user what to fix.

Images: ``dataset.layout`` says how ``x_train`` holds them (``nhw``: ``[N, H, W]``, one channel;
``nhwc``: ``[N, H, W, C]``; ``nchw``: ``[N, C, H, W]``; ``flat``: rows used as stored, shaped by
``input_shape``). ``auto`` (the default) reads it from the array: ``input_shape`` set -> flat (the
behaviour before layouts existed); 3 dims -> nhw; 4 dims -> nhwc when only the last dim is 1, 3 or 4,
nchw when only the second is, an error asking for ``dataset.layout`` when both are ([N, 3, 32, 3]),
and flat (the array's own shape) when neither is. Images are stored channels-first (C, H, W) and
flattened; uint8 pixels stay uint8 (4x less memory) and are scaled by 1/255 on the fly, as are uint8
arrays whose ``input_shape`` has three dims; other images are float32, used as they are.
"""

from __future__ import annotations

import zipfile

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ConfigError
from ..validation import choice
from .inputs import InputSpec
from .pool import Pool, carve_splits

REQUIRED = ("x_train", "y_train")
LAYOUTS = ("auto", "nhw", "nhwc", "nchw", "flat")
IMAGE_DIMS = {"nhw": 3, "nhwc": 4, "nchw": 4}  # array dims (with N) of each image layout
CHANNELS = (1, 3, 4)  # channel counts auto recognizes: grey, RGB, RGBA
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


def resolve_layout(ds: dict, x_raw: np.ndarray, path: str) -> str:
    """The image layout of ``x_train``: ``dataset.layout``, or read from the shape (module docstring)."""
    layout = choice("dataset.layout", ds.get("layout", "auto"), LAYOUTS)
    shape = tuple(x_raw.shape)
    if layout == "auto":
        if ds["input_shape"] is not None or x_raw.ndim not in (3, 4):
            return "flat"
        if x_raw.ndim == 3:
            return "nhw"
        last, second = shape[3] in CHANNELS, shape[1] in CHANNELS
        if last and second:
            raise ConfigError(
                "dataset.layout",
                "auto",
                "nhwc or nchw for this file",
                f"x_train of {path} has shape {list(shape)}: its channels could be the last dim or the second; "
                "set dataset.layout=nhwc (N, H, W, C) or dataset.layout=nchw (N, C, H, W).",
            )
        return "nhwc" if last else "nchw" if second else "flat"
    if layout in IMAGE_DIMS and x_raw.ndim != IMAGE_DIMS[layout]:
        wanted = {"nhw": "[N, H, W]", "nhwc": "[N, H, W, C]", "nchw": "[N, C, H, W]"}[layout]
        raise ConfigError(
            "dataset.layout",
            layout,
            f"a layout that matches x_train's {x_raw.ndim} dims",
            f"Layout {layout} needs x_train of shape {wanted}; x_train of {path} has shape {list(shape)} "
            "(flat rows: use dataset.layout=flat with dataset.input_shape=[C, H, W]).",
        )
    return layout


def channels_first(x: np.ndarray, layout: str) -> np.ndarray:
    """Images as ``[N, C, H, W]`` from the layout the file holds them in (flat: unchanged)."""
    if layout == "nhw":
        return x[:, None]
    if layout == "nhwc":
        return x.transpose(0, 3, 1, 2)
    return x


def _input_shape(ds: dict, x_raw: np.ndarray, layout: str) -> tuple[int, ...]:
    num_features = int(np.prod(x_raw.shape[1:]))
    if layout in IMAGE_DIMS:
        image = tuple(int(d) for d in channels_first(x_raw[:0], layout).shape[1:])
        if ds["input_shape"] is not None and tuple(ds["input_shape"]) != image:
            raise ConfigError(
                "dataset.input_shape",
                ds["input_shape"],
                f"null or {list(image)}, the (C, H, W) of layout {layout}",
                f"x_train of {ds['path']} has shape {list(x_raw.shape)}.",
            )
        return image
    shape = tuple(ds["input_shape"]) if ds["input_shape"] is not None else tuple(x_raw.shape[1:]) or (1,)
    if int(np.prod(shape)) != num_features:
        raise ConfigError(
            "dataset.input_shape",
            ds["input_shape"],
            f"a shape with {num_features} values in all",
            f"Each x_train row of {ds['path']} has {num_features} values.",
        )
    return shape


def _rows(arrays: dict[str, np.ndarray], key: str, path: str, layout: str, as_uint8: bool) -> np.ndarray:
    """Flat channels-first rows of ``arrays[key]``: uint8 kept as is, anything else checked float32."""
    x = channels_first(arrays[key], layout) if arrays[key].ndim == IMAGE_DIMS.get(layout) else arrays[key]
    if as_uint8:
        return np.ascontiguousarray(x.reshape(len(x), -1))
    return _as_features({key: x}, key, path)


def _uint8_images(arrays: dict[str, np.ndarray], shape: tuple[int, ...], layout: str, path: str) -> bool:
    """Keep uint8 storage (pixels scaled on the fly) when x_train is uint8 images; x_test must agree."""
    if arrays["x_train"].dtype != np.uint8 or (layout not in IMAGE_DIMS and len(shape) != 3):
        return False
    if "x_test" in arrays and arrays["x_test"].dtype != np.uint8:
        raise ConfigError(
            "dataset.path",
            path,
            "x_train and x_test stored alike",
            f"x_train holds uint8 pixels (scaled by 1/255) but x_test is {arrays['x_test'].dtype}; "
            "store both as uint8 or both as float.",
        )
    return True


def load_npz_pool(ds: dict, seed: int) -> Pool:
    """Read, check and split the file: test from ``x_test`` or carved, then validation."""
    path = str(ds["path"])
    arrays = _read_arrays(path)
    _check_keys(arrays, path)
    layout = resolve_layout(ds, arrays["x_train"], path)
    shape = _input_shape(ds, arrays["x_train"], layout)
    as_uint8 = _uint8_images(arrays, shape, layout, path)
    x, y = _rows(arrays, "x_train", path, layout, as_uint8), _as_labels(arrays, "y_train", path)
    groups = _client_index(arrays, path)
    _check_lengths(path, x_train=x, y_train=y, client_train=groups)
    has_test = "x_test" in arrays
    if has_test:
        if layout in IMAGE_DIMS and arrays["x_test"].shape[1:] != arrays["x_train"].shape[1:]:
            raise ConfigError(
                "dataset.path",
                path,
                "x_test images shaped like x_train images",
                f"x_train has shape {list(arrays['x_train'].shape)}, x_test {list(arrays['x_test'].shape)}.",
            )
        x_test, y_test = _rows(arrays, "x_test", path, layout, as_uint8), _as_labels(arrays, "y_test", path)
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
    image = layout in IMAGE_DIMS or as_uint8
    spec = InputSpec(shape, kind="image" if image else "float")
    return Pool(**parts, num_classes=num_classes, input_shape=shape, name="npz", inputs=spec)
