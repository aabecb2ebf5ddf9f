"""``backend=auto``: the vectorized backend wherever the model allows it, the sequential one otherwise.

The choice needs the model and the data, so it is made at ``setup``; everything after that is the
chosen backend's. :func:`~sim.backends.vmap_check.vmap_blockers` tries the model the way the
vectorized backend will run it (BatchNorm in training mode, buffers written in place, a trial
vmapped gradient on two example rows); for a model vmap cannot serve, the sequential reference
gives the same numbers at a lower speed, so auto never fails where one of the two could run.
The choice and its reason are logged and kept in ``reason``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from sim.training import ClientCorrection

from .base import ClientBatch, TrainingSetup
from .sequential import SequentialBackend
from .vectorized import VectorizedBackend
from .vmap_check import vmap_report

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
        report = vmap_report(setup.model, setup.data.x[:2])
        model_name = type(setup.model).__name__
        if report.blockers:
            self.reason = f"sequential, because for the {model_name} " + "; ".join(report.blockers)
            self.chosen = self._sequential
        else:
            self.reason = f"vectorized: vmap serves the {model_name} (a trial vmapped gradient ran)"
            self.chosen = self._vectorized
        log.info("backend=auto: %s", self.reason)
        if report.slow_ops:
            log.warning(
                "backend=auto: torch has no vmap batching rule for %s in the %s; vmap loops over clients there "
                "(correct but slow; backend=sequential may be faster)",
                ", ".join(report.slow_ops),
                model_name,
            )
        convs = any(isinstance(m, nn.modules.conv._ConvNd) for m in setup.model.modules())
        if self.chosen is self._vectorized and convs and setup.data.x.device.type == "cpu":
            log.info(
                "backend=auto: on a CPU, vmapped convolutions can be slower than one client at a time "
                "(ResNet-8: 0.6x in experiments/bench_byo.py); backend=sequential gives the same numbers"
            )
        self.chosen.setup(setup)

    def train(
        self,
        client_ids: torch.Tensor,
        start: torch.Tensor,
        round_,
        needs: frozenset[str] = frozenset(),
        correction: ClientCorrection | None = None,
    ) -> ClientBatch:
        assert self.chosen is not None, "setup() must run before train()"
        return self.chosen.train(client_ids, start, round_, needs, correction)

    def aggregate(self, strategy, params: torch.Tensor, info, state):
        """The chosen backend's aggregation, on its device (see aggregate_on_backend)."""
        assert self.chosen is not None, "setup() must run before aggregate()"
        return self.chosen.aggregate(strategy, params, info, state)

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
