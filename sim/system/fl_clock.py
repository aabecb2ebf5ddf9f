"""The FL loop's clock: over-selected sampling, the round's timing, and the kept clients' rows.

sim/federated.py calls three things: ``FLClock.for_run`` (builds the system model and, under
over-selection, the participation that asks for ``ceil(c*K)``), ``sample`` (the participation draw, ``ceil(c*K)``
clients under over-selection) and ``settle`` (times the round, returns the batch of the clients whose
updates arrive). The order of random draws is unchanged: over-selection draws ``ceil(c*K)`` clients
from the same stream ``("participation", round)`` that draws K without it, and the system model's
quantities come from their own streams ``("system", ...)``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..participation import UniformParticipation
from ..training import steps_per_client
from .build import build_run_system, over_selected
from .fl_round import RoundTiming, fl_round_timing
from .model import SystemModel

if TYPE_CHECKING:
    from ..backends import ClientBatch
    from ..experiment import Experiment


def upload_bytes(batch: ClientBatch, bytes_per_model: int) -> np.ndarray:
    """[K] bytes each client sends: its model and its rows of every extra."""
    per_row = np.full(len(batch.client_ids), float(bytes_per_model))
    for t in batch.extras.values():
        if t.dim() and t.shape[0] == len(per_row):
            per_row += t[0].numel() * t.element_size()
    return per_row


def subset_batch(batch: ClientBatch, keep: np.ndarray) -> ClientBatch:
    """The rows of ``batch`` where ``keep`` is true (the whole batch, unchanged, when all are kept)."""
    if keep.all():
        return batch
    index = torch.from_numpy(np.flatnonzero(keep))
    return replace(
        batch,
        client_ids=batch.client_ids[index],
        params=batch.params[index],
        num_samples=batch.num_samples[index],
        train_loss=batch.train_loss[index],
        extras={k: v[index] if v.dim() and v.shape[0] == len(keep) else v for k, v in batch.extras.items()},
        num_steps=None if batch.num_steps is None else batch.num_steps[index],
    )


class FLClock:
    """Simulated time of a synchronous FL run (``time`` is the end of the last round, in seconds)."""

    def __init__(self, exp: Experiment, system: SystemModel, bytes_per_model: int, bytes_down: int | None = None):
        self.exp, self.system, self.bytes_per_model = exp, system, bytes_per_model  # bytes of one upload
        self.bytes_down = bytes_per_model if bytes_down is None else bytes_down  # of one download (compress.downlink)
        self.time = 0.0
        self.participation: Any = exp.participation
        self.target: int | None = None
        if system.enabled and system.over_selection is not None:
            k = int(exp.participation.clients_per_round)
            self.target = k
            size = over_selected(k, system.over_selection, exp.data.num_clients)
            self.participation = UniformParticipation(exp.data.num_clients, int(exp.cfg.seed), size)

    @classmethod
    def for_run(cls, exp: Experiment, bytes_per_model: int, bytes_down: int | None = None) -> FLClock:
        return cls(exp, build_run_system(exp), bytes_per_model, bytes_down)

    def resume(self, last_row: dict) -> None:
        self.time = float(last_row.get("time_s", last_row["round"]))

    def sample(self, round_: int) -> torch.Tensor:
        return self.participation.sample(round_)

    def empty_round(self) -> dict:
        return self._advance(
            fl_round_timing(self.system, self.time, np.zeros(0, np.int64), np.zeros(0), 0.0, np.zeros(0))
        )

    def settle(self, batch: ClientBatch, row: dict) -> ClientBatch:
        """The batch of the clients whose updates arrive; fills ``row``'s clock columns (time_s, dropped, failed)."""
        up = upload_bytes(batch, self.bytes_per_model)
        if batch.num_steps is not None:
            steps = batch.num_steps.numpy()
        else:
            steps = steps_per_client(self.exp.data.client_sizes[batch.client_ids], self.exp.train).numpy()
        samples = steps.astype(np.float64) * self.exp.train.batch_size
        timing = fl_round_timing(
            self.system, self.time, batch.client_ids.numpy(), samples, float(self.bytes_down), up, self.target
        )
        row.update(self._advance(timing))
        return subset_batch(batch, timing.keep)

    def _advance(self, timing: RoundTiming) -> dict:
        self.time += timing.duration
        return {"time_s": self.time, "dropped": timing.dropped, "failed": timing.failed}
