"""Who takes part in each FL round.

A participation model answers ``sample(round) -> client ids`` from its own seeded stream (drawn per
round, so round r's participants do not depend on how many rounds came before). Where it knows each
client's participation probability it exposes ``probabilities`` so oracle strategies can use them.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ConfigError
from .seeding import numpy_rng


class UniformParticipation:
    """A fixed number of distinct clients per round, chosen uniformly at random."""

    name = "uniform"

    def __init__(self, num_clients: int, seed: int, clients_per_round: int = 10):
        if isinstance(clients_per_round, bool) or not isinstance(clients_per_round, int) or clients_per_round < 1:
            raise ConfigError("participation.clients_per_round", clients_per_round, "an integer >= 1")
        if clients_per_round > num_clients:
            raise ConfigError("participation.clients_per_round", clients_per_round,
                              f"at most num_clients ({num_clients})",
                              "Lower participation.clients_per_round or raise num_clients.")
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.seed = seed

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.full((self.num_clients,), self.clients_per_round / self.num_clients, dtype=torch.float64)

    def sample(self, round_: int) -> torch.Tensor:
        rng = numpy_rng(self.seed, "participation", round_)
        chosen = rng.choice(self.num_clients, size=self.clients_per_round, replace=False)
        return torch.from_numpy(np.sort(chosen).astype(np.int64))


PARTICIPATION = {"uniform": UniformParticipation}


def build_participation(participation_cfg, num_clients: int, seed: int):
    cfg = dict(participation_cfg)
    name = cfg.pop("name", None)
    if name not in PARTICIPATION:
        raise ConfigError("participation.name", name, f"one of {', '.join(sorted(PARTICIPATION))}")
    try:
        return PARTICIPATION[name](num_clients=num_clients, seed=seed, **cfg)
    except TypeError as exc:
        raise ConfigError("participation", name, "options that this participation model accepts", str(exc)) from None
