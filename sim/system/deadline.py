"""The one deadline check that needs the data and the model: can any client ever meet ``system.deadline_s``?

Kept apart from :mod:`sim.system.fl_clock` so that ``sim.experiment`` can call it without importing the
clock, which itself refers to ``Experiment`` (an import circle otherwise).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..training import TrainConfig, steps_per_client
from .build import build_system
from .flops import model_flops


def check_deadline(
    cfg: Any, client_sizes: torch.Tensor, train: TrainConfig, bytes_per_model: int, data: Any = None, model: Any = None
) -> None:
    """Refuse a deadline that even the fastest client's smallest task exceeds (nobody would ever deliver).

    ``build_experiment`` calls it once the data and model exist, before any result file is written; ``data``
    and ``model`` measure ``system.model_flops: auto`` (sim/system/flops.py).
    """
    deadline = (cfg.get("system") or {}).get("deadline_s")
    if deadline is None or cfg.get("mode") != "federated":
        return
    measured = None if model is None else model_flops(cfg, model, data.x, data.y, train.batch_size)
    system = build_system(cfg, len(client_sizes), model_flops=measured)
    if not system.enabled:
        return
    fewest = None if train.local_steps_min is None else torch.full_like(client_sizes, train.local_steps_min)
    samples = (steps_per_client(client_sizes, train, fewest) * train.batch_size).numpy()
    n = bytes_per_model
    fastest = min(system.task_time(k, n, n, float(samples[k])) for k in range(len(samples)))
    if fastest > deadline:
        raise ConfigError(
            "system.deadline_s",
            deadline,
            f"at least the fastest client's task time ({fastest:.6g} s)",
            "No client can download the model, train and upload within it, so every round would drop everyone.",
        )
