"""Gossip learning: nodes train on their own data and merge with graph neighbours, no server.

``mode=gossip`` runs :class:`SyncGossip` (rounds) or :class:`AsyncGossip` (continuous time, events)
on the same data, local training, backends, strategies and results writer as the FL loop.
"""

from .config import GossipConfig
from .events import AsyncGossip, evaluation_count
from .sync import SyncGossip


def run_gossip(exp, log, on_row, resume=None, round_end=None, eval_end=None):
    """Run the gossip schedule the config asks for; returns the final ``[N, P]`` node models.

    ``resume`` continues a checkpointed run of either schedule; checkpoints are written by
    ``round_end`` after each synchronous round, by ``eval_end`` after each asynchronous evaluation.
    """
    if exp.gossip.schedule == "sync":
        return SyncGossip(exp, exp.topology, exp.gossip).run(log, on_row, resume=resume, round_end=round_end)
    return AsyncGossip(exp, exp.topology, exp.gossip).run(log, on_row, resume=resume, eval_end=eval_end)


__all__ = ["GossipConfig", "SyncGossip", "AsyncGossip", "evaluation_count", "run_gossip"]
