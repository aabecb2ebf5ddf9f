"""The ``gossip`` block of the config, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import ConfigError
from sim.validation import boolean, choice, number, optional_integer

SCHEDULES = ("sync", "async")
ORDERS = ("update_merge", "merge_update")
CLOCKS = ("exponential", "periodic")
PROTOCOLS = ("push", "pull", "push_pull")
DELAYS = ("constant", "uniform", "exponential")
CHURNS = ("none", "probability", "sessions")


def _choice(cfg, field: str, allowed: tuple[str, ...], default: str) -> str:
    return choice(f"gossip.{field}", cfg.get(field, default), allowed)


def _time(cfg, field: str, default: float, *, zero_ok: bool = False, what: str = "a time") -> float:
    """A finite time (an infinite delay or interval would stall the simulated clock)."""
    return number(
        f"gossip.{field}",
        cfg.get(field, default),
        0,
        lo_open=not zero_ok,
        allowed=f"{what} {'>=' if zero_ok else '>'} 0 (finite)",
    )


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
    def from_config(cls, cfg) -> GossipConfig:
        cfg = cfg if cfg is not None else {}
        shared = boolean(
            "gossip.shared_init",
            cfg.get("shared_init", True),
            "(true: one init for all nodes; false: independent inits)",
        )
        batch = boolean(
            "gossip.batch_exchanges",
            cfg.get("batch_exchanges", True),
            "(true: train non-conflicting deliveries together; false: one training per event)",
        )
        eval_nodes = optional_integer("gossip.eval_nodes", cfg.get("eval_nodes", None), 1, "test every node")
        out = cls(
            eval_nodes=eval_nodes,
            batch_exchanges=batch,
            schedule=_choice(cfg, "schedule", SCHEDULES, "sync"),
            order=_choice(cfg, "order", ORDERS, "update_merge"),
            shared_init=shared,
            drop_prob=number("gossip.drop_prob", cfg.get("drop_prob", 0.0), 0, 1, allowed="a probability in [0, 1]"),
            clock=_choice(cfg, "clock", CLOCKS, "exponential"),
            wake_interval=_time(cfg, "wake_interval", 1.0),
            protocol=_choice(cfg, "protocol", PROTOCOLS, "push"),
            delay=_choice(cfg, "delay", DELAYS, "constant"),
            delay_value=_time(cfg, "delay_value", 0.0, zero_ok=True, what="a delay"),
            delay_low=_time(cfg, "delay_low", 0.0, zero_ok=True, what="a delay"),
            churn=_choice(cfg, "churn", CHURNS, "none"),
            online_prob=number(
                "gossip.online_prob", cfg.get("online_prob", 1.0), 0, 1, lo_open=True, allowed="a probability in (0, 1]"
            ),
            mean_online=_time(cfg, "mean_online", 10.0),
            mean_offline=_time(cfg, "mean_offline", 2.0),
            eval_interval=_time(cfg, "eval_interval", 1.0),
        )
        if out.delay == "uniform" and out.delay_low > out.delay_value:
            raise ConfigError("gossip.delay_low", out.delay_low, f"at most gossip.delay_value ({out.delay_value})")
        return out
