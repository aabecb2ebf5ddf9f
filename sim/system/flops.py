"""Training FLOPs per sample measured from the run's own model (``system.model_flops: auto``).

A device's seconds per sample are then ``model_flops / flops_per_s``. The count is what
``torch.utils.flop_counter.FlopCounterMode`` records for one forward and backward pass of a batch of the run's
real input rows (``train.batch_size`` of them), divided by the rows in that batch. The counter counts matrix
products and convolutions (``mm``/``addmm``: ``2*M*N*K``), not elementwise work (activations, the loss, bias
adds, the optimizer step), and in the backward pass only the gradients autograd really computes (no input
gradient for the first layer, whose input needs none). Measured once per model and input shape and kept
(weakly) with the model, so every part of a run that builds the system model gets the same number.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

#: model -> {(input shape, dtype): FLOPs per sample}; weak, so a finished run's model is not kept alive
_MEASURED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, float]] = weakref.WeakKeyDictionary()


def training_flops_per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """FLOPs of one forward + backward pass on the batch ``x`` (labels ``y``), divided by ``len(x)``.

    Runs on a copy in training mode under a forked RNG, so the run's model, its statistics and its random
    stream stay as they were.
    """
    trial = copy.deepcopy(model).train()
    counter = FlopCounterMode(display=False)
    with torch.random.fork_rng(devices=[]), counter:
        out = trial(x)
        loss = out.float().sum() if y is None else F.cross_entropy(out.float(), y.long())
        loss.backward()
    return float(counter.get_total_flops()) / len(x)


def is_auto(system_cfg: Any) -> bool:
    """``system.model_flops: auto`` with a device speed in FLOP/s (only then is the model measured)."""
    if system_cfg is None or not hasattr(system_cfg, "get"):
        return False
    return system_cfg.get("model_flops") == "auto" and system_cfg.get("flops_per_s") is not None


def model_flops(cfg: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float | None:
    """The measured FLOPs per training sample when the config asks for them (else None), once per model."""
    if not is_auto(cfg.get("system") if hasattr(cfg, "get") else None):
        return None
    rows, labels = x[:batch_size], y[:batch_size]
    key = (tuple(rows.shape), rows.dtype)
    per_model = _MEASURED.setdefault(model, {})
    if key not in per_model:
        per_model[key] = training_flops_per_sample(model, rows, labels)
    return per_model[key]


def run_model_flops(exp: Any) -> float | None:
    """:func:`model_flops` of an experiment: its model on ``train.batch_size`` of its training rows."""
    return model_flops(exp.cfg, exp.model, exp.data.x, exp.data.y, exp.train.batch_size)
