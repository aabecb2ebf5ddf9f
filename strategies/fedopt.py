"""Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization").

One class serves the family through ``optimizer`` (avgm, adam, yogi), as mergekit serves its
variants: they differ only in how the second moment is updated. The pseudo-gradient is
``delta = average - x`` (the averaged client update); then, as in the paper's Algorithm 2,

    m <- beta1 m + (1 - beta1) delta                      (avgm: m <- beta1 m + delta)
    adam: v <- beta2 v + (1 - beta2) delta^2
    yogi: v <- v - (1 - beta2) delta^2 sign(v - delta^2)
    x <- x + lr m / (sqrt(v) + tau)                         (avgm: x <- x + lr m)

with m_0 = 0 and v_0 = tau^2 (the paper's ``v_{-1} >= tau^2``) and no bias correction, unless
``bias_correction=true`` (Flower's variant), which scales the step by sqrt(1 - beta2^t) / (1 - beta1^t).
FedAvgM follows Hsu et al. 2019 / Flower: ``m <- beta1 m + delta; x <- x + lr m``.
"""

from __future__ import annotations

import math

import torch

from sim.errors import ConfigError

from .base import AggregationInfo, State, Strategy, check_positive, check_unit_interval, weighted_average
from .fedavg import WEIGHTINGS, client_weights

OPTIMIZERS = ("avgm", "adam", "yogi")


class ServerOptimizer(Strategy):
    name = "fedopt"

    def __init__(self, optimizer: str = "adam", server_lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3, weighting: str = "samples", bias_correction: bool = False):
        if optimizer not in OPTIMIZERS:
            raise ConfigError("strategy.optimizer", optimizer, f"one of {', '.join(OPTIMIZERS)}")
        if weighting not in WEIGHTINGS:
            raise ConfigError("strategy.weighting", weighting, f"one of {', '.join(WEIGHTINGS)}")
        label = f"fed{optimizer}"
        self.optimizer = optimizer
        self.name = label
        self.server_lr = check_positive(label, "server_lr", server_lr)
        self.beta1 = check_unit_interval(label, "beta1", beta1)
        self.beta2 = check_unit_interval(label, "beta2", beta2)
        self.tau = check_positive(label, "tau", tau)
        self.weighting = weighting
        self.bias_correction = bool(bias_correction)

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        state: State = {"step": 0, "m": torch.zeros_like(params)}
        if self.optimizer != "avgm":
            state["v"] = torch.full_like(params, self.tau ** 2)
        return state

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        if not state:
            state = self.init_state(info.reference, info.num_clients)
        x = info.reference
        delta = weighted_average(models, client_weights(self.weighting, info, len(models))) - x
        step = state["step"] + 1
        if self.optimizer == "avgm":
            m = self.beta1 * state["m"] + delta
            return x + self.server_lr * m, {"step": step, "m": m}
        m = self.beta1 * state["m"] + (1 - self.beta1) * delta
        d2 = delta * delta
        if self.optimizer == "adam":
            v = self.beta2 * state["v"] + (1 - self.beta2) * d2
        else:
            v = state["v"] - (1 - self.beta2) * d2 * torch.sign(state["v"] - d2)
        lr = self.server_lr
        if self.bias_correction:
            lr = lr * math.sqrt(1 - self.beta2 ** step) / (1 - self.beta1 ** step)
        return x + lr * m / (v.sqrt() + self.tau), {"step": step, "m": m, "v": v}
