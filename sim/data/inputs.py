"""How stored rows become model inputs: reshaped to their natural shape, decoded, normalized.

Every data set is stored as flat rows ``[M, D]`` in the cheapest faithful dtype: float32 for
features, uint8 for decoded images (CIFAR-10's 50,000 training images are 150 MB instead of 600),
int64 for token ids. Models never see that storage. :class:`InputSpec` is attached to every model as
a forward pre-hook, so each call (training, vmapped training, evaluation, Fisher, Flower clients,
Ray actors) turns a batch of stored rows into ``[B, *shape]`` model inputs: images ``[B, C, H, W]``
float scaled to [0, 1] and normalized per channel, token ids ``[B, T]`` int64, features
``[B, *shape]`` float. Keeping the conversion in the hook instead of at every call site means a
call site cannot forget it, and parameter names (checkpoints, ``Layout``) stay the model's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

#: float: real features; image: channels-first pixels stored as uint8 (or float); tokens: int ids
KINDS = ("float", "image", "tokens")


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]  # one example's natural shape: (C, H, W) for images, (T,) for tokens
    kind: str = "float"
    mean: tuple[float, ...] | None = None  # per channel (images) or one value; applied after scaling
    std: tuple[float, ...] | None = None
    vocab_size: int | None = None  # tokens: ids are in 0..vocab_size-1
    # mean and std per stored position, built by __post_init__ (not a constructor argument)
    _normalization: tuple[torch.Tensor, torch.Tensor] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def num_values(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    def to_model(self, rows: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` stored rows -> ``[..., *shape]`` model inputs (works inside vmap)."""
        if self.kind == "tokens":
            out = rows.to(torch.long)
        else:
            out = rows.to(torch.float32) / 255.0 if rows.dtype == torch.uint8 else rows.to(torch.float32)
            if self.mean is not None and self.std is not None:
                assert self._normalization is not None  # built in __post_init__
                mean, std = self._normalization
                if mean.device != out.device:  # rows on a GPU: the constants go there once, then stay
                    mean, std = mean.to(out.device), std.to(out.device)
                    object.__setattr__(self, "_normalization", (mean, std))
                out = (out - mean) / std
        return out.reshape(*rows.shape[:-1], *self.shape)

    def __post_init__(self) -> None:
        # mean and std spread to one value per stored position, built once here (every batch uses them),
        # outside any vmap/grad transform, so the stored tensors are plain ones that copy and pickle
        norm = None
        if self.mean is not None and self.std is not None:
            norm = (_per_value(self.mean, self), _per_value(self.std, self))
        object.__setattr__(self, "_normalization", norm)

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook: convert a batch of stored rows, and leave anything else alone.

        A tensor whose last dimension is the flat row length (and, for a multi-dimensional shape,
        that is not already a batch in the natural shape) is a stored row; a caller that already
        holds model inputs in the natural shape (a user's own script) passes straight through.
        """
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        x = args[0]
        # natural: a batch of examples already shaped (a batch dimension in front of the whole shape);
        # a batch of one stored row of a (1, D) shape is [1, D], which must still be converted
        natural = len(self.shape) > 1 and x.dim() > len(self.shape) and tuple(x.shape[-len(self.shape) :]) == self.shape
        if natural or x.dim() == 0 or x.shape[-1] != self.num_values:
            return None
        return (self.to_model(x), *args[1:])


def _per_value(values: Sequence[float], spec: InputSpec) -> torch.Tensor:
    """``mean`` / ``std`` as a flat ``[D]`` tensor: one value per channel repeated over its pixels."""
    t = torch.tensor(values, dtype=torch.float32)
    if t.numel() == 1:
        return t.reshape(())
    channels = spec.shape[0]
    if t.numel() != channels:
        raise ValueError(f"{t.numel()} normalization values for {channels} channels")
    return t.repeat_interleave(spec.num_values // channels)


def attach_inputs(model: nn.Module, spec: InputSpec) -> nn.Module:
    """Make ``model`` take stored rows (see the module docstring); returns the same model."""
    for key, hook in list(model._forward_pre_hooks.items()):
        if isinstance(hook, InputSpec):  # one spec per model: a rebuilt data set replaces the old one
            del model._forward_pre_hooks[key]
    model.register_forward_pre_hook(spec)
    return model


def input_spec(model: nn.Module) -> InputSpec | None:
    """The spec attached to ``model``, or None for a model built outside the simulator."""
    return next((h for h in model._forward_pre_hooks.values() if isinstance(h, InputSpec)), None)
