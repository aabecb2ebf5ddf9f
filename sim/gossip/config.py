"""The ``gossip`` block of the config, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import ConfigError

SCHEDULES = ("sync", "async")
ORDERS = ("update_merge", "merge_update")
CLOCKS = ("exponential", "periodic")
PROTOCOLS = ("push", "pull", "push_pull")
DELAYS = ("constant", "uniform", "exponential")
CHURNS = ("none", "probability", "sessions")


def _choice(cfg, field: str, allowed: tuple[str, ...], default: str) -> str:
    value = cfg.get(field, default)
    if value not in allowed:
        raise ConfigError(f"gossip.{field}", value, f"one of {', '.join(allowed)}")
    return value


def _number(cfg, field: str, default: float, ok, allowed: str) -> float:
    value = cfg.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ConfigError(f"gossip.{field}", value, allowed)
    return float(value)


@dataclass(frozen=True)
class GossipConfig:
    schedule: str = "sync"
    order: str = "update_merge"
    shared_init: bool = True
    drop_prob: float = 0.0
    # asynchronous simulation
    clock: str = "exponential"
    wake_interval: float = 1.0
    protocol: str = "push"
    delay: str = "constant"
    delay_value: float = 0.0  # constant: the delay; exponential: the mean; uniform: the upper bound
    delay_low: float = 0.0  # uniform: the lower bound
    churn: str = "none"
    online_prob: float = 1.0
    mean_online: float = 10.0
    mean_offline: float = 2.0
    eval_interval: float = 1.0
    batch_exchanges: bool = True  # async: train non-conflicting deliveries together (same results)
    eval_nodes: int | None = None  # test accuracy over a seeded sample of this many nodes (None: all)

    @classmethod
    def from_config(cls, cfg) -> "GossipConfig":
        cfg = cfg if cfg is not None else {}
        shared = cfg.get("shared_init", True)
        if not isinstance(shared, bool):
            raise ConfigError("gossip.shared_init", shared, "true (one init for all nodes) or false (independent inits)")
        batch = cfg.get("batch_exchanges", True)
        if not isinstance(batch, bool):
            raise ConfigError("gossip.batch_exchanges", batch, "true (train non-conflicting deliveries together) or "
                              "false (one training per event)")
        eval_nodes = cfg.get("eval_nodes", None)
        if eval_nodes is not None and (isinstance(eval_nodes, bool) or not isinstance(eval_nodes, int) or eval_nodes < 1):
            raise ConfigError("gossip.eval_nodes", eval_nodes, "null (test every node) or an integer >= 1")
        out = cls(
            eval_nodes=eval_nodes,
            batch_exchanges=batch,
            schedule=_choice(cfg, "schedule", SCHEDULES, "sync"),
            order=_choice(cfg, "order", ORDERS, "update_merge"),
            shared_init=shared,
            drop_prob=_number(cfg, "drop_prob", 0.0, lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
            clock=_choice(cfg, "clock", CLOCKS, "exponential"),
            wake_interval=_number(cfg, "wake_interval", 1.0, lambda v: v > 0, "a time > 0"),
            protocol=_choice(cfg, "protocol", PROTOCOLS, "push"),
            delay=_choice(cfg, "delay", DELAYS, "constant"),
            delay_value=_number(cfg, "delay_value", 0.0, lambda v: v >= 0, "a delay >= 0 (no negative delays)"),
            delay_low=_number(cfg, "delay_low", 0.0, lambda v: v >= 0, "a delay >= 0 (no negative delays)"),
            churn=_choice(cfg, "churn", CHURNS, "none"),
            online_prob=_number(cfg, "online_prob", 1.0, lambda v: 0 < v <= 1, "a probability in (0, 1]"),
            mean_online=_number(cfg, "mean_online", 10.0, lambda v: v > 0, "a time > 0"),
            mean_offline=_number(cfg, "mean_offline", 2.0, lambda v: v > 0, "a time > 0"),
            eval_interval=_number(cfg, "eval_interval", 1.0, lambda v: v > 0, "a time > 0"),
        )
        if out.delay == "uniform" and out.delay_low > out.delay_value:
            raise ConfigError("gossip.delay_low", out.delay_low, f"at most gossip.delay_value ({out.delay_value})")
        return out
