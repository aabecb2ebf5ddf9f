"""LEAF's JSON data sets (FEMNIST, Shakespeare, Synthetic, ...): one client per LEAF user.

LEAF's preprocessing (``./preprocess.sh`` in ``data/<name>/``) writes ``data/<name>/data/train/*.json``
and ``test/*.json``, each file ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...],
"y": [...]}}}``. ``dataset.path`` is that ``data`` folder (with ``train/`` and ``test/``), or one folder
of such files (``all_data/``), or one file; without a ``test/`` folder ``test_fraction`` of each user's
rows become the test set. Users are clients in sorted user-id order (not file order, so renaming or
re-splitting the files changes nothing); each client keeps its rows in file order and gives up
``val_fraction`` of them to the server's validation set. Test rows of every user, including users
that only appear in ``test/`` (LEAF's ``-t user`` split), are pooled into the server's test set; a
training user's own test rows are also its client's local test (per-client evaluation, ``eval.clients``)
with ``partition=natural`` and ``eval.local_test_fraction=0`` (:mod:`sim.data.local_test`).

Tasks (``dataset.task``, ``auto`` looks at the first example):

- ``femnist``: ``x`` of 784 numbers in [0, 1] -> ``1x28x28`` images, 62 classes. Stored uint8 when
  every value is exactly ``k / 255`` in float32 (LEAF's FEMNIST is), which is what the model sees
  after the on-the-fly ``/255``: four times less memory, identical inputs; otherwise float32.
- ``shakespeare``: ``x`` strings of 80 characters, ``y`` the next character; characters map to ids as
  LEAF's ``letter_to_index`` does (their position in :data:`ALL_LETTERS`), 80 ids and 80 classes.
  LEAF's ``find`` gives -1 for a character outside the set (an invalid embedding index); here such a
  character is an error naming the user and file rather than a silent wrong id.
- ``vector``: any other numeric ``x`` (LEAF's Synthetic): float32 features of the example's shape,
  ``max label + 1`` classes.

Sent140 (raw tweets, needs LEAF's GloVe vocabulary) and CelebA (image file names) are refused with a
pointer to ``dataset=npz`` / ``dataset=hf``. Everything a file can get wrong is a ConfigError naming
``dataset.path``, the file and, where it applies, the user.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..validation import choice, optional_integer
from .inputs import InputSpec
from .pool import Pool, carve_splits

DEFAULTS: dict[str, Any] = {
    "path": None,
    "task": "auto",
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "data_seed": None,
    "train_classes": None,
}
TASKS = ("auto", "femnist", "shakespeare", "vector")
# LEAF's models/utils/language_utils.py: letter_to_index(c) = ALL_LETTERS.find(c)
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
FEMNIST_SHAPE = (1, 28, 28)
FEMNIST_CLASSES = 62  # 10 digits, 26 upper- and 26 lower-case letters
_LETTER_IDS = np.full(128, -1, dtype=np.int64)
_LETTER_IDS[[ord(c) for c in ALL_LETTERS]] = np.arange(len(ALL_LETTERS))

Users = dict[str, tuple[list, list, str]]  # user -> (x, y, file it came from)


def _path_error(path: Any, detail: str) -> ConfigError:
    return ConfigError(
        "dataset.path", str(path), "a LEAF data folder (with train/ and test/), a folder of .json or a .json", detail
    )


def check_config(ds: dict) -> None:
    """The checks that need no data: task, data_seed, and a path that exists."""
    choice("dataset.task", ds.get("task"), TASKS)
    optional_integer("dataset.data_seed", ds.get("data_seed"), 0, "the run seed")
    path = ds.get("path")
    if not isinstance(path, (str, os.PathLike)) or str(path) in ("", "???"):
        raise _path_error(path, "Set it on the command line, e.g. dataset.path=leaf/data/femnist/data.")
    if not os.path.exists(path):
        raise _path_error(path, f"Nothing exists at {os.path.abspath(path)}.")


def _json_files(folder: Path, root: Any) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".json" and p.is_file())
    if not files:
        raise _path_error(root, f"The folder {folder} holds no .json file.")
    return files


def split_files(root: Any) -> tuple[list[Path], list[Path] | None]:
    """(training files, test files or None when the test set must be carved)."""
    path = Path(root)
    if path.is_file():
        return [path], None
    if (path / "train").is_dir():
        test = path / "test"
        return _json_files(path / "train", root), _json_files(test, root) if test.is_dir() else None
    return _json_files(path, root), None


def _read_json(file: Path, root: Any) -> dict:
    try:
        with open(file, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _path_error(root, f"Reading {file} failed: {err}") from None
    if not isinstance(content, dict) or not {"users", "user_data"} <= set(content):
        have = ", ".join(sorted(content)) if isinstance(content, dict) else type(content).__name__
        raise _path_error(root, f"{file} is not a LEAF file: it needs keys users and user_data; it has {have}.")
    return content


def _check_file(content: dict, file: Path, root: Any) -> None:
    """users, user_data and num_samples must describe the same users and row counts."""
    users, data = content["users"], content["user_data"]
    if not isinstance(users, list) or not isinstance(data, dict):
        raise _path_error(root, f"In {file}, users must be a list and user_data a mapping.")
    extra = sorted(set(map(str, data)) - set(map(str, users)))
    missing = [u for u in users if str(u) not in data]
    if extra or missing:
        who = f"user {missing[0]!r} is in users but not in user_data" if missing else ""
        who = who or f"user {extra[0]!r} is in user_data but not in users"
        raise _path_error(root, f"In {file}, {who}.")
    counts = content.get("num_samples")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(users)):
        raise _path_error(root, f"In {file}, num_samples must list one count per user ({len(users)}).")
    for i, user in enumerate(users):
        rows = data[str(user)]
        if not isinstance(rows, dict) or not isinstance(rows.get("x"), list) or not isinstance(rows.get("y"), list):
            raise _path_error(root, f"In {file}, user_data[{user!r}] must hold lists x and y.")
        if len(rows["x"]) != len(rows["y"]):
            raise _path_error(root, f"In {file}, user {user!r} has {len(rows['x'])} x but {len(rows['y'])} y.")
        if counts is not None and counts[i] != len(rows["x"]):
            raise _path_error(
                root, f"In {file}, num_samples says user {user!r} has {counts[i]} rows but x holds {len(rows['x'])}."
            )


def read_users(files: list[Path], root: Any) -> Users:
    """Every user's rows from one split's files (a user in two files of one split is an error)."""
    users: Users = {}
    for file in files:
        content = _read_json(file, root)
        _check_file(content, file, root)
        for user in content["users"]:
            key = str(user)
            if key in users:
                raise _path_error(root, f"User {key!r} is in both {users[key][2]} and {file}.")
            rows = content["user_data"][key]
            users[key] = (rows["x"], rows["y"], str(file))
    return users


def detect_task(users: Users, root: Any) -> str:
    """femnist, shakespeare or vector from the first example; unsupported LEAF sets are refused."""
    first = next(((u, x[0], f) for u, (x, _, f) in sorted(users.items()) if x), None)
    if first is None:
        raise _path_error(root, "No user has any training row.")
    user, example, file = first
    if isinstance(example, str):
        if example.lower().endswith((".jpg", ".jpeg", ".png")):
            raise _path_error(
                root,
                f"{file} holds image file names (CelebA); decode them into an .npz (dataset=npz) or an "
                "imagefolder (dataset=hf) instead.",
            )
        return "shakespeare"
    if isinstance(example, list) and any(isinstance(v, str) for v in example):
        raise _path_error(
            root,
            f"{file} holds raw text records (Sent140, user {user!r}), which need a word vocabulary; tokenize them "
            "into an .npz (dataset=npz) instead.",
        )
    size = int(np.size(np.asarray(example, dtype=object)))
    return "femnist" if size == int(np.prod(FEMNIST_SHAPE)) else "vector"


def _text_ids(strings: list, user: str, file: str, root: Any, what: str) -> np.ndarray:
    """Strings of one length -> ``[n, length]`` LEAF character ids."""
    if not all(isinstance(s, str) for s in strings):
        raise _path_error(root, f"In {file}, user {user!r} has a {what} that is not a string (task shakespeare).")
    lengths = {len(s) for s in strings}
    if len(lengths) > 1:
        raise _path_error(root, f"In {file}, user {user!r} mixes {what} strings of lengths {sorted(lengths)}.")
    width = lengths.pop() if lengths else 0
    codes = np.frombuffer("".join(strings).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = _LETTER_IDS[np.minimum(codes, 127)]
    ids[codes > 127] = -1
    bad = np.flatnonzero(ids < 0)
    if len(bad):
        char = chr(int(codes[bad[0]]))
        raise _path_error(
            root,
            f"In {file}, user {user!r} has the character {char!r} in {what} {int(bad[0]) // max(width, 1)}, which "
            "is not in LEAF's Shakespeare alphabet (LEAF would map it to -1, an invalid id).",
        )
    return ids.reshape(len(strings), width)


def _numbers(x: list, user: str, file: str, root: Any) -> np.ndarray:
    try:
        rows = np.asarray(x, dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise _path_error(
            root, f"In {file}, user {user!r} has x that is not numeric rows of one shape: {err}"
        ) from None
    if rows.ndim == 0 or not np.isfinite(rows).all():
        raise _path_error(root, f"In {file}, user {user!r} has x that is not finite numeric rows.")
    return rows


def _labels(y: list, task: str, user: str, file: str, root: Any) -> np.ndarray:
    if task == "shakespeare":
        return _text_ids(y, user, file, root, "y").reshape(len(y), -1)[:, 0] if y else np.zeros(0, np.int64)
    labels = np.asarray(y, dtype=object)
    ok = labels.ndim == 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() and v >= 0 for v in y
    )
    if not ok:
        raise _path_error(root, f"In {file}, user {user!r} has y that are not class indices (integers >= 0).")
    return np.asarray(y, dtype=np.int64)


def encode(users: Users, task: str, root: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x [M, *shape], y [M], group [M])`` with users in sorted order; ``group`` numbers the users
    that have rows 0, 1, ... (a user without rows is no client: it would have nothing to train on)."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    shape_user = ""
    for user in sorted(users):
        x, y, file = users[user]
        group = len(groups) if x else -1
        if task == "shakespeare":
            if len(y) and not all(isinstance(c, str) and len(c) == 1 for c in y):
                raise _path_error(root, f"In {file}, user {user!r} has a y that is not one character.")
            rows = _text_ids(x, user, file, root, "x")
        else:
            rows = _numbers(x, user, file, root)
        if len(rows):
            if shape is not None and rows.shape[1:] != shape:
                raise _path_error(
                    root,
                    f"In {file}, user {user!r} has x rows of shape {rows.shape[1:]} but user {shape_user!r} "
                    f"has {shape}; all rows must have one shape.",
                )
            shape, shape_user = rows.shape[1:], user
        if group >= 0:
            xs.append(rows)
            ys.append(_labels(y, task, user, file, root))
            groups.append(np.full(len(rows), group, dtype=np.int64))
    if shape is None:
        raise _path_error(root, "No user has any row.")
    x_all = np.concatenate([r.reshape(len(r), *shape) for r in xs])
    return x_all, np.concatenate(ys), np.concatenate(groups)


def _task_shape(task: str, x: np.ndarray, root: Any) -> tuple[int, ...]:
    if task == "femnist":
        if int(np.prod(x.shape[1:])) != int(np.prod(FEMNIST_SHAPE)):
            raise _path_error(root, f"Task femnist needs x of 784 values per row; the rows have shape {x.shape[1:]}.")
        return FEMNIST_SHAPE
    return tuple(int(d) for d in x.shape[1:]) or (1,)


def _as_storage(task: str, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat rows in the storage dtype: uint8 pixels when that loses nothing (see the module docstring)."""
    flat = [a.reshape(len(a), int(np.prod(a.shape[1:]))) for a in (train, test)]
    if task == "shakespeare":
        return flat[0].astype(np.int64), flat[1].astype(np.int64)
    if task == "femnist":
        pixels = [np.rint(a * 255.0) for a in flat]
        exact = all(
            np.all((p >= 0) & (p <= 255)) and np.array_equal(p.astype(np.float32) / np.float32(255.0), a)
            for p, a in zip(pixels, flat, strict=True)
        )
        if exact:
            return pixels[0].astype(np.uint8), pixels[1].astype(np.uint8)
    return flat[0].astype(np.float32), flat[1].astype(np.float32)


def _num_classes(task: str, labels: list[np.ndarray], root: Any) -> int:
    top = max((int(y.max()) for y in labels if len(y)), default=0)
    if task == "shakespeare":
        return len(ALL_LETTERS)
    if task == "femnist":
        if top >= FEMNIST_CLASSES:
            raise _path_error(root, f"Task femnist has {FEMNIST_CLASSES} classes; a y is {top}. Use task=vector.")
        return FEMNIST_CLASSES
    return top + 1


def load_pool(ds: dict, num_clients: int, seed: int) -> Pool:
    """Read, check and split: training users become natural clients, test rows go to the server."""
    root = ds["path"]
    train_files, test_files = split_files(root)
    train_users = read_users(train_files, root)
    task = ds["task"] if ds["task"] != "auto" else detect_task(train_users, root)
    x, y, groups = encode(train_users, task, root)
    has_test = test_files is not None
    test_groups = None
    if test_files is not None:
        test_users = read_users(test_files, root)
        x_test, y_test, _ = encode(test_users, task, root)
        if x_test.shape[1:] != x.shape[1:]:
            raise _path_error(root, f"Test rows have shape {x_test.shape[1:]}, training rows {x.shape[1:]}.")
        test_groups = user_groups(train_users, test_users)
    else:
        x_test, y_test = x[:0], y[:0]
    shape = _task_shape(task, x, root)
    x_flat, x_test_flat = _as_storage(task, x, x_test)
    parts = carve_splits(
        x_flat,
        y,
        groups,
        val_fraction=ds["val_fraction"],
        test_fraction=None if has_test else ds["test_fraction"],
        rng_key=("data", "leaf"),
        seed=seed if ds.get("data_seed") is None else int(ds["data_seed"]),
    )
    if has_test:
        parts["x_test"], parts["y_test"] = x_test_flat, y_test
    if task == "shakespeare":
        spec = InputSpec(shape, kind="tokens", vocab_size=len(ALL_LETTERS))
    else:
        spec = InputSpec(shape, kind="image" if task == "femnist" else "float")
    classes = _num_classes(task, [y, y_test], root)
    return Pool(**parts, num_classes=classes, input_shape=shape, name="leaf", inputs=spec, test_groups=test_groups)


def user_groups(train_users: Users, test_users: Users) -> np.ndarray:
    """``[T]``: the client (training group of :func:`encode`) of each test row in :func:`encode`'s order; -1 for
    the rows of a user with no training rows (LEAF's ``-t user`` split), which only the pooled test set uses.

    These per-user test rows are each client's natural local test (:mod:`sim.data.local_test`).
    """
    group_of = {user: g for g, user in enumerate(u for u in sorted(train_users) if train_users[u][0])}
    return np.concatenate(
        [np.full(len(test_users[u][0]), group_of.get(u, -1), dtype=np.int64) for u in sorted(test_users)]
        + [np.zeros(0, dtype=np.int64)]
    )
