"""Which rules keep state on their clients between rounds, and why an engine that cannot carry it must refuse.

A rule that overrides one of the personalization hooks of :class:`~strategies.base.Strategy` (FedPer, FedRep,
FedBN's local layers, Ditto's personal models) starts its clients from something other than the model the
server sends, or sends part of it only. Flower's messages (one model for every client, stateless ClientApps)
cannot carry that, and a wrapper (pre-aggregation, DP) that holds the rule would drop the hooks.
"""

from __future__ import annotations

from .base import Strategy

#: the Strategy hooks through which a rule keeps per-client state beside the global model
CLIENT_STATE_HOOKS = ("train_clients", "personal_models", "shared_mask")


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
