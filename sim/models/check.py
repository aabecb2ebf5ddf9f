"""One trial forward pass on stored rows: a model that cannot classify this data fails before the run."""

from __future__ import annotations

import copy

import torch
from torch import nn

from sim.errors import ConfigError


def check_model_output(model: nn.Module, example_rows: torch.Tensor, num_classes: int, field: str) -> None:
    """Run ``model`` (with its input hook) on two stored rows; ConfigError on ``field`` unless it gives logits.

    The logits must be ``[2, num_classes]`` floats. The pass runs on a copy in training mode, as
    training will: a layer that fails only there (BatchNorm on one row) is caught, and running
    statistics of the model itself stay as built.
    """
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    rows = example_rows[:2]
    expected = (len(rows), num_classes)
    allowed = (
        "a model whose forward pass takes a batch of this data set's examples and returns logits "
        f"[batch, num_classes] = {list(expected)}"
    )
    trial = copy.deepcopy(model).train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # dropout leaves the run's RNG alone
            out = trial(rows)
    except Exception as exc:
        raise ConfigError(
            field,
            name,
            allowed,
            f"Its forward pass on {len(rows)} example(s) raised {type(exc).__name__}: {exc}",
        ) from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ConfigError(
            field,
            name,
            allowed,
            f"On {len(rows)} example(s) it returned {got}.",
        )
    if not torch.is_floating_point(out):
        raise ConfigError(field, name, allowed, f"It returned {out.dtype} values, not floating-point logits.")
