"""Model checkpoints as safetensors files that carry their layout; loading never unpickles.

A checkpoint is read whole and checked before anything uses it: a file that is not safetensors, is
truncated, lacks or garbles the layout in its metadata, disagrees with that layout, or holds NaN/Inf
is refused as a :class:`ConfigError` naming the file (and the tensor), so a fine-tuning run or a
merge never starts from, or silently averages in, a broken model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import ConfigError
from .layout import Layout, TensorSpec
from .results import atomic_write_bytes, canonical_safetensors, safetensors_metadata

LAYOUT_KEY = "gossipsoup_layout"
KINDS = ("weight", "bias", "buffer")


def save_checkpoint(path: Path, layout: Layout, params: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
    tensors = {name: t.contiguous().clone() for name, t in layout.to_state_dict(params.detach().cpu()).items()}
    meta = {LAYOUT_KEY: layout.to_json(), **(metadata or {})}
    atomic_write_bytes(Path(path), canonical_safetensors(st_save(tensors, metadata=meta)))


def _parse_layout(text: str) -> Layout:
    """The layout stored in the metadata; ValueError unless every entry is well formed and contiguous."""
    entries = json.loads(text)
    if not isinstance(entries, list) or not entries:
        raise ValueError("it is not a non-empty list")
    specs, offset = [], 0
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise ValueError(f"entry {entry!r} is not [name, shape, offset, kind]")
        name, shape, start, kind = entry
        dims_ok = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
        if not isinstance(name, str) or not dims_ok or start != offset or kind not in KINDS:
            raise ValueError(f"entry {entry!r} is not [name, shape, offset {offset}, one of {', '.join(KINDS)}]")
        spec = TensorSpec(name, tuple(shape), start, kind)
        specs.append(spec)
        offset += spec.numel
    return Layout(tuple(specs))


def _check_tensors(layout: Layout, tensors: dict[str, torch.Tensor]) -> str:
    """A sentence on the first tensor that disagrees with the layout or is not finite; "" if none."""
    for spec in layout:
        t = tensors.get(spec.name)
        if t is None:
            return f"Tensor {spec.name} of its layout is missing."
        if tuple(t.shape) != spec.shape:
            return f"Tensor {spec.name} has shape {list(t.shape)}, its layout says {list(spec.shape)}."
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        if bad:
            return f"Tensor {spec.name} holds {bad} NaN or Inf value(s) of {t.numel()}."
    return ""


def load_checkpoint(path: str | Path, field: str = "checkpoint") -> tuple[Layout, torch.Tensor, dict[str, str]]:
    """(layout, flat params, metadata) of a checkpoint written by :func:`save_checkpoint`.

    ``field`` is the option or config key that named the file, so the error says what to change.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, str(path), "the path of an existing .safetensors file", "No file exists there.")
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        metadata = safetensors_metadata(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise ConfigError(field, str(path), "a valid safetensors file", f"Reading it failed: {exc}") from None
    if LAYOUT_KEY not in metadata:
        raise ConfigError(
            field,
            str(path),
            "a safetensors file written by gossipsoup (with a layout in its metadata)",
            f"Its metadata has no {LAYOUT_KEY!r} entry.",
        )
    try:
        layout = _parse_layout(metadata[LAYOUT_KEY])
    except ValueError as exc:
        raise ConfigError(
            field,
            str(path),
            "a checkpoint whose metadata holds a readable layout",
            f"Its {LAYOUT_KEY!r} metadata is garbled: {exc}.",
        ) from None
    problem = _check_tensors(layout, tensors)
    if problem:
        raise ConfigError(field, str(path), "a checkpoint with finite values that match its layout", problem)
    return layout, layout.from_state_dict(tensors), metadata
