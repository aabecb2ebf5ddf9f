"""Options of the vectorized backend's vmap kernel for convolutional nets (``backend.vmap``).

``vmap`` of a convolution whose weights differ per client already is the grouped-convolution formulation:
torch's batching rule folds the clients into the channels (input ``[B, K*C, H, W]``, weight ``[K*O, C, kh,
kw]``) and runs one ``conv2d`` with ``groups=K``. On a CPU that one grouped convolution costs about what K
separate ones cost (``experiments/bench_conv.py``): batching clients pays where many small kernels are
the cost, on a GPU. Three opt-in variations of that step, all off by default (the default step is the
backend's own, untouched):

* ``conv: im2col``: every plain ``nn.Conv2d`` (no groups, zero padding) runs as ``unfold`` plus a matmul,
  which vmap turns into one batched GEMM over the clients instead of a grouped convolution (cuBLAS
  instead of cuDNN's grouped kernels; on a CPU about 3x slower, measured);
* ``precision: bf16``: the forward pass under ``torch.autocast`` in bfloat16, loss and update in float32;
* ``compile: true``: ``torch.compile`` of the vmapped gradient step (its compile time is paid at the
  first step and is reported by the benchmark).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from sim.errors import ConfigError
from sim.layout import Layout
from sim.validation import boolean, choice

CONVS = ("grouped", "im2col")
PRECISIONS = ("fp32", "bf16")
#: (params [A, P], x [A, B, ...], y [A, B], mask [A, B]) -> (gradients [A, P], losses [A])
GradAndLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class VmapOptions:
    conv: str = "grouped"
    precision: str = "fp32"
    compile: bool = False

    @property
    def plain(self) -> bool:
        """True when nothing differs from the backend's own vmapped step."""
        return self == VmapOptions()


def vmap_options(cfg: Mapping[str, Any] | None) -> VmapOptions:
    """``backend.vmap`` checked: unknown keys and values are refused naming the field."""
    if cfg is None:
        return VmapOptions()
    if not isinstance(cfg, Mapping):
        raise ConfigError("backend.vmap", cfg, "a mapping with keys conv, precision, compile")
    unknown = sorted(set(cfg) - {"conv", "precision", "compile"})
    if unknown:
        raise ConfigError(f"backend.vmap.{unknown[0]}", cfg[unknown[0]], "one of the keys conv, precision, compile")
    return VmapOptions(
        conv=choice("backend.vmap.conv", cfg.get("conv", "grouped"), CONVS),
        precision=choice("backend.vmap.precision", cfg.get("precision", "fp32"), PRECISIONS),
        compile=boolean("backend.vmap.compile", cfg.get("compile", False), "compile the vmapped step"),
    )


class Im2colConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed as ``unfold`` and a matmul: under vmap one batched GEMM over the clients.

    Same parameter names and shapes as the convolution it replaces, so a flat parameter vector maps
    onto it unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        assert not isinstance(self.padding, str)  # im2col_model swaps only numerically padded convolutions
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        cols = F.unfold(x, (kh, kw), (dh, dw), (ph, pw), (sh, sw))  # [B, C*kh*kw, L]
        out = self.weight.reshape(self.out_channels, -1) @ cols  # [B, O, L]
        if self.bias is not None:
            out = out + self.bias.unsqueeze(-1)
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return out.reshape(b, self.out_channels, oh, ow)


def im2col_model(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose plain convolutions run as :class:`Im2colConv2d`; and how many were swapped.

    Grouped, non-zero-padded and string-padded (``"same"``) convolutions keep their own forward.
    """
    net = copy.deepcopy(model)
    swapped = 0
    for m in net.modules():
        if type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            m.__class__ = Im2colConv2d
            swapped += 1
    return net, swapped


def vmapped_step(
    model: nn.Module, layout: Layout, label_smoothing: float, options: VmapOptions, device: torch.device
) -> GradAndLoss:
    """The vectorized backend's ``vmap(grad_and_value(masked mean cross-entropy))`` with ``options`` applied."""
    net = im2col_model(model)[0] if options.conv == "im2col" else model
    autocast = options.precision == "bf16"

    def loss(p: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = functional_call(net, layout.to_state_dict(p), (xb,))
        per_row = F.cross_entropy(logits.float(), yb, label_smoothing=label_smoothing, reduction="none")
        return (per_row * mask).sum() / mask.sum()

    step = vmap(grad_and_value(loss))
    if options.compile:
        step = torch.compile(step, dynamic=True)
    return step
