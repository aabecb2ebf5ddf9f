"""The reference backend: one client after another, in the driver process.

Its code is the definition of what every faster backend must reproduce. ``device`` (``backend.device``) is
where it trains: the data set and the model go there once at setup (:mod:`sim.backends.device`), the
trained models stay there and the loops aggregate and evaluate them there.
"""

from __future__ import annotations

import torch

from sim.threads import check_num_threads
from sim.training import ClientCorrection, TrainConfig, client_local_steps, local_train

from .base import ClientBatch, TrainingSetup, check_needs, client_extras, client_rounds
from .device import DeviceMover, aggregate_on_device, resolve_device


class SequentialBackend:
    name = "sequential"

    def __init__(self, num_threads: int | None = None, device: str = "auto"):
        self.num_threads = check_num_threads(num_threads)  # applied by the run (sim.threads), not here
        self.mover = DeviceMover(resolve_device(device))
        self._setup: TrainingSetup | None = None

    @property
    def device(self):
        return self.mover.device

    @property
    def host_device_bytes(self) -> int:
        """Bytes moved between host and device so far (0 on the CPU): the run's summary reports them."""
        return self.mover.host_device_bytes

    @property
    def train_config(self) -> TrainConfig | None:
        """The run's training config (what ``train(train=None)`` uses); None before ``setup``."""
        return None if self._setup is None else self._setup.train

    def setup(self, setup: TrainingSetup) -> None:
        self.mover.upload_data(setup.data)
        self.mover.upload_model(setup.model)
        self._setup = setup

    def aggregate(self, strategy, params: torch.Tensor, info, state):
        """The FL strategy on the backend's device, where the trained models are (see aggregate_on_backend)."""
        return aggregate_on_device(self.mover, strategy, params, info, state)

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
        s = self._setup
        assert s is not None, "setup() must run before train()"
        check_needs(self.name, needs)
        cfg = s.train if train is None else train
        ids = client_ids.tolist()
        start = self.mover.to_device(start)  # the first round's model comes from the host; later ones are here
        if correction is not None:
            correction = correction.moved(self.mover.to_device)
        starts = start.expand(len(ids), -1) if start.dim() == 1 else start
        rounds = client_rounds(round_, len(ids))
        steps = client_local_steps(cfg, s.seed, rounds, ids)
        prox = correction.prox if correction is not None else 0.0
        offsets = correction.offsets if correction is not None else None
        frozen = correction.frozen if correction is not None else None
        results = []
        for k, client in enumerate(ids):
            x, y = s.data.client(client)
            results.append(
                local_train(
                    s.model,
                    s.layout,
                    starts[k],
                    x,
                    y,
                    cfg,
                    s.generator(rounds[k], client, stream),
                    steps=None if steps is None else int(steps[k]),
                    prox=prox,
                    offset=None if offsets is None else offsets[k],
                    move=self.mover.to_device,  # on a GPU the schedule goes up once per client, counted
                    frozen=frozen,
                )
            )
        params = torch.stack([r.params for r in results]) if results else start.new_zeros((0, s.layout.size))
        extras = client_extras(s, ids, params, needs, start)
        return ClientBatch(
            client_ids=torch.as_tensor(ids, dtype=torch.long),
            params=params,
            num_samples=torch.tensor([r.num_samples for r in results], dtype=torch.long),
            train_loss=torch.tensor([r.loss for r in results], dtype=torch.float32),
            extras=extras,
            num_steps=torch.tensor([r.steps for r in results], dtype=torch.long),
        )

    def close(self) -> None:
        self._setup = None
