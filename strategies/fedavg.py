"""FedAvg (McMahan et al. 2017): average the received models, weighted by samples or uniformly.

A server learning rate scales the step from the reference model toward the average
(``x + lr_s * (avg - x)``); with ``server_lr=1`` it is the plain average, which is also the gossip
merge rule "average myself with what I received".
"""

from __future__ import annotations

import torch

from sim.errors import ConfigError

from .base import AggregationInfo, State, Strategy, check_positive, weighted_average

WEIGHTINGS = ("samples", "uniform")


def client_weights(weighting: str, info: AggregationInfo, count: int) -> torch.Tensor:
    """``samples``: by training rows, as McMahan et al. and Flower (``num-examples``) do; ``uniform``:
    every participant alike, as Reddi et al.'s Algorithm 2 averages the updates (the server optimizers
    share this function)."""
    if weighting == "samples":
        return info.num_samples.to(torch.float64)
    return torch.ones(count, dtype=torch.float64)


class FedAvg(Strategy):
    name = "fedavg"

    def __init__(self, weighting: str = "samples", server_lr: float = 1.0):
        if weighting not in WEIGHTINGS:
            raise ConfigError("strategy.weighting", weighting, f"one of {', '.join(WEIGHTINGS)}")
        self.weighting = weighting
        self.server_lr = check_positive(self.name, "server_lr", server_lr)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        avg = weighted_average(models, client_weights(self.weighting, info, len(models)))
        if self.server_lr == 1.0:
            return avg, state
        return info.reference + self.server_lr * (avg - info.reference), state
