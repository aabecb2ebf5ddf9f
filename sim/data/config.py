"""Reading and checking the ``dataset`` and ``partition`` config groups before any data is touched.

The configs arrive as OmegaConf DictConfigs (from Hydra) or plain dicts (from tests and scripts).
Both become plain dicts filled with the same defaults as the YAML files, so a script can pass
``{"name": "dirichlet"}`` and get the documented behaviour. Every check that needs no data lives
here, so a typo fails in milliseconds instead of after a dataset has been generated.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..validation import choice, in_range, is_int, is_number
from .feature_skew import FEATURE_SKEW_DEFAULTS, check_feature_skew

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"test_fraction": 0.2, "val_fraction": 0.1, "data_seed": None, "train_classes": None},
    "synthetic": {
        "alpha": 1.0,
        "beta": 1.0,
        "num_features": 60,
        "num_classes": 10,
        "size_lognormal_mean": 4.0,
        "size_lognormal_sigma": 2.0,
        "size_offset": 50,
        "size_cap": None,
        "test_fraction": 0.2,
        "val_fraction": 0.1,
        "data_seed": None,
        "iid": False,
        "train_classes": None,
    },
    "npz": {
        "path": None,
        "val_fraction": 0.1,
        "test_fraction": 0.2,
        "input_shape": None,
        "layout": "auto",
        "train_classes": None,
    },
}
# Sources that live in their own module declare their defaults and data-free checks there.
EXTERNAL_SOURCES = {"hf": "sim.data.hf", "leaf": "sim.data.leaf", "mnist1d": "sim.data.mnist1d"}
PARTITION_DEFAULTS: dict[str, dict[str, Any]] = {
    "iid": {},
    "dirichlet": {"alpha": 0.5, "min_partition_size": 2, "self_balancing": False},
    "shards": {"shards_per_client": 2},
    "label_mix": {"alpha": 0.1},
    "natural": {},
    "flwr": {"partitioner": "IidPartitioner", "args": None},
}
# Class counts known without reading the data (synthetic: its num_classes setting).
KNOWN_CLASSES = {"digits": 10}
# Sources that know which client owns each row (npz only when the file has client_train).
NATURAL_SOURCES = ("synthetic", "npz", "hf", "leaf")


def _source_module(name: str):
    """The module of a source in EXTERNAL_SOURCES (imported only when that source is used)."""
    import importlib

    return importlib.import_module(EXTERNAL_SOURCES[name])


def _dataset_defaults(name: str) -> dict[str, Any]:
    return _source_module(name).DEFAULTS if name in EXTERNAL_SOURCES else DATASET_DEFAULTS[name]


def as_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict from a DictConfig or mapping; OmegaConf's ``???`` is kept as the string."""
    if cfg is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    if not isinstance(cfg, Mapping):
        raise ConfigError("dataset/partition", cfg, "a mapping of settings")
    return dict(cfg)


def _with_defaults(cfg: Any, group: str, defaults: dict[str, dict[str, Any]]) -> dict[str, Any]:
    values = as_dict(cfg)
    if group == "dataset":
        name = choice("dataset.name", values.get("name"), [*defaults, *EXTERNAL_SOURCES])
        return {**_dataset_defaults(name), **values}
    name = choice(f"{group}.name", values.get("name"), defaults)
    return {**FEATURE_SKEW_DEFAULTS, **defaults[name], **values}


def _check_number(
    cfg: dict, group: str, key: str, lo: float, allowed: str, *, strict: bool = False, integer: bool = False
) -> None:
    v = cfg.get(key)
    if integer:
        ok = is_int(v) and in_range(v, lo, None, lo_open=strict)
    else:
        ok = is_number(v) and in_range(v, lo, None, lo_open=strict)
    if not ok:
        raise ConfigError(f"{group}.{key}", v, allowed)


def _check_fractions(ds: dict) -> None:
    for key in ("test_fraction", "val_fraction"):
        v = ds.get(key)
        if not (is_number(v) and 0 <= v < 1):
            raise ConfigError(f"dataset.{key}", v, "a number in [0, 1)")
    total = ds["test_fraction"] + ds["val_fraction"]
    if total >= 1:
        raise ConfigError(
            "dataset.test_fraction + dataset.val_fraction",
            total,
            "a sum below 1",
            "Some rows must be left for the clients to train on.",
        )


def _check_synthetic(ds: dict) -> None:
    _check_number(ds, "dataset", "alpha", 0, "a number >= 0")
    _check_number(ds, "dataset", "beta", 0, "a number >= 0")
    _check_number(ds, "dataset", "num_features", 1, "an integer >= 1", integer=True)
    _check_number(ds, "dataset", "num_classes", 2, "an integer >= 2", integer=True)
    _check_number(ds, "dataset", "size_lognormal_mean", -math.inf, "a number")
    _check_number(ds, "dataset", "size_lognormal_sigma", 0, "a number >= 0")
    _check_number(ds, "dataset", "size_offset", 1, "an integer >= 1 (every user needs a row)", integer=True)
    if ds.get("size_cap") is not None:
        _check_number(ds, "dataset", "size_cap", 1, "null or an integer >= 1", integer=True)
    if not isinstance(ds.get("iid", False), bool):
        raise ConfigError("dataset.iid", ds.get("iid"), "true or false")
    if ds.get("data_seed") is not None:
        _check_number(ds, "dataset", "data_seed", 0, "null or an integer >= 0", integer=True)


def _check_npz(ds: dict) -> None:
    path = ds.get("path")
    if not isinstance(path, (str, os.PathLike)) or str(path) in ("", "???"):
        raise ConfigError(
            "dataset.path",
            path,
            "the path of an existing .npz file",
            "Set it on the command line, e.g. dataset.path=/data/mine.npz.",
        )
    if not os.path.isfile(path):
        raise ConfigError(
            "dataset.path",
            str(path),
            "the path of an existing .npz file",
            f"No file exists at {os.path.abspath(path)}.",
        )
    choice("dataset.layout", ds.get("layout", "auto"), ("auto", "nhw", "nhwc", "nchw", "flat"))
    shape = ds.get("input_shape")
    if shape is not None and not (
        isinstance(shape, (list, tuple)) and shape and all(is_int(d) and d >= 1 for d in shape)
    ):
        raise ConfigError("dataset.input_shape", shape, "null or a list of positive integers, e.g. [1, 28, 28]")


def _check_partition(part: dict, dataset_name: str) -> None:
    name = part["name"]
    if name == "dirichlet":
        _check_number(part, "partition", "alpha", 0, "a number > 0 (smaller: more label skew)", strict=True)
        _check_number(part, "partition", "min_partition_size", 0, "an integer >= 0", integer=True)
        if not isinstance(part.get("self_balancing"), bool):
            raise ConfigError("partition.self_balancing", part.get("self_balancing"), "true or false")
    elif name == "label_mix":
        _check_number(part, "partition", "alpha", 0, "a number > 0 (smaller: more label skew)", strict=True)
    elif name == "shards":
        _check_number(part, "partition", "shards_per_client", 1, "an integer >= 1", integer=True)
    elif name == "flwr":
        from .flwr_partition import check_flwr_partition

        check_flwr_partition(part)
    elif name == "natural" and dataset_name not in NATURAL_SOURCES:
        others = ", ".join(p for p in PARTITION_DEFAULTS if p != "natural")
        raise ConfigError(
            "partition.name",
            name,
            f"one of {others} for dataset {dataset_name}",
            f"Dataset {dataset_name} has no client ids; natural works with "
            f"{' and '.join(NATURAL_SOURCES)} (npz with a client_train array).",
        )


def check_train_classes(classes: Any, num_classes: int | None) -> None:
    """``dataset.train_classes``: null, or labels the data set has (when its class count is known).

    A label the data lack would leave its rows empty and surface later as a misleading error about
    num_clients (more clients than training rows); it is reported here, naming this field.
    """
    if classes is None:
        return
    if not (isinstance(classes, (list, tuple)) and classes and all(is_int(c) and c >= 0 for c in classes)):
        raise ConfigError(
            "dataset.train_classes", classes, "null (all) or a non-empty list of labels, e.g. [0,1,2,3,4]"
        )
    if not is_int(num_classes):
        return  # the class count is only known once the data are loaded
    missing = sorted({c for c in classes if c >= num_classes})
    if missing:
        raise ConfigError(
            "dataset.train_classes",
            list(classes),
            f"labels in 0..{num_classes - 1}",
            f"The data set has {num_classes} classes; {missing} is not one of them.",
        )


def checked_configs(dataset_cfg: Any, partition_cfg: Any, num_clients: int) -> tuple[dict, dict]:
    """The two configs as plain dicts with defaults filled in, after every data-free check."""
    if not is_int(num_clients) or num_clients <= 0:
        raise ConfigError("num_clients", num_clients, "an integer >= 1")
    ds = _with_defaults(dataset_cfg, "dataset", DATASET_DEFAULTS)
    part = _with_defaults(partition_cfg, "partition", PARTITION_DEFAULTS)
    _check_fractions(ds)
    check_train_classes(ds.get("train_classes"), KNOWN_CLASSES.get(ds["name"]) or ds.get("num_classes"))
    if ds["name"] == "digits" and ds.get("data_seed") is not None:
        _check_number(ds, "dataset", "data_seed", 0, "null or an integer >= 0", integer=True)
    if ds["name"] == "synthetic":
        _check_synthetic(ds)
    elif ds["name"] == "npz":
        _check_npz(ds)
    elif ds["name"] in EXTERNAL_SOURCES:
        _source_module(ds["name"]).check_config(ds)
    _check_partition(part, ds["name"])
    check_feature_skew(part)
    return ds, part


def validate_data_config(dataset_cfg: Any, partition_cfg: Any, num_clients: int) -> None:
    """Raise :class:`ConfigError` for any setting that is wrong whatever the data turn out to be.

    Cheap: it reads no data (for npz it only checks that the file exists), so entry points call
    it before starting anything. :func:`load_federated_data` calls it again and then checks what
    only the data can tell (e.g. more clients than training rows).
    """
    checked_configs(dataset_cfg, partition_cfg, num_clients)
