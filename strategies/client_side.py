"""Rules that change local training: FedProx, SCAFFOLD, FedDyn, and FedNova's normalized averaging.

Each client-side term these papers add to the local objective has a gradient linear in the weights,
``prox * (w - w_start) + offset_k``, so a rule hands the backends one :class:`ClientCorrection` per
round (a scalar and, where the rule keeps per-client memory, ``[K, P]`` rows) and every backend
applies it inside its SGD step. Per-client memory (SCAFFOLD's ``c_k``, FedDyn's gradient memory)
is stacked ``[N, P]`` in the rule's ``state``, indexed by client id: checkpoints carry it like any
other strategy state, and a client that sits a round out keeps its row.

Where each runs: FedProx anywhere a node trains from a start model (in gossip: towards the node's
own model of the round). SCAFFOLD, FedDyn and FedNova need a server: a global control variate, a
global ``h`` over all N clients, updates measured from one common start model. Gossip refuses them
(``needs_server``). SCAFFOLD and FedNova read each client's number of local steps and the training
config from :class:`AggregationInfo` (an FL run fills both).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sim.errors import ConfigError
from sim.training import ClientCorrection

from .base import AggregationInfo, State, Strategy, check_positive, weighted_average
from .fedavg import WEIGHTINGS, FedAvg, client_weights

_SERVER = "it needs one server that sees every client ({what}); gossip nodes have none. Use mode=federated."


def _needs_round_facts(strategy: Strategy, info: AggregationInfo, what: str):
    """``(num_steps [K], train config)`` from an FL round; a clear error where the engine has none."""
    if info.num_steps is None or info.train is None or info.self_index is not None:
        raise ConfigError(
            "strategy",
            strategy.name,
            "a federated run (mode=federated) on a gossipsoup backend",
            f"{strategy.name} needs {what} of every client, which only gossipsoup's FL loop reports.",
        )
    return info.num_steps.to(torch.float64), info.train


def _server_state(strategy: Strategy, state: State | None) -> State:
    if state is None:
        raise ConfigError("strategy", strategy.name, "mode=federated", strategy.needs_server or "")
    return state


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): local objective ``F_k(w) + mu/2 ||w - w_start||^2``, server FedAvg.

    Flower's ``FedProx`` aggregates exactly as FedAvg and sends ``proximal-mu`` to its clients;
    ``mu = 0`` is FedAvg.
    """

    name = "fedprox"
    client_side: ClassVar[bool] = True

    def __init__(self, mu: float = 0.01, weighting: str = "samples", server_lr: float = 1.0):
        super().__init__(weighting=weighting, server_lr=server_lr)
        self.mu = check_positive(self.name, "mu", mu, allow_zero=True)

    def client_correction(self, client_ids, start, state) -> ClientCorrection | None:
        return ClientCorrection(prox=self.mu) if self.mu else None


class Scaffold(Strategy):
    """SCAFFOLD (Karimireddy et al. 2020, Algorithm 1 with option II control variates).

    Client k steps with ``g - c_k + c``; after ``K_k`` steps of size ``lr`` from ``x`` to ``y_k``:
    ``c_k+ = c_k - c + (x - y_k) / (K_k lr)``. Server: ``x += server_lr * mean_S(y_k - x)``,
    ``c += |S|/N * mean_S(c_k+ - c_k)`` (plain means over the sampled clients, as in the paper's
    pseudo-code). A client that took no step (no rows) keeps its ``c_k``.
    """

    name = "scaffold"
    client_side: ClassVar[bool] = True
    needs_server: ClassVar[str | None] = "SCAFFOLD keeps a global control variate c; " + _SERVER.format(
        what="c averages every client's control variate"
    )

    def __init__(self, server_lr: float = 1.0):
        self.server_lr = check_positive(self.name, "server_lr", server_lr)

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        return {"c": torch.zeros_like(params), "c_clients": params.new_zeros((num_clients, params.numel()))}

    def client_correction(self, client_ids, start, state) -> ClientCorrection:
        s = _server_state(self, state)
        return ClientCorrection(offsets=s["c"] - s["c_clients"][client_ids])

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        steps, train = _needs_round_facts(self, info, "the number of local steps")
        x, c, c_clients = info.reference, state["c"], state["c_clients"]
        ids = info.client_ids
        c_old = c_clients[ids]
        trained = (steps > 0).unsqueeze(1)
        scale = (1.0 / (steps.clamp_min(1) * train.lr)).to(models.dtype).unsqueeze(1)
        c_new = torch.where(trained, c_old - c + (x - models) * scale, c_old)
        new_x = x + self.server_lr * (models - x).mean(0)
        new_c = c + (c_new - c_old).sum(0) / info.num_clients
        new_clients = c_clients.index_copy(0, ids, c_new)
        return new_x, {**state, "c": new_c, "c_clients": new_clients}


class FedDyn(Strategy):
    """FedDyn (Acar et al. 2021, Algorithm 1).

    Client k minimises ``L_k(w) - <g_k, w> + alpha/2 ||w - x||^2`` from the server model ``x``, then
    ``g_k <- g_k - alpha (w_k - x)``. Server: ``h <- h - alpha/N sum_S (w_k - x)`` and
    ``x <- mean_S(w_k) - h / alpha``. The authors' code (alpemreacar/FedDyn, ``train_FedDyn``) keeps
    ``lambda_k = sum (w_k - x)`` instead (``g_k = -alpha lambda_k``, ``-h/alpha = mean_N lambda_k``):
    the same numbers for a constant alpha. Their code also divides alpha by each client's relative
    data size; this rule keeps the paper's one alpha.
    """

    name = "feddyn"
    client_side: ClassVar[bool] = True
    needs_server: ClassVar[str | None] = "FedDyn keeps a server state h over all N clients; " + _SERVER.format(
        what="h sums every client's drift"
    )

    def __init__(self, alpha: float = 0.01):
        self.alpha = check_positive(self.name, "alpha", alpha)

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        return {"h": torch.zeros_like(params), "grad_memory": params.new_zeros((num_clients, params.numel()))}

    def client_correction(self, client_ids, start, state) -> ClientCorrection:
        s = _server_state(self, state)
        return ClientCorrection(prox=self.alpha, offsets=-s["grad_memory"][client_ids])

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        if info.self_index is not None:
            raise ConfigError("strategy", self.name, "mode=federated", self.needs_server or "")
        x, ids = info.reference, info.client_ids
        drift = models - x
        memory = state["grad_memory"].index_copy(0, ids, state["grad_memory"][ids] - self.alpha * drift)
        h = state["h"] - self.alpha / info.num_clients * drift.sum(0)
        return models.mean(0) - h / self.alpha, {**state, "h": h, "grad_memory": memory}


class FedNova(Strategy):
    """FedNova (Wang et al. 2020): average updates normalised by each client's local work.

    Client k's update ``x - y_k`` after ``tau_k`` SGD steps is divided by ``||a_k||_1`` (``tau_k`` for
    plain SGD; ``sum_{s=1..tau_k} (1 - rho^s) / (1 - rho)`` with momentum ``rho``, as the authors'
    ``FedNova`` optimizer accumulates its ``local_normalizing_vec``), and the server steps
    ``x <- x - tau_eff sum_k p_k (x - y_k) / ||a_k||_1`` with ``tau_eff = sum_k p_k ||a_k||_1`` and
    ``p_k`` the clients' shares of the round's samples (``weighting=samples``) or equal shares.
    """

    name = "fednova"
    needs_server: ClassVar[str | None] = "FedNova normalises updates measured from one common start model; " + (
        _SERVER.format(what="every node of a gossip round starts from its own model")
    )

    def __init__(self, weighting: str = "samples", server_lr: float = 1.0):
        if weighting not in WEIGHTINGS:
            raise ConfigError("strategy.weighting", weighting, f"one of {', '.join(WEIGHTINGS)}")
        self.weighting = weighting
        self.server_lr = check_positive(self.name, "server_lr", server_lr)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        steps, train = _needs_round_facts(self, info, "the number of local steps")
        norms = normalizing_norms(steps, train.momentum)
        p = client_weights(self.weighting, info, len(models))
        p = p / p.sum()
        tau_eff = float((p * norms).sum())
        x = info.reference
        normalized = (x - models) / norms.clamp_min(1e-12).to(models.dtype).unsqueeze(1)  # zero where no step
        return x - self.server_lr * tau_eff * weighted_average(normalized, p), state


def normalizing_norms(steps: torch.Tensor, momentum: float) -> torch.Tensor:
    """``||a_k||_1`` of FedNova for ``steps [K]`` local SGD steps with heavy-ball ``momentum``."""
    steps = steps.to(torch.float64)
    if not momentum:
        return steps
    rho = float(momentum)
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)
