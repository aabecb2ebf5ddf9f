"""Which rules keep state on their clients between rounds, and why an engine that cannot carry it must refuse.

A rule that overrides one of the personalization hooks of :class:`~strategies.base.Strategy` (FedPer, FedRep,
FedBN's local layers, Ditto's personal models) starts its clients from something other than the model the
server sends, or sends part of it only. Flower's messages (one model for every client, stateless ClientApps)
cannot carry that, and a wrapper (pre-aggregation, DP) that holds the rule would drop the hooks.

The rules keep their clients' rows under one strategy-state key (:data:`PERSONAL`) and share the helpers that read
and write them and that merge the backend counters of a round's two trainings.
"""

from __future__ import annotations

import torch

from .base import State, Strategy

#: the Strategy hooks through which a rule keeps per-client state beside the global model
CLIENT_STATE_HOOKS = ("train_clients", "personal_models", "shared_mask")
#: the strategy-state key of every client's own rows ``[N, ...]`` (checkpointed with the rest of the state):
#: Ditto's personal models ``[N, P]``, FedPer/FedRep/FedBN's local entries ``[N, L]``
PERSONAL = "personal"


def personal_rows(state: State, client_ids: torch.Tensor) -> torch.Tensor:
    """``[K, ...]`` the rows of ``client_ids`` (on the device the state lives on)."""
    personal = state[PERSONAL]
    return personal[client_ids.to(personal.device)]


def store_rows(state: State, client_ids: torch.Tensor, rows: torch.Tensor) -> State:
    """A new state whose rows of ``client_ids`` are ``rows`` (cast to the state's device and dtype); the
    other clients' rows and keys are the old ones (the old state is not modified)."""
    personal = state[PERSONAL]
    ids = client_ids.to(personal.device)
    return {**state, PERSONAL: personal.index_copy(0, ids, rows.to(personal.device, personal.dtype))}


def sum_stats(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Two trainings' backend counters (e.g. Ray retries) in one metrics row: summed by key."""
    return {key: a.get(key, 0) + b.get(key, 0) for key in {**a, **b}}


def client_state_hooks(strategy: Strategy) -> list[str]:
    """The hooks of :data:`CLIENT_STATE_HOOKS` that ``strategy``'s class overrides (empty: none)."""
    return [h for h in CLIENT_STATE_HOOKS if getattr(type(strategy), h) is not getattr(Strategy, h)]


def client_held_state(strategy: Strategy, where: str, advice: str = "") -> str | None:
    """Why ``where`` cannot run ``strategy``, whose clients keep state of their own (then ``advice``); None when
    they keep none."""
    hooks = client_state_hooks(strategy)
    if not hooks:
        return None
    return (
        f"{strategy.name} keeps state on each client between rounds (it overrides {', '.join(hooks)}: local "
        f"layers or a personal model), which {where} cannot carry.{' ' + advice if advice else ''}"
    )
