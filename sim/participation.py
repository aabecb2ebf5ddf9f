"""Who takes part in each FL round.

A participation model answers ``sample(round) -> client ids``. Every round's draw comes from its
own seeded stream ``("participation", round)``; stateful patterns (Markov, cyclic) replay from round
1 when asked for a round out of order, so the answer for a round never depends on call history.

``uniform`` picks a fixed number of clients. The heterogeneous patterns follow the FedAU paper's
experiments (Wang & Ji 2024, ``WorkerSampler`` in IBM/fedau): each client n has its own probability
p_n, either one constant or drawn correlated with the client's labels,
``p_n = max(floor, mean * C * <label proportions of n, m>)`` with one ``m ~ Dirichlet(alpha 1_C)``
shared by all clients (capped at 1 here; the authors' code has no cap and cannot exceed it for C=10).
``probabilities`` exposes each client's long-run participation rate to oracle strategies.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import ConfigError
from .patterns import PATTERNS, check_probability_config, client_probabilities
from .seeding import numpy_rng
from .validation import choice, integer

__all__ = ["PARTICIPATION_NAMES", "HeterogeneousParticipation", "UniformParticipation", "build_participation"]


class UniformParticipation:
    """A fixed number of distinct clients per round, chosen uniformly at random."""

    name = "uniform"

    def __init__(self, num_clients: int, seed: int, clients_per_round: int = 10):
        integer(
            "participation.clients_per_round",
            clients_per_round,
            1,
            detail="With 0 clients per round nobody would ever train.",
        )
        if clients_per_round > num_clients:
            raise ConfigError(
                "participation.clients_per_round",
                clients_per_round,
                f"at most num_clients ({num_clients})",
                "Lower participation.clients_per_round or raise num_clients.",
            )
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


class HeterogeneousParticipation:
    """Each client takes part on its own: Bernoulli, Markov or cyclic, around its own p_n."""

    def __init__(self, name: str, num_clients: int, seed: int, p: np.ndarray, pattern_options: dict):
        self.name = name
        self.num_clients = num_clients
        self.seed = seed
        self.p = p
        self.pattern = PATTERNS[name](p, seed, **pattern_options)
        self._last_round = 0

    @property
    def probabilities(self) -> torch.Tensor:
        """Each client's long-run participation rate (what the known-probability oracle uses)."""
        return torch.from_numpy(self.pattern.long_run_rate())

    def first_active_round(self, rounds: int) -> int | None:
        """The first of rounds 1..``rounds`` in which someone takes part (None: nobody ever does)."""
        found = next((r for r in range(1, rounds + 1) if len(self.sample(r))), None)
        self.pattern.reset()
        self._last_round = 0
        return found

    def sample(self, round_: int) -> torch.Tensor:
        if round_ != self._last_round + 1:
            self.pattern.reset()
            for r in range(1, round_):
                self.pattern.step(r)
        active = self.pattern.step(round_)
        self._last_round = round_
        return torch.from_numpy(np.flatnonzero(active).astype(np.int64))


PARTICIPATION_NAMES = ("uniform", *PATTERNS)


def build_participation(
    participation_cfg, num_clients: int, seed: int, label_counts: np.ndarray | None = None, rounds: int | None = None
):
    """Build the participation model; without ``label_counts`` only the config is checked.

    With ``rounds``, a pattern under which nobody would take part in the whole run is refused.
    """
    cfg = dict(participation_cfg)
    name = choice("participation.name", cfg.pop("name", None), PARTICIPATION_NAMES)
    if name == "uniform":
        try:
            return UniformParticipation(num_clients=num_clients, seed=seed, **cfg)
        except TypeError as exc:
            raise ConfigError(
                "participation", name, "options that uniform accepts (clients_per_round)", str(exc)
            ) from None
    prob_keys = ("probability", "p", "mean", "alpha", "floor")
    prob_cfg = {k: cfg.pop(k) for k in prob_keys if k in cfg}
    check_probability_config(prob_cfg)
    pattern_cls = PATTERNS[name]
    pattern_cls.check_options(cfg)
    if label_counts is None and prob_cfg.get("probability", "correlated") == "correlated":
        return None  # the config is fine; p_n needs the clients' labels
    p = client_probabilities(prob_cfg, num_clients, seed, label_counts)
    participation = HeterogeneousParticipation(name, num_clients, seed, p, cfg)
    if rounds is not None and participation.first_active_round(rounds) is None:
        period = ", or lower participation.period" if name == "cyclic" else ""
        raise ConfigError(
            "participation",
            name,
            "a pattern under which some client takes part",
            f"With these settings and seed={seed} no client takes part in any of the {rounds} "
            "round(s): the run would only evaluate the initial model. Raise rounds, "
            f"participation.mean or participation.p{period}.",
        )
    return participation
