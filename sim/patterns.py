"""Per-client participation patterns around probabilities p_n, as in the FedAU paper's experiments.

Each pattern is a small state machine over all N clients at once: ``reset()``, then ``step(round)``
for rounds 1, 2, ... returns a boolean ``[N]`` of who is active. Draws come from the round's own
stream, so a replay gives the same answer.

- bernoulli: active with probability p_n, independently each round.
- markov: two states; inactive -> active with probability q, active -> inactive with q (1/p_n - 1)
  (both divided by the latter when it exceeds 1, as the authors do), so the stationary rate is p_n.
  The initial state is drawn Bernoulli(p_n); the transition happens before the state is read.
- cyclic: within each period the client is active for ``max(1, round(T p_n))`` rounds and inactive
  for ``max(1, T - active)``; it starts inactive at a random point of its inactive phase.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .seeding import numpy_rng
from .validation import choice, integer, number

PROBABILITY_KINDS = ("correlated", "constant")


def _probability(field: str, value, detail: str = "") -> float:
    """A probability in (0, 1]: with 0 a client would never take part."""
    return number(f"participation.{field}", value, 0, 1, lo_open=True, allowed="a probability in (0, 1]", detail=detail)


def check_probability_config(cfg: dict) -> None:
    """Every value read on either branch is checked, so a typo never waits for the other one."""
    kind = choice("participation.probability", cfg.get("probability", "correlated"), PROBABILITY_KINDS)
    if kind == "constant" or cfg.get("p") is not None:
        _probability(
            "p",
            cfg.get("p"),
            "probability=constant needs p, the participation probability of every client."
            if cfg.get("p") is None
            else "",
        )
    _probability("mean", cfg.get("mean", 0.1))
    number("participation.alpha", cfg.get("alpha", 0.1), 0, lo_open=True)
    _probability("floor", cfg.get("floor", 0.02), "The floor keeps every client's p_n above 0.")


def client_probabilities(cfg: dict, num_clients: int, seed: int, label_counts: np.ndarray | None) -> np.ndarray:
    """p_n for every client: one constant, or correlated with the client's label mix."""
    if cfg.get("probability", "correlated") == "constant":
        return np.full(num_clients, float(cfg["p"]))
    counts = np.asarray(label_counts, dtype=np.float64)
    num_classes = counts.shape[1]
    proportions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    m = numpy_rng(seed, "participation", "probabilities").dirichlet(np.full(num_classes, float(cfg.get("alpha", 0.1))))
    p = float(cfg.get("mean", 0.1)) * num_classes * proportions @ m
    return np.clip(p, float(cfg.get("floor", 0.02)), 1.0)


class Bernoulli:
    def __init__(self, p: np.ndarray, seed: int):
        self.p, self.seed = p, seed

    @staticmethod
    def check_options(options: dict) -> None:
        if options:
            raise ConfigError("participation", sorted(options), "no further options for bernoulli")

    def long_run_rate(self) -> np.ndarray:
        return self.p.copy()

    def reset(self) -> None:
        pass

    def step(self, round_: int) -> np.ndarray:
        return numpy_rng(self.seed, "participation", round_).random(len(self.p)) < self.p


class Markov:
    def __init__(self, p: np.ndarray, seed: int, q: float = 0.05):
        self.p, self.seed = p, seed
        to_inactive = q * (1.0 / p - 1.0)
        scale = np.maximum(to_inactive, 1.0)
        self.to_active, self.to_inactive = q / scale, to_inactive / scale
        self.reset()

    @staticmethod
    def check_options(options: dict) -> None:
        unknown = set(options) - {"q"}
        if unknown:
            raise ConfigError("participation", sorted(unknown), "only q for markov")
        _probability("q", options.get("q", 0.05), "With q=0 an inactive client never becomes active.")

    def long_run_rate(self) -> np.ndarray:
        return self.to_active / (self.to_active + self.to_inactive)

    def reset(self) -> None:
        self.active = numpy_rng(self.seed, "participation", "initial").random(len(self.p)) < self.p

    def step(self, round_: int) -> np.ndarray:
        u = numpy_rng(self.seed, "participation", round_).random(len(self.p))
        self.active = np.where(self.active, u >= self.to_inactive, u < self.to_active)
        return self.active.copy()


class Cyclic:
    def __init__(self, p: np.ndarray, seed: int, period: int = 100):
        self.p, self.seed = p, seed
        self.active_len = np.maximum(1, np.rint(period * p)).astype(np.int64)
        self.inactive_len = np.maximum(1, period - self.active_len)
        self.reset()

    @staticmethod
    def check_options(options: dict) -> None:
        unknown = set(options) - {"period"}
        if unknown:
            raise ConfigError("participation", sorted(unknown), "only period for cyclic")
        integer("participation.period", options.get("period", 100), 1)

    def long_run_rate(self) -> np.ndarray:
        return self.active_len / (self.active_len + self.inactive_len)

    def reset(self) -> None:
        rng = numpy_rng(self.seed, "participation", "phase")
        self.active = np.zeros(len(self.p), dtype=bool)
        self.countdown = np.floor(rng.random(len(self.p)) * self.inactive_len).astype(np.int64)

    def step(self, round_: int) -> np.ndarray:
        flip = self.countdown == 0
        self.active = np.where(flip, ~self.active, self.active)
        self.countdown = np.where(flip, np.where(self.active, self.active_len, self.inactive_len), self.countdown) - 1
        return self.active.copy()


PATTERNS: dict[str, type[Bernoulli | Markov | Cyclic]] = {"bernoulli": Bernoulli, "markov": Markov, "cyclic": Cyclic}
