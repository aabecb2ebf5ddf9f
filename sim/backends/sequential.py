"""The reference backend: one client after another, in the driver process.

Its code is the definition of what every faster backend must reproduce.
"""

from __future__ import annotations

import torch

from sim.training import local_train

from .base import ClientBatch, TrainingSetup


class SequentialBackend:
    name = "sequential"

    def __init__(self, num_threads: int | None = None):
        self.num_threads = num_threads
        self._setup: TrainingSetup | None = None

    def setup(self, setup: TrainingSetup) -> None:
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        self._setup = setup

    def train(self, client_ids: torch.Tensor, start: torch.Tensor, round_: int,
              needs: frozenset[str] = frozenset()) -> ClientBatch:
        s = self._setup
        assert s is not None, "setup() must run before train()"
        if needs:
            raise NotImplementedError(f"the sequential backend cannot compute {sorted(needs)} yet")
        ids = client_ids.tolist()
        starts = start.expand(len(ids), -1) if start.dim() == 1 else start
        results = []
        for k, client in enumerate(ids):
            x, y = s.data.client(client)
            results.append(local_train(s.model, s.layout, starts[k], x, y, s.train, s.generator(round_, client)))
        return ClientBatch(
            client_ids=torch.as_tensor(ids, dtype=torch.long),
            params=torch.stack([r.params for r in results]) if results else start.new_zeros((0, s.layout.size)),
            num_samples=torch.tensor([r.num_samples for r in results], dtype=torch.long),
            train_loss=torch.tensor([r.loss for r in results], dtype=torch.float32),
        )

    def close(self) -> None:
        self._setup = None
