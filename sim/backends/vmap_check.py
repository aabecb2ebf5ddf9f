"""Can ``vmap`` train this model? The reasons it cannot, found before the first round.

The vectorized backend trains K clients as ``vmap(grad_and_value(functional_call(model, ...)))``
over stacked parameters ``[K, P]``. A model fails there when a forward pass writes into its own
buffers (BatchNorm's running statistics in training mode, or a user's running average), or when an
operation has no batching rule that works under ``grad`` (``vmap`` refuses random operations such
as dropout by default, some custom autograd functions cannot be vmapped). Rather than list every
such operation, :func:`vmap_blockers` tries: one forward pass on a copy (did a buffer change?) and
one vmapped gradient of two stacked copies of the parameters on two example rows. That gradient is
the costly part: torch's first ``torch.func`` gradient imports ``torch._dynamo`` (about 1.5 s), so
``backend=auto`` (sim/backends/auto_choice.py) runs it only for models its static checks cannot place.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from sim.layout import Layout

from .vectorized import batchnorm_layers


def changed_buffers(model: nn.Module, example_rows: torch.Tensor) -> list[str]:
    """Buffers other than BatchNorm's that one training-mode forward pass on a copy of the model writes into."""
    bn_names = {name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    return _changed_buffers(model, example_rows, bn_names)


def _changed_buffers(model: nn.Module, example_rows: torch.Tensor, skip: set[str]) -> list[str]:
    """Buffers that one training-mode forward pass on a copy of the model writes into."""
    trial = copy.deepcopy(model).train()
    before = {name: b.clone() for name, b in trial.named_buffers()}
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        trial(example_rows)
    return [
        name
        for name, b in trial.named_buffers()
        if name.rpartition(".")[0] not in skip and not torch.equal(before[name], b)
    ]


@dataclass
class VmapReport:
    blockers: list[str] = field(default_factory=list)  # why vmap cannot train the model at all
    slow_ops: list[str] = field(default_factory=list)  # operators vmap runs one client at a time (torch warns)


#: torch's warning for an operator without a batching rule (it then loops over the batch, correctly but slowly)
_FALLBACK = re.compile(r"batching rule for (\S+?)\.? Please")


def _trial_vmap(model: nn.Module, example_rows: torch.Tensor) -> tuple[str | None, list[str]]:
    """(the error of one vmapped gradient over two stacked copies of the model or None, slow operators)."""
    layout = Layout.from_module(model)
    flat = layout.flatten(model)
    stacked = torch.stack([flat, flat])
    rows = torch.stack([example_rows, example_rows])

    def loss(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, layout.to_state_dict(p), (x,)).float().sum()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.random.fork_rng(devices=[]):
                vmap(grad(loss))(stacked, rows)
        except Exception as exc:  # whatever torch.func raises is the reason
            return f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}", []
    slow = [m.group(1) for w in caught if (m := _FALLBACK.search(str(w.message)))]
    return None, sorted(set(slow))


def vmap_blockers(model: nn.Module, example_rows: torch.Tensor) -> list[str]:
    """Why the vectorized backend cannot train ``model``, one sentence per reason; empty when it can."""
    return vmap_report(model, example_rows).blockers


def vmap_report(model: nn.Module, example_rows: torch.Tensor) -> VmapReport:
    """What stops vmap from training ``model`` and which operators it would run slowly.

    ``example_rows`` are stored rows of the data set (two are used). The model itself is not
    changed: the forward passes run on a copy or through ``functional_call`` with copied tensors.
    """
    reasons: list[str] = []
    batchnorm = batchnorm_layers(model)
    if batchnorm and model.training:
        reasons.append(
            f"BatchNorm layer(s) {', '.join(batchnorm)} update their running statistics in place in training "
            "mode, which vmap cannot do"
        )
    rows = example_rows[:2]
    if len(rows) == 0:
        return VmapReport(reasons)
    try:
        changed = changed_buffers(model, rows)
    except Exception as exc:  # the model cannot even run: vmap cannot either, and the reason says why
        return VmapReport([*reasons, f"its forward pass raises {type(exc).__name__}: {exc}"])
    if changed:
        reasons.append(f"the forward pass writes into buffer(s) {', '.join(changed)} in place, which vmap cannot do")
    slow: list[str] = []
    if not reasons:
        error, slow = _trial_vmap(model, rows)
        if error:
            reasons.append(f"a trial vmap(grad(...)) of the model on two example rows failed with {error}")
    return VmapReport(reasons, slow)
