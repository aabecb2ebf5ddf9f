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
from sim.training import ClientCorrection, TrainConfig


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
    #: [K] int64 local SGD steps each client took (FedNova and SCAFFOLD read them); None: not reported
    num_steps: torch.Tensor | None = None


@dataclass
class TrainingSetup:
    """What every backend needs once per run, before the first round."""

    model: nn.Module
    layout: Layout
    data: FederatedData
    train: TrainConfig
    seed: int

    def generator(self, round_: int, client: int, stream: str = "train") -> torch.Generator:
        """Client ``client``'s batches in ``round_``; ``stream`` names a draw apart from the round's training
        (a second phase, fine-tuning), so it neither repeats nor shifts the training batches."""
        return torch_generator(self.seed, stream, round_, client)


#: per-client extras every backend can compute after training, on request of a strategy:
#: "fisher" [K, P] the diagonal Fisher at the trained model; "start_loss" [K] the mean cross-entropy
#: on the client's own training rows at its start model, before training (q-FedAvg)
SUPPORTED_EXTRAS = frozenset({"fisher", "start_loss"})


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
    setup: TrainingSetup,
    ids: list[int],
    params: torch.Tensor,
    needs: frozenset[str],
    starts: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The extras a strategy asked for, computed once per trained client (shared by all backends).

    ``params`` are the trained models ``[K, P]``; ``starts`` the models training began from (``[P]``
    shared or ``[K, P]``; default ``params``, for models that were not trained).
    """
    extras: dict[str, torch.Tensor] = {}
    if "start_loss" in needs:
        extras["start_loss"] = start_losses(setup, ids, params if starts is None else starts)
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


@torch.no_grad()
def start_losses(setup: TrainingSetup, ids: list[int], starts: torch.Tensor) -> torch.Tensor:
    """``[K]`` mean cross-entropy of each client's start model on all its training rows (NaN: no rows).

    A shared start ``[P]`` runs one forward pass over every client's rows at once (in row chunks), so
    a round of many small clients costs one pass, not K of them.
    """
    from sim.training import per_row_losses

    data = setup.data
    device = starts.device  # the backend's device (the row numbers are bookkeeping, drawn on the host)
    out = torch.full((len(ids),), float("nan"), dtype=torch.float32, device=device)
    if not ids:
        return out
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    lo, hi = data.offsets[ids_t].to(torch.long), data.offsets[ids_t + 1].to(torch.long)
    sizes = (hi - lo).to(device)
    if starts.dim() == 1:
        rows = torch.cat([torch.arange(int(a), int(b)) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)])
        owner = torch.repeat_interleave(torch.arange(len(ids), device=device), sizes)
        losses = per_row_losses(setup.model, setup.layout, starts, data.x, data.y, rows.to(device))
        sums = torch.zeros(len(ids), dtype=torch.float64, device=device).index_add_(0, owner, losses.double())
    else:
        sums = torch.zeros(len(ids), dtype=torch.float64, device=device)
        for k in range(len(ids)):
            rows = torch.arange(int(lo[k]), int(hi[k]), device=device)
            sums[k] = per_row_losses(setup.model, setup.layout, starts[k], data.x, data.y, rows).double().sum()
    ok = sizes > 0
    out[ok] = (sums[ok] / sizes[ok]).float()
    return out


def aggregate_on_backend(backend, strategy, params: torch.Tensor, info, state):
    """Run ``strategy.aggregate`` where the backend wants it (e.g. on a GPU worker).

    A backend that defines ``aggregate(strategy, params, info, state)`` gets the call; every other
    backend aggregates in the driver. Ray's worker aggregation returns CPU tensors; the in-process backends
    return them on their ``backend.device``, where the trained models are.
    """
    hook = getattr(backend, "aggregate", None)
    return hook(strategy, params, info, state) if hook is not None else strategy.aggregate(params, info, state)


class Backend(Protocol):
    name: str

    def setup(self, setup: TrainingSetup) -> None:
        """Receive the model, data and training config once per run (e.g. ship data to workers)."""

    def train(
        self,
        client_ids: torch.Tensor,
        start: torch.Tensor,
        round_: int,
        needs: frozenset[str] = frozenset(),
        correction: ClientCorrection | None = None,
        train: TrainConfig | None = None,
        stream: str = "train",
    ) -> ClientBatch:
        """Train ``client_ids`` from ``start`` (``[P]`` shared by all, or ``[K, P]`` one per client).

        ``round_`` is one int for all clients or ``[K]`` per-client rounds (see :func:`client_rounds`).
        ``correction``: a strategy's term on every local gradient (FedProx, SCAFFOLD, FedDyn), its
        ``offsets`` rows in the order of ``client_ids``, its ``frozen`` entries held fixed (FedRep).
        ``train``: this call's training config in place of the run's (FedRep's head epochs, fine-tuning);
        ``stream``: the name of the seeded stream the batches come from (:meth:`TrainingSetup.generator`).
        """

    def close(self) -> None:
        """Release workers; called once at the end of the run, also after an error."""
