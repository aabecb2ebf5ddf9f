"""Run state as one file without pickle: tensors in safetensors, everything else as JSON beside them.

Strategies keep their state as data (dicts of tensors and numbers), participation patterns as
NumPy arrays, gossip as per-node lists of such dicts; a crash-safe run must write all of it and read
back exactly what it wrote. :func:`pack` splits any such structure into a flat ``{key: tensor}``
mapping and a JSON skeleton that names those keys; :func:`unpack` rebuilds it bit for bit (tensor
dtypes, NumPy dtypes, ints against floats, NaN and infinities, tuples against lists). The file
(:func:`save_state` / :func:`load_state`) is a safetensors file whose metadata holds the skeleton, so
one atomic rename publishes all of it, and loading never unpickles anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import ConfigError
from .results import atomic_write_bytes, canonical_safetensors, safetensors_metadata

SKELETON_KEY = "gossipsoup_state"
FORMAT = 1


def pack(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """``(tensors, skeleton)``: every tensor or array of ``obj`` under its own key, the rest as JSON."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value.detach().cpu().contiguous().clone()
            return {"$tensor": key}
        if isinstance(value, np.ndarray):
            key = f"t{len(tensors)}"
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
            return {"$ndarray": key, "dtype": value.dtype.str}
        if isinstance(value, np.generic):
            return walk(value.item())
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise TypeError(f"run state dicts need string keys, got {sorted(map(repr, value))[:3]}")
            return {"$dict": {k: walk(v) for k, v in value.items()}}
        if isinstance(value, (list, tuple)):
            return {"$tuple" if isinstance(value, tuple) else "$list": [walk(v) for v in value]}
        raise TypeError(f"cannot store a {type(value).__name__} in the run state")

    return tensors, walk(obj)


def unpack(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """The structure :func:`pack` took apart; KeyError when a tensor it names is missing."""

    def walk(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if "$tensor" in node:
            return tensors[node["$tensor"]].clone()
        if "$ndarray" in node:
            return tensors[node["$ndarray"]].numpy().astype(np.dtype(node["dtype"]), copy=True)
        if "$float" in node:
            return float(node["$float"])
        if "$dict" in node:
            return {k: walk(v) for k, v in node["$dict"].items()}
        if "$tuple" in node:
            return tuple(walk(v) for v in node["$tuple"])
        if "$list" in node:
            return [walk(v) for v in node["$list"]]
        raise ValueError(f"unknown run state node {sorted(node)}")

    return walk(skeleton)


def save_state(path: Path, obj: Any) -> None:
    """Write ``obj`` (see :func:`pack`) to ``path`` atomically: a reader sees the old file or the new one."""
    tensors, skeleton = pack(obj)
    meta = {SKELETON_KEY: json.dumps({"format": FORMAT, "state": skeleton}, allow_nan=False)}
    atomic_write_bytes(Path(path), canonical_safetensors(st_save(tensors, metadata=meta)))


def load_state(path: Path, field: str = "resume") -> Any:
    """What :func:`save_state` wrote; a :class:`ConfigError` naming ``field`` and the file otherwise."""
    allowed = "a run state file written by gossipsoup"
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(field, str(path), allowed, f"Reading it failed: {err.strerror or err}.") from None
    try:
        tensors = st_load(data)
        record = json.loads(safetensors_metadata(data)[SKELETON_KEY])
        if record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format')!r}, this version reads {FORMAT}")
        return unpack(tensors, record["state"])
    except (SafetensorError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(field, str(path), allowed, f"It is damaged or truncated ({err}).") from None
