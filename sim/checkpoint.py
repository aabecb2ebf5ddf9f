"""Model checkpoints as safetensors files that carry their layout; loading never unpickles."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import ConfigError
from .layout import Layout
from .results import atomic_write_bytes


def save_checkpoint(path: Path, layout: Layout, params: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
    tensors = {name: t.contiguous().clone() for name, t in layout.to_state_dict(params.detach().cpu()).items()}
    meta = {"gossipsoup_layout": layout.to_json(), **(metadata or {})}
    atomic_write_bytes(Path(path), st_save(tensors, metadata=meta))


def load_checkpoint(path: Path) -> tuple[Layout, torch.Tensor, dict[str, str]]:
    """(layout, flat params, metadata) of a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("checkpoint", str(path), "the path of an existing .safetensors file",
                          "No file exists there.")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        from safetensors import safe_open  # metadata needs the file API

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, ValueError, OSError) as exc:
        raise ConfigError("checkpoint", str(path), "a valid safetensors file", f"Reading it failed: {exc}") from None
    if "gossipsoup_layout" not in metadata:
        raise ConfigError("checkpoint", str(path), "a safetensors file written by gossipsoup (with a layout in its metadata)")
    layout = Layout.from_json(metadata["gossipsoup_layout"])
    return layout, layout.from_state_dict(tensors), metadata
