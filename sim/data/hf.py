"""``dataset=hf``: a Hugging Face data set, by hub name or from local files, as a simulator pool.

The data set is opened through ``datasets`` (:mod:`sim.data.hf_open`), so a local parquet, csv,
json, arrow, imagefolder or ``save_to_disk`` copy is read exactly as a hub download is. The input
column(s) become flat stored rows (:mod:`sim.data.hf_columns`, :mod:`sim.data.hf_images`): images
decoded once to uint8, text to character ids, numbers to float32. The data set's own ``test`` split
is the test set when it has one; otherwise ``test_fraction`` of the training rows are carved out,
then ``val_fraction`` of the rest become the server's validation split. ``partition_column`` gives
the natural clients (FEMNIST's ``writer_id``), kept whole by the carving and used by
``partition=natural`` or ``partition=flwr partition.partitioner=NaturalIdPartitioner``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..validation import boolean, choice, optional_integer
from .hf_columns import (
    KINDS,
    char_rows,
    char_vocabulary,
    group_ids,
    labels,
    numeric_rows,
    require_column,
    resolve_inputs,
    text_column,
)
from .hf_images import channel_stats, decode_image_splits
from .hf_open import FORMATS, open_splits, pick_splits, resolve_format
from .inputs import InputSpec
from .pool import Pool, carve_splits

#: every key of configs/dataset/hf.yaml except ``name``, with its default
DEFAULTS: dict[str, Any] = {
    "path": None,
    "format": "auto",
    "subset": None,
    "split": "train",
    "test_split": None,
    "features": None,
    "input_kind": "auto",
    "label": "label",
    "partition_column": None,
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "normalize": True,
    "tokenizer": None,
    "seq_len": None,
    "train_classes": None,
    "num_classes": None,
    "data_seed": None,
}
TOKENIZERS = ("char",)


def _name(field: str, value: Any, *, optional: bool, what: str = "a column name") -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or value == "???":
        raise ConfigError(field, value, ("null or " if optional else "") + what)


def check_config(ds: dict) -> None:
    """Every check of ``dataset=hf`` that reads no data (the path is only looked up on disk)."""
    choice("dataset.format", ds.get("format"), FORMATS)
    choice("dataset.input_kind", ds.get("input_kind"), KINDS)
    _name("dataset.split", ds.get("split"), optional=False, what="a split name, e.g. train")
    _name("dataset.test_split", ds.get("test_split"), optional=True, what="a split name, e.g. test")
    if ds.get("test_split") is not None and ds["test_split"] == ds["split"]:
        raise ConfigError("dataset.test_split", ds["test_split"], f"a split other than dataset.split={ds['split']}")
    _name("dataset.subset", ds.get("subset"), optional=True, what="a configuration name of the data set")
    features = ds.get("features")
    if not (
        features is None
        or (isinstance(features, str) and features)
        or (isinstance(features, (list, tuple)) and features and all(isinstance(f, str) and f for f in features))
    ):
        raise ConfigError(
            "dataset.features", features, "null (detect), a column name, or a list of numeric column names"
        )
    _name("dataset.label", ds.get("label"), optional=False)
    _name("dataset.partition_column", ds.get("partition_column"), optional=True)
    boolean("dataset.normalize", ds.get("normalize"), "(per-channel mean/std of the training rows)")
    if ds.get("tokenizer") is not None:
        choice("dataset.tokenizer", ds["tokenizer"], TOKENIZERS)
    optional_integer("dataset.seq_len", ds.get("seq_len"), 1, "the longest training text")
    optional_integer("dataset.num_classes", ds.get("num_classes"), 2, "from the ClassLabel or max label + 1")
    optional_integer("dataset.data_seed", ds.get("data_seed"), 0, "splits follow the run seed")
    resolve_format(ds.get("path"), ds["format"])


def _check_columns(train, test, test_name: str | None, ds: dict, split: str) -> None:
    inputs = [ds["features"]] if isinstance(ds["features"], str) else list(ds["features"] or [])
    for column in inputs:
        require_column(train.features, column, "dataset.features", split)
    require_column(train.features, ds["label"], "dataset.label", split)
    if ds.get("partition_column") is not None:
        require_column(train.features, ds["partition_column"], "dataset.partition_column", split)
    if test is not None:
        field = "dataset.test_split"
        for column in [ds["label"], *inputs]:
            if column not in test.features:
                raise ConfigError(
                    field, test_name, f"a split with the columns of split {split}", f"Split {test_name} lacks {column}."
                )


def _inputs(parts: list[tuple[str, Any, np.ndarray | None]], columns: list[str], kind: str, ds: dict):
    """Each part's stored rows and the spec (before normalization statistics).

    ``parts`` are ``(split name, rows of it as a Dataset, their row numbers in the split or None)``;
    the first is the training part, whose texts set the character vocabulary.
    """
    named = [(split, dataset) for split, dataset, _ in parts]
    if kind == "image":
        arrays, shape = decode_image_splits(parts, columns[0])
        return arrays, InputSpec(shape, kind="image")
    if kind == "text":
        if ds.get("tokenizer") is None:
            raise ConfigError(
                "dataset.tokenizer",
                None,
                f"char, to turn text column {columns[0]} into character ids",
                "The simulator has no word tokenizer; dataset.tokenizer=char maps each character to an id "
                "(dataset.seq_len sets the length).",
            )
        texts = [text_column(dataset, columns[0], split) for split, dataset in named]
        vocab = char_vocabulary(texts[0])
        seq_len = ds.get("seq_len") or max((len(t) for t in texts[0]), default=1) or 1
        arrays = [char_rows(t, vocab, seq_len) for t in texts]
        return arrays, InputSpec((seq_len,), kind="tokens", vocab_size=len(vocab) + 2)
    pairs = [numeric_rows(dataset, columns, split) for split, dataset in named]
    width = pairs[0][0].shape[1]
    arrays = [x if len(x) else np.zeros((0, width), dtype=np.float32) for x, _ in pairs]
    if any(x.shape[1] != width for x in arrays):
        raise ConfigError("dataset.test_split", named[-1][0], "a split with rows shaped like the training rows")
    return arrays, InputSpec(pairs[0][1], kind="float")


def _normalized(spec: InputSpec, x: np.ndarray) -> InputSpec:
    """The spec with mean/std of the training rows: per channel for images, per feature for numeric
    columns (one value for a list column of several dimensions); token ids are left alone."""
    from dataclasses import replace

    if spec.kind == "image":
        mean, std = channel_stats(x, spec.shape[0])
        return replace(spec, mean=mean, std=std)
    if spec.kind == "float" and len(x):
        per_feature = len(spec.shape) == 1  # a list column shaped (H, W): one mean and std overall
        means = x.mean(axis=0, dtype=np.float64) if per_feature else np.array([x.mean(dtype=np.float64)])
        stds = x.std(axis=0, dtype=np.float64) if per_feature else np.array([x.std(dtype=np.float64)])
        stds = np.where(stds > 0, stds, 1.0)
        return replace(spec, mean=tuple(float(m) for m in means), std=tuple(float(s) for s in stds))
    return spec


def load_pool(ds: dict, num_clients: int, seed: int) -> Pool:
    """Open the data set, carve val (and test if it has no test split), convert each part's columns.

    The carving is decided on labels and client ids first, so each part's inputs are converted
    straight into their own array (a selection of the split's rows, no copy of the decoded data).
    """
    del num_clients  # the pool does not depend on it
    fmt = resolve_format(ds["path"], ds["format"])
    train, test, test_name = pick_splits(open_splits(ds), ds)
    split = ds["split"]
    _check_columns(train, test, test_name, ds, split)
    columns, kind = resolve_inputs(train.features, ds, split, fmt)
    if len(train) == 0:
        raise ConfigError("dataset.split", split, "a split with at least one row", f"Split {split} is empty.")
    named = [(split, train)] + ([(test_name, test)] if test is not None else [])
    ys, num_classes = labels(named, ds["label"], ds.get("num_classes"))
    groups = group_ids(train, ds["partition_column"], split) if ds.get("partition_column") else None
    rows = carve_splits(
        np.arange(len(train), dtype=np.int64),
        ys[0],
        groups,
        val_fraction=ds["val_fraction"],
        test_fraction=None if test is not None else ds["test_fraction"],
        rng_key=("data", "hf"),
        seed=seed if ds.get("data_seed") is None else ds["data_seed"],
    )
    keys = ("x", "x_val") + (("x_test",) if test is None else ())
    parts: list[tuple[str, Any, np.ndarray | None]] = [(split, train.select(rows[key]), rows[key]) for key in keys]
    if test is not None:
        parts.append((str(test_name), test, None))
    arrays, spec = _inputs(parts, columns, kind, ds)
    out = dict(zip(("x", "x_val", "x_test"), arrays, strict=True))
    out.update(
        y=rows["y"], y_val=rows["y_val"], y_test=rows["y_test"] if test is None else ys[1], groups=rows["groups"]
    )
    if ds["normalize"]:
        spec = _normalized(spec, out["x"])
    return Pool(**out, num_classes=num_classes, input_shape=spec.shape, name="hf", inputs=spec)
