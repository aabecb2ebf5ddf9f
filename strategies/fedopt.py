"""Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization").

One class serves the family through ``optimizer`` (avgm, adagrad, adam, yogi), as mergekit serves
its variants: they differ only in how the second moment is updated. The pseudo-gradient is
``delta = average - x`` (the averaged client update); then, as in the paper's Algorithm 2,

    m <- beta1 m + (1 - beta1) delta                      (avgm: m <- beta1 m + delta)
    adagrad: v <- v + delta^2
    adam: v <- beta2 v + (1 - beta2) delta^2
    yogi: v <- v - (1 - beta2) delta^2 sign(v - delta^2)
    x <- x + lr m / (sqrt(v) + tau)                         (avgm: x <- x + lr m)

``variant`` picks the reading of the details the paper leaves open:

- ``reddi`` (default): Algorithm 2 as printed, ``m_0 = 0``, ``v_0 = tau^2`` (the paper's
  ``v_{-1} >= tau^2``), no bias correction.
- ``flower``: what ``flwr.serverapp.strategy`` (flwr 1.42) computes, so that a run can be compared
  number for number with a Flower server: ``v_0 = 0``; FedAdam scales the step by
  ``sqrt(1 - beta2^(r+1)) / (1 - beta1^(r+1))`` with ``r`` the server round (an exponent one ahead
  of Kingma & Ba's step count, and the round rather than the number of steps taken, so a round
  nobody answered still advances it); FedYogi has no bias correction. FedAdagrad is Flower's
  ``FedAdagrad`` (``beta_1 = 0``, so ``m = delta``; ``v_0 = 0``): ``beta1`` must be 0 with it.
  FedAvgM is the same in both.

``bias_correction=true`` (``reddi`` only) is Kingma & Ba's correction with ``t`` the number of
server steps taken: the step is scaled by ``sqrt(1 - beta2^t) / (1 - beta1^t)``. It is not Flower's.

FedAvgM follows Hsu et al. 2019 and Flower's ``FedAvgM`` (``server_momentum``): ``m <- beta1 m +
delta; x <- x + lr m`` (Flower keeps ``-m`` and subtracts it, the same numbers).

``weighting=samples`` (the default) averages the client models by their training rows, as Flower's
strategies do (``num-examples``); Reddi et al. average the participants' updates uniformly, which
is ``weighting=uniform``.
"""

from __future__ import annotations

import math

import torch

from sim.errors import ConfigError
from sim.validation import boolean, choice

from .base import AggregationInfo, State, Strategy, check_positive, check_unit_interval, weighted_average
from .fedavg import WEIGHTINGS, client_weights

OPTIMIZERS = ("avgm", "adagrad", "adam", "yogi")
VARIANTS = ("reddi", "flower")


class ServerOptimizer(Strategy):
    name = "fedopt"

    def __init__(
        self,
        optimizer: str = "adam",
        server_lr: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        weighting: str = "samples",
        bias_correction: bool = False,
        variant: str = "reddi",
    ):
        self.optimizer = choice("strategy.optimizer", optimizer, OPTIMIZERS)
        self.weighting = choice("strategy.weighting", weighting, WEIGHTINGS)
        self.variant = choice("strategy.variant", variant, VARIANTS)
        label = f"fed{optimizer}"
        self.name = label
        self.server_lr = check_positive(label, "server_lr", server_lr)
        self.beta1 = check_unit_interval(label, "beta1", beta1)
        self.beta2 = check_unit_interval(label, "beta2", beta2)
        self.tau = check_positive(label, "tau", tau)
        self.bias_correction = self._check_bias_correction(boolean("strategy.bias_correction", bias_correction))
        if self.optimizer == "adagrad" and self.variant == "flower" and self.beta1 != 0:
            raise ConfigError(
                "strategy.beta1",
                beta1,
                "0 for fedadagrad with variant=flower",
                "Flower's FedAdagrad has no first moment (it fixes beta_1 = 0).",
            )

    def _check_bias_correction(self, value: bool) -> bool:
        if value and self.optimizer == "avgm":
            raise ConfigError(
                "strategy.bias_correction",
                value,
                "false for fedavgm",
                "Momentum SGD on the server has no second moment to correct.",
            )
        if value and self.optimizer == "adagrad":
            raise ConfigError(
                "strategy.bias_correction",
                value,
                "false for fedadagrad",
                "Adagrad sums squared steps instead of averaging them: there is no decay to correct.",
            )
        if value and self.variant == "flower":
            raise ConfigError(
                "strategy.bias_correction",
                value,
                "false with variant=flower",
                "variant=flower already applies Flower's own correction (FedAdam) or none (FedYogi).",
            )
        return value

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        state: State = {"step": 0, "m": torch.zeros_like(params)}
        if self.optimizer != "avgm":
            state["v"] = torch.full_like(params, self.tau**2 if self.variant == "reddi" else 0.0)
        return state

    def step_scale(self, step: int, round_: int) -> float:
        """The factor on ``server_lr``: a bias correction, or 1 without one."""
        if self.variant == "flower":
            if self.optimizer != "adam":
                return 1.0
            t = round_ + 1
        elif self.bias_correction:
            t = step
        else:
            return 1.0
        return math.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)

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
        if self.optimizer == "adagrad":
            v = state["v"] + d2
        elif self.optimizer == "adam":
            v = self.beta2 * state["v"] + (1 - self.beta2) * d2
        else:
            v = state["v"] - (1 - self.beta2) * d2 * torch.sign(state["v"] - d2)
        lr = self.server_lr * self.step_scale(step, info.round)
        return x + lr * m / (v.sqrt() + self.tau), {"step": step, "m": m, "v": v}
