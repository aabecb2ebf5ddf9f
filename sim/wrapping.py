"""The layers a run puts around its strategy: robust pre-aggregation inside, differential privacy outside.

Both are strategies that hold the configured one, so every engine (FL, gossip, Flower, offline
merging) runs the wrapped rule without knowing it is wrapped. Pre-aggregation (NNM, bucketing,
clipping) reshapes the stack the rule sees; DP clips and noises what leaves the aggregation, so it
must be the outermost layer for its guarantee to cover everything.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sim.errors import ConfigError
from strategies import Strategy
from strategies.client_state import client_held_state


def _chosen(cfg: DictConfig, group: str) -> DictConfig | None:
    node = cfg.get(group)
    return None if node is None or node.get("name", "none") == "none" else node


def wrap_strategy(strategy: Strategy, cfg: DictConfig) -> Strategy:
    """``strategy`` inside the configured ``preagg`` and ``dp`` layers (ConfigError on a bad value)."""
    preagg = _chosen(cfg, "preagg")
    for group, node in (("preagg", preagg), ("dp", _chosen(cfg, "dp"))):  # the layers would drop a rule's client state
        if node is not None and (why := client_held_state(strategy, f"the {group} layer")) is not None:
            raise ConfigError(f"{group}.name", node.get("name"), f"none with strategy {strategy.name}", why)
    if preagg is not None:
        from strategies.preagg import build_preagg

        strategy = build_preagg(preagg, strategy, cfg)
    dp = _chosen(cfg, "dp")
    if dp is not None:
        from strategies.dp import build_dp

        strategy = build_dp(dp, strategy, cfg)
    return strategy
