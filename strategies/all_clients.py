"""Rules for unknown or heterogeneous participation that divide by all N clients, not by the K present.

With clients that take part at different rates, averaging only the participants over-weights the
frequent ones. These baselines of the FedAU paper (Wang & Ji 2024) correct for that in different
ways; all take the update ``d_n = local_n - global`` and step ``x <- x + lr_g * (1/N) * sum``:

- ``fedavg_all``: absent clients contribute a zero update (weights 1);
- ``known_probability``: the oracle, weights 1/p_n from the participation model;
- ``mifa`` (Gu et al. 2021): remembers each client's latest update (zeros before its first) and
  averages the memory of all N clients every round.
"""

from __future__ import annotations

import torch

from sim.errors import ConfigError

from .base import AggregationInfo, State, Strategy, check_positive


def all_clients_step(
    models: torch.Tensor, info: AggregationInfo, weights: torch.Tensor, server_lr: float
) -> torch.Tensor:
    """``x + lr_g / N * sum_k w_k (x_k - x)`` over the K participants."""
    deltas = models - info.reference
    return info.reference + (server_lr / info.num_clients) * (weights.to(models.dtype) @ deltas)


class FedAvgAll(Strategy):
    name = "fedavg_all"

    def __init__(self, server_lr: float = 1.0):
        self.server_lr = check_positive(self.name, "server_lr", server_lr)

    def aggregate(self, models, info, state):
        return all_clients_step(models, info, torch.ones(len(models)), self.server_lr), state


class KnownProbability(Strategy):
    name = "known_probability"

    def __init__(self, server_lr: float = 1.0):
        self.server_lr = check_positive(self.name, "server_lr", server_lr)

    def aggregate(self, models, info, state):
        if info.participation_prob is None:
            raise ConfigError(
                "strategy.name",
                self.name,
                "a strategy that needs no participation probabilities",
                "The participation model gives no p_n to weight by.",
            )
        return all_clients_step(models, info, 1.0 / info.participation_prob, self.server_lr), state


class MIFA(Strategy):
    name = "mifa"

    def __init__(self, server_lr: float = 1.0):
        self.server_lr = check_positive(self.name, "server_lr", server_lr)

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        return {"memory": torch.zeros(num_clients, params.numel(), dtype=params.dtype)}

    def aggregate(self, models, info, state):
        memory = state["memory"].clone() if state else torch.zeros(info.num_clients, models.shape[1])
        memory[info.client_ids] = models - info.reference
        return info.reference + self.server_lr * memory.mean(dim=0), {"memory": memory}

    def on_empty_round(self, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        # MIFA keeps stepping with the remembered updates even when nobody answers
        if not state:
            return info.reference, state
        return info.reference + self.server_lr * state["memory"].mean(dim=0), state
