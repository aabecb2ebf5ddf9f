"""``backend=auto``: the vectorized backend wherever the model allows it, the sequential one otherwise.

The choice needs the model, so it is made at ``setup``; everything after that is the chosen
backend's. The only models vmap cannot serve here are those with BatchNorm in training mode, and
for them the sequential reference gives the same numbers at a lower speed, so auto never fails
where one of the two could run.
"""

from __future__ import annotations

import logging

import torch

from .base import ClientBatch, TrainingSetup
from .sequential import SequentialBackend
from .vectorized import VectorizedBackend, batchnorm_layers

log = logging.getLogger("sim")


class AutoBackend:
    name = "auto"

    def __init__(self, chunk_size: int | None = None, num_threads: int | None = None, kernel: str = "auto"):
        self._vectorized = VectorizedBackend(chunk_size=chunk_size, num_threads=num_threads, kernel=kernel)
        self._sequential = SequentialBackend(num_threads=num_threads)
        self.chosen: VectorizedBackend | SequentialBackend | None = None

    def setup(self, setup: TrainingSetup) -> None:
        blocking = batchnorm_layers(setup.model)
        if blocking:
            log.info("backend=auto: sequential, because vmap cannot train BatchNorm layer(s) %s", ", ".join(blocking))
            self.chosen = self._sequential
        else:
            self.chosen = self._vectorized
        self.chosen.setup(setup)

    def train(
        self, client_ids: torch.Tensor, start: torch.Tensor, round_, needs: frozenset[str] = frozenset()
    ) -> ClientBatch:
        assert self.chosen is not None, "setup() must run before train()"
        return self.chosen.train(client_ids, start, round_, needs)

    def close(self) -> None:
        if self.chosen is not None:
            self.chosen.close()
