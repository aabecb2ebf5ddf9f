"""One parameter representation for every model that travels.

A model's state moves between clients, servers, strategies and files as one flat float tensor
``[P]`` (many models stack as ``[K, P]``) plus a :class:`Layout` that says where each named tensor
lives in it. Aggregation then becomes tensor algebra on ``[K, P]``, and per-layer rules (variance
correction, Fisher weighting) work on the layout's slices. Every conversion between the flat form
and ``nn.Module`` / state dicts lives here so that no other module re-derives offsets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Kind = Literal["weight", "bias", "buffer"]


@dataclass(frozen=True)
class TensorSpec:
    """Where one named tensor sits in the flat vector, and what role it plays."""

    name: str
    shape: tuple[int, ...]
    offset: int
    kind: Kind

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


def _kind_of(name: str, tensor: torch.Tensor, is_buffer: bool) -> Kind:
    # Biases are told apart by name and rank: per-layer rules (variance correction) treat a 1-D
    # "bias" differently from a weight matrix, and a 1-D tensor named otherwise (e.g. a norm's scale)
    # is still a weight for them.
    if is_buffer:
        return "buffer"
    if name.rsplit(".", 1)[-1] == "bias":
        return "bias"
    return "weight"


@dataclass(frozen=True)
class Layout:
    """Names, shapes and offsets of a model's tensors inside its flat ``[P]`` vector."""

    specs: tuple[TensorSpec, ...]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_module(cls, module: nn.Module) -> Layout:
        """Parameters first (in registration order), then floating-point buffers."""
        specs: list[TensorSpec] = []
        offset = 0
        for name, p in module.named_parameters():
            specs.append(TensorSpec(name, tuple(p.shape), offset, _kind_of(name, p, False)))
            offset += p.numel()
        for name, b in module.named_buffers():
            if not torch.is_floating_point(b):
                continue  # counters such as num_batches_tracked are not averaged
            specs.append(TensorSpec(name, tuple(b.shape), offset, "buffer"))
            offset += b.numel()
        return cls(tuple(specs))

    # ---- queries ------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        last = self.specs[-1] if self.specs else None
        return 0 if last is None else last.offset + last.numel

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __iter__(self) -> Iterator[TensorSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def spec(self, name: str) -> TensorSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(f"layout has no tensor named {name!r}; it has {self.names}")

    def of_kind(self, *kinds: Kind) -> list[TensorSpec]:
        return [s for s in self.specs if s.kind in kinds]

    def trainable_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """Boolean ``[P]``: True where the entry is a parameter (not a buffer); built on ``device``."""
        mask = torch.zeros(self.size, dtype=torch.bool, device=device)
        for s in self.of_kind("weight", "bias"):
            mask[s.slice] = True
        return mask

    # ---- flat <-> named tensors ---------------------------------------------------------------
    def view(self, flat: torch.Tensor, name: str) -> torch.Tensor:
        """A view of one tensor; works for ``[P]`` and stacked ``[..., P]`` inputs."""
        s = self.spec(name)
        return flat[..., s.slice].reshape(*flat.shape[:-1], *s.shape)

    def to_state_dict(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views into ``flat`` (no copy); stacked inputs give stacked tensors."""
        self._check(flat)
        return {s.name: flat[..., s.slice].reshape(*flat.shape[:-1], *s.shape) for s in self.specs}

    def from_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise KeyError(f"state dict lacks tensors {missing}")
        return torch.cat([tensors[s.name].detach().reshape(-1).float() for s in self.specs])

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """Copy a module's parameters and float buffers into a new flat ``[P]`` tensor."""
        state: dict[str, torch.Tensor] = dict(module.named_parameters())
        state.update(module.named_buffers())
        return self.from_state_dict(state)

    @torch.no_grad()
    def load_into(self, module: nn.Module, flat: torch.Tensor) -> nn.Module:
        """Copy ``flat`` into the module's own tensors (in place)."""
        self._check(flat)
        own: dict[str, torch.Tensor] = dict(module.named_parameters())
        own.update(module.named_buffers())
        for s in self.specs:
            own[s.name].copy_(flat[s.slice].view(s.shape))
        return module

    def _check(self, flat: torch.Tensor) -> None:
        if flat.shape[-1] != self.size:
            raise ValueError(f"flat parameters have {flat.shape[-1]} entries, the layout has {self.size}")

    # ---- serialisation (checkpoint metadata, Flower records) ---------------------------------
    def to_json(self) -> str:
        return json.dumps([[s.name, list(s.shape), s.offset, s.kind] for s in self.specs])

    @classmethod
    def from_json(cls, text: str) -> Layout:
        return cls(tuple(TensorSpec(n, tuple(sh), off, k) for n, sh, off, k in json.loads(text)))
