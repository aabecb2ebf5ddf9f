"""Local fine-tuning before per-client evaluation (``eval.finetune_steps: k``), for any rule and loop.

Each evaluated client takes ``k`` SGD steps on its own training rows from the model it would be scored
with (the global model, its personal model, a gossip node's own model), and is scored with the result.
The result is thrown away: the run's models, states and every other number stay those of the run
without fine-tuning. The steps are one backend call for all evaluated clients (vectorized where the
backend is), with the run's training config except ``local_steps = k`` (no unequal local work), and
batches from their own stream ``("finetune", e, client)``: ``e`` is the index of the metrics row the
evaluation belongs to (the round in synchronous FL), so the fine-tuning batches neither repeat nor shift
the training batches, differ between evaluations, and a resumed run draws the ones the uninterrupted run
drew. This is the "FedAvg + fine-tuning" baseline of the personalization papers, applied at every
evaluation; the Ditto authors' ``finetuning.py`` trainer fine-tunes once, after the last round, with
their proximal term and ``max(k n_k / B, k)`` steps (docs/personalization.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from .errors import ConfigError
from .training import TrainConfig

if TYPE_CHECKING:
    from .backends.base import Backend

#: the seeded stream of the fine-tuning batches (sim.backends.base.TrainingSetup.generator)
STREAM = "finetune"


def finetune_config(train: TrainConfig, steps: int) -> TrainConfig:
    """The run's training config with exactly ``steps`` local steps for every client."""
    return replace(train, local_steps=steps, local_steps_min=None)


def finetuned(
    backend: Backend, train: TrainConfig, ids: torch.Tensor, start: torch.Tensor, steps: int, index: int
) -> torch.Tensor:
    """``[K, P]``: clients ``ids`` after ``steps`` SGD steps on their own training rows from ``start``.

    ``start`` is ``[P]`` (one model for all: the global model) or ``[K, P]`` (each client's own model);
    ``index`` names the evaluation (the metrics row's index) whose batches the clients draw; ``backend`` and
    ``train`` are the run's.
    """
    batch = backend.train(ids, start, index, train=finetune_config(train, steps), stream=STREAM)
    return batch.params


def check_finetune(steps: int, evaluated: bool) -> None:
    """Fine-tuning exists only before per-client evaluation: ``k > 0`` with ``eval.clients=none`` would do nothing."""
    if steps and not evaluated:
        raise ConfigError(
            "eval.finetune_steps",
            steps,
            "0 unless eval.clients is set (all or a number of clients)",
            "Fine-tuning runs before each per-client evaluation, and eval.clients=none evaluates no client.",
        )
