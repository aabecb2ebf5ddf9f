"""Turning the columns of a Hugging Face split into arrays: inputs, labels and natural client ids.

What an input column holds is read from its declared feature type, never guessed from values:
``Image``, or a struct of ``{"bytes": binary, "path": string}`` (what pandas writes for a column of such
dicts, and the Arrow storage of an ``Image``) -> decoded uint8 pixels; a string ``Value`` -> text (character ids with
``dataset.tokenizer=char``); numeric ``Value`` columns, or one column of equal-length numeric lists,
-> float32 features. Labels may be class indices, a ``ClassLabel`` or strings (mapped to ids in
sorted order). Every mismatch is a ConfigError naming the field and listing what the data hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .npz import MAX_CLASSES

KINDS = ("auto", "image", "text", "numeric")
#: the fields of an image struct and the Arrow types each may have (``path`` is null when pandas wrote None)
IMAGE_STRUCT = {"bytes": ("binary", "large_binary"), "path": ("string", "large_string", "null")}
#: what every error about a column that is not usable as images says would work
IMAGE_FIX = (
    "An image column must be a datasets Image feature, or hold {'bytes': <PNG/JPEG bytes>, 'path': <str or None>} "
    "dicts (the struct pandas and datasets write to parquet); cast any other column first, e.g. "
    "ds.cast_column('img', datasets.Image()) before to_parquet or save_to_disk."
)


def is_image_struct(feature: Any) -> bool:
    """A struct of ``bytes`` and/or ``path``, as ``pandas.DataFrame.to_parquet`` writes a column of
    ``{"bytes": ..., "path": ...}`` dicts: ``datasets`` reads it back as a dict of Values, not as an Image.
    A struct of only ``path`` must hold strings (file names), not nulls."""
    import datasets

    if not isinstance(feature, dict) or not feature or not set(feature) <= set(IMAGE_STRUCT):
        return False
    if not all(isinstance(f, datasets.Value) and f.dtype in IMAGE_STRUCT[k] for k, f in feature.items()):
        return False
    return "bytes" in feature or feature["path"].dtype != "null"


def describe(feature: Any) -> str:
    """A column's type as a user reads it: ``image``, ``int64``, ``class label (10 names)``, ``list``."""
    import datasets

    if isinstance(feature, datasets.Image):
        return "image"
    if is_image_struct(feature):
        return "image bytes struct"
    if isinstance(feature, dict):
        return "struct {" + ", ".join(f"{k}: {describe(f)}" for k, f in feature.items()) + "}"
    if isinstance(feature, datasets.ClassLabel):
        return f"class label ({feature.num_classes} names)"
    if isinstance(feature, datasets.Value):
        return str(feature.dtype).replace("large_string", "string")
    return type(feature).__name__.lower()


def listing(features: Any) -> str:
    return ", ".join(f"{name} ({describe(f)})" for name, f in features.items())


def kind_of(feature: Any) -> str | None:
    """``image``, ``text`` or ``numeric`` from the declared type; None for anything else (dicts, audio)."""
    import datasets

    if isinstance(feature, datasets.Image) or is_image_struct(feature):
        return "image"
    if isinstance(feature, datasets.ClassLabel):
        return "numeric"
    if isinstance(feature, datasets.Value):
        if feature.dtype in ("string", "large_string"):
            return "text"
        if feature.dtype == "bool" or feature.dtype.startswith(("int", "uint", "float")):
            return "numeric"
        return None
    if isinstance(feature, (datasets.Sequence, datasets.List, datasets.LargeList)):
        inner = feature.feature
        return "numeric" if kind_of(inner) == "numeric" else None
    if type(feature).__name__.startswith("Array"):
        return "numeric"
    return None


def _fix_for(features: Any, columns: Any) -> str:
    """``IMAGE_FIX`` (with a leading space) when one of ``columns`` is a struct or bytes that could be images."""
    import datasets

    def maybe_images(f: Any) -> bool:
        return isinstance(f, dict) or (isinstance(f, datasets.Value) and f.dtype in ("binary", "large_binary"))

    return " " + IMAGE_FIX if any(maybe_images(features[c]) for c in columns) else ""


def require_column(features: Any, column: str, field: str, split: str) -> None:
    if column not in features:
        raise ConfigError(field, column, f"a column of split {split}: {listing(features)}")


def resolve_inputs(features: Any, ds: dict, split: str, fmt: str) -> tuple[list[str], str]:
    """The input column names and their kind (image, text or numeric), checked against the declared types."""
    skip = {ds["label"], ds.get("partition_column")}
    wanted = ds.get("features")
    if wanted is None:
        images = [c for c, f in features.items() if kind_of(f) == "image" and c not in skip]
        numeric = [c for c, f in features.items() if kind_of(f) == "numeric" and c not in skip]
        texts = [c for c, f in features.items() if kind_of(f) == "text" and c not in skip]
        columns = images if images else numeric if numeric else texts
        if len(images) > 1 or (not images and not numeric and len(texts) != 1):
            raise ConfigError(
                "dataset.features",
                None,
                "the input column(s), e.g. dataset.features=img or dataset.features=[x1,x2]",
                f"Which columns are the input is not clear; split {split} has: {listing(features)}."
                + _fix_for(features, features),
            )
    else:
        columns = [wanted] if isinstance(wanted, str) else list(wanted)
    for column in columns:
        require_column(features, column, "dataset.features", split)
    kinds = {kind_of(features[c]) for c in columns}
    expected = ds.get("input_kind", "auto")
    if expected == "auto" and fmt == "imagefolder":
        expected = "image"
    if expected != "auto" and kinds != {expected}:
        bad = next(c for c in columns if kind_of(features[c]) != expected)
        raise ConfigError(
            "dataset.features",
            bad,
            f"a column of {expected} data" + (" (format=imagefolder)" if fmt == "imagefolder" else ""),
            f"Column {bad} holds {describe(features[bad])} data; the columns are: {listing(features)}."
            + (" " + IMAGE_FIX if expected == "image" else ""),
        )
    if None in kinds or len(kinds) > 1 or (kinds != {"numeric"} and len(columns) > 1):
        raise ConfigError(
            "dataset.features",
            wanted if wanted is not None else columns,
            "one image column, one text column, or numeric columns",
            f"The chosen columns hold {', '.join(f'{c} ({describe(features[c])})' for c in columns)}."
            + _fix_for(features, columns),
        )
    return columns, kinds.pop()  # type: ignore[return-value]


def _numpy_column(dataset, column: str) -> np.ndarray:
    return np.asarray(dataset.with_format("numpy")[column])


def numeric_rows(dataset, columns: list[str], split: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Finite float32 rows ``[N, D]`` and the shape of one example (``(F,)`` or a list column's shape)."""
    parts = []
    if len(dataset) == 0:  # an empty validation part: its width is the training part's
        return np.zeros((0, 0), dtype=np.float32), ()
    for column in columns:
        values = _numpy_column(dataset, column)
        if values.dtype == object:
            raise ConfigError(
                "dataset.features",
                column,
                "numbers, or lists of one length",
                f"Column {column} of split {split} holds lists of different lengths or missing values.",
            )
        with np.errstate(over="ignore"):
            flat = values.reshape(len(values), -1).astype(np.float32)
        bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            raise ConfigError(
                "dataset.features",
                column,
                "finite numbers",
                f"Row {int(np.flatnonzero(bad)[0])} of split {split} holds a missing, NaN or infinite value "
                f"({int(bad.sum())} such rows).",
            )
        parts.append((flat, values.shape[1:]))
    x = np.concatenate([p[0] for p in parts], axis=1) if len(parts) > 1 else parts[0][0]
    shape = tuple(int(d) for d in parts[0][1]) if len(parts) == 1 and parts[0][1] else (x.shape[1],)
    return np.ascontiguousarray(x), shape


def char_vocabulary(texts: list[str]) -> dict[str, int]:
    """Characters of the training texts in sorted order, from id 2 (0: padding, 1: unknown)."""
    return {ch: i + 2 for i, ch in enumerate(sorted(set("".join(texts))))}


def char_rows(texts: list[str], vocab: dict[str, int], seq_len: int) -> np.ndarray:
    """int64 ``[N, seq_len]``: each text's first ``seq_len`` characters as ids, padded with 0."""
    out = np.zeros((len(texts), seq_len), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [vocab.get(ch, 1) for ch in text[:seq_len]]
        out[row, : len(ids)] = ids
    return out


def text_column(dataset, column: str, split: str) -> list[str]:
    texts = dataset[column]
    if any(t is None for t in texts):
        row = next(i for i, t in enumerate(texts) if t is None)
        raise ConfigError("dataset.features", column, "text in every row", f"Row {row} of split {split} is empty.")
    return list(texts)


def _raw_labels(dataset, column: str, split: str) -> np.ndarray:
    values = _numpy_column(dataset, column)
    if values.ndim != 1 or values.dtype == object and any(v is None for v in values):
        raise ConfigError(
            "dataset.label", column, "one class per row", f"Column {column} of split {split} is not one value a row."
        )
    return values


def labels(named: list[tuple[str, Any]], column: str, num_classes: Any) -> tuple[list[np.ndarray], int]:
    """Each split's labels as int64 class ids, and the class count.

    ``ClassLabel`` ids are used as they are (its names fix the count); strings are mapped to ids in
    sorted order over all splits; integers (or whole floats) must be indices 0..C-1.
    """
    import datasets

    feature = named[0][1].features[column]
    kind = kind_of(feature)
    if kind not in ("numeric", "text") or not isinstance(feature, (datasets.Value, datasets.ClassLabel)):
        raise ConfigError(
            "dataset.label",
            column,
            "a column of class ids, class names or a ClassLabel",
            f"It holds {describe(feature)}.",
        )
    raw = [_raw_labels(dataset, column, split) for split, dataset in named]
    if kind == "text":
        names = np.unique(np.concatenate([r.astype(str) for r in raw]))
        ids = [np.searchsorted(names, r.astype(str)).astype(np.int64) for r in raw]
        count = len(names)
    else:
        ids = [_class_ids(r, column, split) for r, (split, _) in zip(raw, named, strict=True)]
        count = int(max((int(i.max()) for i in ids if len(i)), default=0)) + 1
        if isinstance(feature, datasets.ClassLabel):
            count = max(count, feature.num_classes)
    if num_classes is not None:
        if num_classes < count:
            raise ConfigError(
                "dataset.num_classes",
                num_classes,
                f"null or at least {count}",
                f"Column {column} has labels up to {count - 1}.",
            )
        count = int(num_classes)
    return ids, count


def _class_ids(values: np.ndarray, column: str, split: str) -> np.ndarray:
    if values.dtype == np.bool_:
        return values.astype(np.int64)
    bad = ~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values >= MAX_CLASSES)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            "dataset.label",
            column,
            f"class indices 0..C-1 (below {MAX_CLASSES}), class names, or a ClassLabel",
            f"Row {row} of split {split} has label {values[row].item()!r}. Cast the column to strings or a "
            "ClassLabel to have its values mapped to ids.",
        )
    return values.astype(np.int64)


def group_ids(dataset, column: str, split: str) -> np.ndarray:
    """Natural client ids (integers or strings) mapped to 0..G-1 in sorted order."""
    values = _numpy_column(dataset, column)
    if values.ndim != 1 or (values.dtype == object and any(v is None for v in values)):
        raise ConfigError(
            "dataset.partition_column",
            column,
            "a column with one client id (integer or string) per row",
            f"Column {column} of split {split} has missing or nested values.",
        )
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise ConfigError("dataset.partition_column", column, "client ids in every row", "Some are missing (NaN).")
    return np.unique(values.astype(str) if values.dtype == object else values, return_inverse=True)[1].astype(np.int64)
