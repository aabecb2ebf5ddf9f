"""Opening a Hugging Face data set (hub name or local files) as its named splits.

Every format goes through the ``datasets`` library, so a local copy is read by exactly the code a
hub download is read by after the download: ``load_dataset(<folder>)`` infers the builder (parquet,
csv, json, arrow, imagefolder) and the splits from file names such as ``data/train-*.parquet`` and
``test/`` folders, as it does for a hub repository; ``load_from_disk`` reads a ``save_to_disk``
folder. A hub name is ``load_dataset(name)`` (what ``flwr_datasets.FederatedDataset`` calls),
which uses the local cache and works with ``HF_DATASETS_OFFLINE=1`` once the data are cached.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError

FORMATS = ("auto", "hub", "parquet", "arrow", "csv", "json", "imagefolder", "disk")
#: file extensions and the ``datasets`` builder that reads them
EXTENSIONS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
}
#: what a local path may look like for each explicit format
_ALLOWED = {
    "disk": "a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk",
    "imagefolder": "a folder of class folders of images (optionally inside train/ and test/)",
}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def is_saved_to_disk(path: str) -> bool:
    """A ``save_to_disk`` folder: a Dataset has state.json, a DatasetDict has dataset_dict.json."""
    return os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json"))


def _looks_like_hub_name(path: str) -> bool:
    """``owner/name`` or ``name`` that is not a file name (a missing ``x.csv`` is a missing file, not a repo)."""
    return bool(_HUB_NAME.match(path)) and os.path.splitext(path)[1].lower() not in EXTENSIONS


def resolve_format(path: Any, fmt: str) -> str:
    """The format to read ``path`` with (``folder``: let ``load_dataset`` infer it); ConfigError if absent.

    Data-free apart from looking at the file system, so it runs in the config check.
    """
    if not isinstance(path, (str, os.PathLike)) or str(path) in ("", "???"):
        raise ConfigError(
            "dataset.path",
            path,
            "a Hugging Face hub name (e.g. uoft-cs/cifar10) or a local file or folder",
            "Set it on the command line, e.g. dataset.path=uoft-cs/cifar10 or dataset.path=/data/train.parquet.",
        )
    path = os.path.expanduser(str(path))
    if fmt == "hub":
        return "hub"
    if not os.path.exists(path):
        if fmt == "auto" and _looks_like_hub_name(path):
            return "hub"
        raise ConfigError(
            "dataset.path",
            path,
            "an existing file or folder" + (" or a hub name such as owner/name" if fmt == "auto" else ""),
            f"Nothing exists at {os.path.abspath(path)}.",
        )
    is_dir = os.path.isdir(path)
    if fmt in ("disk", "imagefolder") and not is_dir:
        raise ConfigError("dataset.path", path, _ALLOWED[fmt], "It is a file, not a folder.")
    if fmt == "disk" and not is_saved_to_disk(path):
        raise ConfigError(
            "dataset.path", path, _ALLOWED["disk"], "The folder has neither state.json nor dataset_dict.json."
        )
    if fmt != "auto":
        return fmt
    if is_dir:
        return "disk" if is_saved_to_disk(path) else "folder"
    builder = EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if builder is None:
        raise ConfigError(
            "dataset.format",
            fmt,
            f"one of {', '.join(FORMATS[1:])} for this file",
            f"The extension of {path} does not say what it holds; known ones: {', '.join(EXTENSIONS)}.",
        )
    return builder


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars from ``datasets`` while loading (the run prints its own progress)."""
    import datasets
    from datasets.utils import logging as hf_logging

    were_disabled = datasets.are_progress_bars_disabled()
    level = hf_logging.get_verbosity()
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if not were_disabled:
            datasets.enable_progress_bars()


def _load(path: str, fmt: str, subset: str | None, split: str):
    import datasets

    if fmt == "disk":
        return datasets.load_from_disk(path)
    if fmt in ("hub", "folder"):
        return datasets.load_dataset(path, subset)
    if fmt == "imagefolder":
        return datasets.load_dataset("imagefolder", data_dir=path)
    if os.path.isdir(path):
        return datasets.load_dataset(fmt, data_dir=path)
    return datasets.load_dataset(fmt, data_files={split: path})


def open_splits(ds: dict) -> dict[str, Any]:
    """Every split of the data set as ``{name: datasets.Dataset}``.

    A ``save_to_disk`` folder of one Dataset, and a single local file, are the split named by
    ``dataset.split``. Any failure of ``datasets`` (not cached offline, unreadable file, ...) becomes a
    ConfigError naming ``dataset.path`` with the library's own message.
    """
    import datasets

    path = os.path.expanduser(str(ds["path"]))
    fmt = resolve_format(path, ds["format"])
    try:
        with _quiet():
            loaded = _load(path, fmt, ds.get("subset"), ds["split"])
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a library boundary: any failure is the data's or the network's
        hint = (
            " With HF_DATASETS_OFFLINE=1 only data sets already in the cache load."
            if fmt == "hub" and os.environ.get("HF_DATASETS_OFFLINE", os.environ.get("HF_HUB_OFFLINE")) == "1"
            else ""
        )
        raise ConfigError(
            "dataset.path",
            path,
            f"a data set that datasets can read as {fmt}",
            f"Loading it failed: {type(err).__name__}: {' '.join(str(err).split())[:600]}{hint}",
        ) from None
    if isinstance(loaded, datasets.Dataset):
        return {ds["split"]: loaded}
    return dict(loaded)


def pick_splits(splits: dict[str, Any], ds: dict) -> tuple[Any, Any | None, str | None]:
    """``(train, test or None, test split name)``: ``dataset.split``, and ``dataset.test_split`` or
    the data set's own ``test`` split when it has one (None: carve ``test_fraction``)."""
    names = ", ".join(splits) or "none"
    if ds["split"] not in splits:
        raise ConfigError("dataset.split", ds["split"], f"a split of the data set: {names}")
    test_name = ds.get("test_split")
    if test_name is not None and test_name not in splits:
        raise ConfigError("dataset.test_split", test_name, f"null or a split of the data set: {names}")
    if test_name is None and "test" in splits and ds["split"] != "test":
        test_name = "test"
    return splits[ds["split"]], (splits[test_name] if test_name is not None else None), test_name
