"""CHOCO in synchronous gossip: the nodes' public copies ``x_hat`` and the round's consensus and compressed step.

Every neighbour of node j holds the same copy of ``x_hat_j``: they all start from the same value and
add the same messages ``q_j`` (no message is lost: runs with ``gossip.drop_prob > 0`` are refused), so
one ``[N, P]`` stack holds every copy in the network. One round, after the nodes' local training
(``gossip.order=update_merge``; ``merge_update`` trains after it), vectorized over nodes, in the order of
the authors' code (``strategy.order=code``; ``paper`` takes the last two lines first):

    x <- x + gamma * (W x_hat - rowsum(W) * x_hat)      (strategies.choco.consensus)
    q = Q(x - x_hat)                                    (compress=..., one message per node per round)
    x_hat <- x_hat + q

A node sends its ``q_i`` to each neighbour, so ``bytes_up`` counts ``message_bytes(P)`` per directed
edge. Random compressors draw node i's message from ``("compress", "gossip", round, i)``, so every
backend, batch order and resume gives the same numbers. The copies travel in the run's checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch

from sim.compress import CompressConfig, Compressor, compress_streams
from sim.errors import ConfigError
from strategies.choco import Choco, consensus, mixing_terms

from .config import GossipConfig

KEY = "choco_hat"


def find_choco(strategy: Any) -> Choco | None:
    """The CHOCO rule of ``strategy``, also inside pre-aggregation or DP layers (which CHOCO refuses)."""
    while strategy is not None:
        if isinstance(strategy, Choco):
            return strategy
        strategy = getattr(strategy, "inner", None)
    return None


def _refuse(field: str, value: Any, allowed: str, why: str) -> None:
    raise ConfigError(field, value, allowed, why)


def check_choco_run(cfg: Any, mode: str, strategy: Any) -> None:
    """What CHOCO cannot run with, refused before any work (each error names the field to change).

    Its copies are exact only when every neighbour receives every ``q_j``: asynchronous gossip (one
    random peer per wake-up, delays), lost messages and graphs that change between rounds (a new
    neighbour holds no copy) would give each holder its own copy, which one ``[N, P]`` stack cannot hold.
    """
    choco = find_choco(strategy)
    if choco is None or mode != "gossip":
        return
    if choco is not strategy:
        layer = "preagg" if (cfg.get("preagg") or {}).get("name", "none") != "none" else "dp"
        _refuse(
            f"{layer}.name",
            (cfg.get(layer) or {}).get("name"),
            "none with strategy=choco",
            "CHOCO's step is not a merge of K models that a pre-aggregation or DP layer could wrap.",
        )
    gossip = GossipConfig.from_config(cfg.get("gossip"))
    if gossip.schedule != "sync":
        _refuse(
            "gossip.schedule",
            gossip.schedule,
            "sync with strategy=choco",
            "CHOCO's public copies need every neighbour to apply every compressed difference in order; an "
            "asynchronous node contacts one random peer per wake-up, so the copies would differ per holder.",
        )
    if gossip.drop_prob > 0:
        _refuse(
            "gossip.drop_prob",
            gossip.drop_prob,
            "0 with strategy=choco",
            "A lost difference leaves the receiver's copy of the sender's model behind the others' for good.",
        )
    topo = cfg.get("topology") or {}
    if topo.get("time_varying", False) or topo.get("one_peer", False):
        field = "topology.time_varying" if topo.get("time_varying", False) else "topology.one_peer"
        _refuse(field, True, "false with strategy=choco", "A new neighbour holds no copy of the sender's model.")
    attack = (cfg.get("attack") or {}).get("name", "none")
    if attack != "none":
        _refuse("attack.name", attack, "none with strategy=choco", "Byzantine nodes run with merge rules only.")
    compress = cfg.get("compress") or {}
    if compress.get("name", "none") != "none" and compress.get("error_feedback") is True:
        _refuse(
            "compress.error_feedback",
            True,
            "null (auto, the configs' default) or false with strategy=choco",
            "CHOCO keeps no residual: what a message leaves out stays in x - x_hat and is sent in later rounds, "
            "which is CHOCO's own error feedback, so a residual would be ignored.",
        )
    if choco.hat_init == "initial" and not gossip.shared_init:
        _refuse(
            "strategy.hat_init",
            "initial",
            "zeros with gossip.shared_init=false",
            "Copies that start at the initial models are free only when every node knows them (one shared init).",
        )


class ChocoGossip:
    """The copies ``x_hat [N, P]`` and one round's CHOCO step over all nodes."""

    def __init__(self, rule: Choco, compressor: Compressor | None, seed: int, num_nodes: int):
        self.rule, self.compressor, self.seed = rule, compressor, seed
        self.ids = torch.arange(num_nodes)
        self.hat: torch.Tensor | None = None
        # a static graph's mixing matrix is the same object every round: its cast and row sums are built once
        self._mixing: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def for_run(cls, exp: Any) -> ChocoGossip | None:
        rule = find_choco(exp.strategy)
        if rule is None:
            return None
        compressor = CompressConfig.from_config(exp.cfg.get("compress")).build()
        return cls(rule, compressor, int(exp.cfg.seed), exp.data.num_clients)

    def start(self, params: torch.Tensor) -> None:
        self.hat = torch.zeros_like(params) if self.rule.hat_init == "zeros" else params.clone()

    def restore(self, carried: dict[str, Any]) -> None:
        self.hat = carried[KEY].clone()

    def carried(self) -> dict[str, torch.Tensor]:
        assert self.hat is not None
        return {KEY: self.hat}

    def mix(self, params: torch.Tensor, w: torch.Tensor, round_: int) -> torch.Tensor:
        """The round's consensus on the copies, then every node's compressed difference added to its copy."""
        assert self.hat is not None
        hat = self.hat.to(params.device)
        if self._mixing is None or self._mixing[0] is not w:
            self._mixing = (w, mixing_terms(w.to(params.device), hat.dtype))
        terms = self._mixing[1]
        if self.rule.order == "paper":  # Algorithm 2: send the trained model's difference, then the consensus step
            self.hat = hat + self.message(params - hat, round_)
            return consensus(params, self.hat, w, self.rule.gamma, terms)
        x = consensus(params, hat, w, self.rule.gamma, terms)
        self.hat = hat + self.message(x - hat, round_)
        return x

    def message(self, diff: torch.Tensor, round_: int) -> torch.Tensor:
        """``[N, P]``: every node's ``q_i = Q(diff_i)`` as its neighbours decode it."""
        if self.compressor is None:
            return diff
        gens = compress_streams(self.seed, ("gossip",), round_, self.ids) if self.compressor.random else None
        return self.compressor.roundtrip(diff, gens)
