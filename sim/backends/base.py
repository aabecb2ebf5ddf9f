"""What a backend is: something that runs local training for many clients at once.

The loops (FL and gossip) never train a client themselves; they ask a backend for a
:class:`ClientBatch` and hand it to the strategy. Backends differ in where the work runs
(one process, vmap over stacked parameters, Ray actors) but draw every client's batches from the
same seeded generator, ``torch_generator(seed, "train", round, client)``, so all of them give the
same numbers for one seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from sim.data import FederatedData
from sim.layout import Layout
from sim.seeding import torch_generator
from sim.training import TrainConfig


@dataclass
class ClientBatch:
    """The results of one round of local training, stacked in the order of ``client_ids``."""

    client_ids: torch.Tensor  # [K] int64
    params: torch.Tensor  # [K, P] models after local training
    num_samples: torch.Tensor  # [K] int64
    train_loss: torch.Tensor  # [K] mean local loss (NaN for a client with no steps)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. "fisher": [K, P]
    #: numbers about how the round ran (e.g. {"retries": 1}); the loops copy them into metrics.csv
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainingSetup:
    """What every backend needs once per run, before the first round."""

    model: nn.Module
    layout: Layout
    data: FederatedData
    train: TrainConfig
    seed: int

    def generator(self, round_: int, client: int) -> torch.Generator:
        return torch_generator(self.seed, "train", round_, client)


#: per-client extras every backend can compute after training, on request of a strategy
SUPPORTED_EXTRAS = frozenset({"fisher"})


def client_rounds(round_: int | torch.Tensor | list[int], count: int) -> list[int]:
    """Each client's training round: one round for all (FL, sync gossip) or one per client.

    Asynchronous gossip trains several nodes in one call, each at its own count of trainings, and
    node k's n-th training must draw its batches from ``generator(n, k)`` whatever it is batched with.
    """
    if isinstance(round_, int):
        return [round_] * count
    rounds = [int(r) for r in (round_.tolist() if isinstance(round_, torch.Tensor) else round_)]
    if len(rounds) != count:
        raise ValueError(f"{len(rounds)} rounds for {count} clients")
    return rounds


def check_needs(backend: str, needs: frozenset[str]) -> None:
    unknown = set(needs) - SUPPORTED_EXTRAS
    if unknown:
        raise NotImplementedError(f"the {backend} backend cannot compute {sorted(unknown)}")


def client_extras(
    setup: TrainingSetup, ids: list[int], params: torch.Tensor, needs: frozenset[str]
) -> dict[str, torch.Tensor]:
    """The extras a strategy asked for, computed once per trained client (shared by all backends)."""
    extras: dict[str, torch.Tensor] = {}
    if "fisher" in needs:  # each client's diagonal Fisher at its trained model, over its own inputs
        from sim.fisher import diagonal_fisher

        extras["fisher"] = (
            torch.stack(
                [
                    diagonal_fisher(setup.model, setup.layout, params[k], setup.data.client(c)[0])
                    for k, c in enumerate(ids)
                ]
            )
            if ids
            else params.new_zeros(params.shape)
        )
    return extras


def aggregate_on_backend(backend, strategy, params: torch.Tensor, info, state):
    """Run ``strategy.aggregate`` where the backend wants it (e.g. on a GPU worker).

    A backend that defines ``aggregate(strategy, params, info, state)`` gets the call; every other
    backend aggregates in the driver. Results always come back as CPU tensors.
    """
    hook = getattr(backend, "aggregate", None)
    return hook(strategy, params, info, state) if hook is not None else strategy.aggregate(params, info, state)


class Backend(Protocol):
    name: str

    def setup(self, setup: TrainingSetup) -> None:
        """Receive the model, data and training config once per run (e.g. ship data to workers)."""

    def train(
        self, client_ids: torch.Tensor, start: torch.Tensor, round_: int, needs: frozenset[str] = frozenset()
    ) -> ClientBatch:
        """Train ``client_ids`` from ``start`` (``[P]`` shared by all, or ``[K, P]`` one per client).

        ``round_`` is one int for all clients or ``[K]`` per-client rounds (see :func:`client_rounds`).
        """

    def close(self) -> None:
        """Release workers; called once at the end of the run, also after an error."""
