"""Gossip learning: nodes train on their own data and merge with graph neighbours, no server.

``mode=gossip`` runs :class:`SyncGossip` (rounds) or :class:`AsyncGossip` (continuous time, events)
on the same data, local training, backends, strategies and results writer as the FL loop. With
``backend=ray`` synchronous gossip runs partitioned: actors own parts of the graph and exchange only
the models of cut edges (:mod:`.partitioned`).
"""

import logging

from .choco import find_choco
from .config import GossipConfig
from .events import AsyncGossip, evaluation_count
from .sync import SyncGossip

log = logging.getLogger("sim.gossip")


def partitioned_reason(exp) -> str | None:
    """Why this run's gossip does not run partitioned over Ray actors (None when it does)."""
    backend = exp.backend
    if exp.gossip is None or backend.name != "ray" or getattr(backend, "gossip", "driver") != "partitioned":
        return "the backend does not partition the graph"
    if exp.gossip.schedule != "sync":
        return "asynchronous gossip keeps its single event queue (the exact event order) in the driver"
    if exp.attack is not None:
        return "Byzantine nodes craft their models from each receiver's neighbourhood, which the driver holds"
    if (exp.cfg.get("compress") or {}).get("name", "none") != "none" or find_choco(exp.strategy):
        return "compressed messages and CHOCO's public copies (sim/gossip/compressed.py, choco.py) live in the driver"
    if exp.strategy.needs_validation:
        return f"{exp.strategy.name} scores models on the validation split, which stays in the driver"
    if (exp.cfg.get("eval") or {}).get("clients", "none") != "none":
        return "per-client evaluation (eval.clients) scores every node's model on its local test rows in the driver"
    return None


def uses_partitions(exp) -> bool:
    """Whether the run's gossip runs on partition actors (the ray backend then starts no training pool)."""
    return partitioned_reason(exp) is None


def run_gossip(exp, log_rows, on_row, resume=None, round_end=None, eval_end=None):
    """Run the gossip schedule the config asks for; returns the final ``[N, P]`` node models.

    ``resume`` continues a checkpointed run of either schedule; checkpoints are written by
    ``round_end`` after each synchronous round, by ``eval_end`` after each asynchronous evaluation.
    """
    reason = partitioned_reason(exp)
    if reason is None:
        from .partitioned import PartitionedSyncGossip

        return PartitionedSyncGossip(exp, exp.topology, exp.gossip).run(
            log_rows, on_row, resume=resume, round_end=round_end
        )
    if exp.backend.name == "ray" and getattr(exp.backend, "gossip", None) == "partitioned":
        log.info("ray backend: gossip merges in the driver, not on partition actors: %s", reason)
    if exp.gossip.schedule == "sync":
        return SyncGossip(exp, exp.topology, exp.gossip).run(log_rows, on_row, resume=resume, round_end=round_end)
    return AsyncGossip(exp, exp.topology, exp.gossip).run(log_rows, on_row, resume=resume, eval_end=eval_end)


__all__ = [
    "GossipConfig",
    "SyncGossip",
    "AsyncGossip",
    "evaluation_count",
    "partitioned_reason",
    "run_gossip",
    "uses_partitions",
]
