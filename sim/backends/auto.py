"""``backend=auto``: the faster of the sequential and vectorized backends for the model and the device.

The choice needs the model, the data and the device, so it is made at ``setup``; everything after
that is the chosen backend's. :func:`~sim.backends.auto_choice.decide` makes it (what vmap cannot
train and, on a CPU, convolutional and recurrent nets go to the sequential reference; Linear stacks
and, on a GPU, whatever vmap serves go to the vectorized one, with GPU chunks sized from the free
device memory). The choice and its one-line reason are logged, kept in ``reason`` and written to
summary.json (``backend_reason``).
"""

from __future__ import annotations

import logging

import torch

from sim.training import ClientCorrection, TrainConfig

from .auto_choice import decide
from .base import ClientBatch, TrainingSetup
from .sequential import SequentialBackend
from .vectorized import VectorizedBackend

log = logging.getLogger("sim")


class AutoBackend:
    name = "auto"

    def __init__(
        self, chunk_size: int | None = None, num_threads: int | None = None, kernel: str = "auto", device: str = "auto"
    ):
        self._vectorized = VectorizedBackend(
            chunk_size=chunk_size, num_threads=num_threads, kernel=kernel, device=device
        )
        self._sequential = SequentialBackend(num_threads=num_threads, device=device)
        self.chosen: VectorizedBackend | SequentialBackend | None = None
        self.reason = ""  # why ``chosen`` was chosen, as logged

    def setup(self, setup: TrainingSetup) -> None:
        device = self._vectorized.device
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        choice = decide(setup, device.type, self._vectorized.kernel, free, self._vectorized.chunk_size)
        self.reason = choice.reason
        if choice.backend == "vectorized":
            if choice.chunk_size is not None:
                self._vectorized.chunk_size = choice.chunk_size
            self.chosen = self._vectorized
        else:
            self.chosen = self._sequential
        log.info("backend=auto: %s", self.reason)
        self.chosen.setup(setup)

    def train(
        self,
        client_ids: torch.Tensor,
        start: torch.Tensor,
        round_,
        needs: frozenset[str] = frozenset(),
        correction: ClientCorrection | None = None,
        train: TrainConfig | None = None,
        stream: str = "train",
    ) -> ClientBatch:
        assert self.chosen is not None, "setup() must run before train()"
        return self.chosen.train(client_ids, start, round_, needs, correction, train=train, stream=stream)

    def aggregate(self, strategy, params: torch.Tensor, info, state):
        """The chosen backend's aggregation, on its device (see aggregate_on_backend)."""
        assert self.chosen is not None, "setup() must run before aggregate()"
        return self.chosen.aggregate(strategy, params, info, state)

    @property
    def train_config(self) -> TrainConfig | None:
        """The run's training config (the chosen backend's); None before ``setup``."""
        return None if self.chosen is None else self.chosen.train_config

    @property
    def mover(self):
        """Both choices share one device and one byte count (sim/backends/device.py)."""
        return (self.chosen or self._vectorized).mover

    @property
    def host_device_bytes(self) -> int:
        return self.mover.host_device_bytes

    def close(self) -> None:
        if self.chosen is not None:
            self.chosen.close()
