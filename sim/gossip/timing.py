"""Simulated time of gossip: how long a synchronous round lasts, what one node's training costs.

Both gossip schedules ask the run's system model (:mod:`sim.system`) for durations. A node's local
training on ``samples`` samples (its SGD steps x the batch size) takes ``compute_time(node, samples)``;
a message from ``j`` to ``i`` of ``b`` bytes (the model plus the sender's extras, as ``bytes_up`` counts
it) takes ``link_time(j, i, b)``. A node sends to all its neighbours at once, each edge being its own
link, so transfers on different edges overlap.

Synchronous round, ``gossip.order=update_merge``: every node trains (``c_i``), then sends; the message
``j -> i`` is through its link at ``c_j + L_ji``; node ``i`` merges once its own training and its
delivered messages are done. The round ends when the last node has merged and the last sent message
(lost ones too: the sender's link carries them) is through::

    T = max( max_i c_i , max over sent j -> i of (c_j + L_ji) )

``merge_update``: every node first sends the model it holds, merges once its delivered messages are
in, then trains::

    T = max( max_i (c_i + max over delivered j -> i of L_ji) , max over sent j -> i of L_ji )

(a node that received nothing trains at once). ``time_s`` adds the rounds' T up. With ``system=none``
(or no system model) a round lasts exactly 1.0 s and nothing is computed, so ``time_s`` is the round
number and every other number of the run is unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sim.training import TrainConfig, client_local_steps, steps_per_client

__all__ = ["RoundClock", "enabled_system", "training_samples"]


def enabled_system(exp) -> Any:
    """The run's system model when it takes time (``system=none``: None): ``exp.system`` where the caller set
    one, else the one the config's ``system`` block builds (:func:`sim.system.build_system`)."""
    system = getattr(exp, "system", None)
    if system is None:
        from sim.system import build_run_system

        system = build_run_system(exp)
    return system if system.enabled else None


def training_samples(
    sizes: torch.Tensor, cfg: TrainConfig, seed: int, counts: list[int], nodes: list[int]
) -> np.ndarray:
    """float64 ``[K]``: samples (SGD steps x batch size) of node ``nodes[k]``'s training number ``counts[k]``.

    The steps are those the backends take (:func:`sim.training.steps_per_client`), with each training's
    own draw under ``train.local_steps_min`` (the round of a sync run, the training count of an async one).
    """
    ids = torch.as_tensor(nodes, dtype=torch.long)
    local = client_local_steps(cfg, seed, list(counts), list(nodes))
    steps = steps_per_client(sizes[ids], cfg, local)
    return steps.numpy().astype(np.float64) * cfg.batch_size


class RoundClock:
    """Durations of synchronous gossip rounds (the module docstring gives the rule).

    Per-node compute times are computed once when every round trains the same steps; per-edge link times
    once per (mixing matrix, message size), so a static graph costs a few numpy reductions per round.
    """

    def __init__(self, exp, order: str):
        self.system = enabled_system(exp)
        self.order = order
        self.n = exp.data.num_clients
        self.sizes, self.train, self.seed = exp.data.client_sizes, exp.train, int(exp.cfg.seed)
        self._compute: np.ndarray | None = None
        self._links: tuple[Any, int, np.ndarray] | None = None  # (mixing matrix, message bytes, L per entry)

    def compute_times(self, round_: int) -> np.ndarray:
        """``[N]`` seconds of every node's training in ``round_``."""
        if self._compute is not None:
            return self._compute
        nodes = list(range(self.n))
        samples = training_samples(self.sizes, self.train, self.seed, [round_] * self.n, nodes)
        assert self.system is not None
        out = np.array([self.system.compute_time(i, s) for i, s in zip(nodes, samples.tolist(), strict=True)])
        if self.train.local_steps_min is None:  # the same steps every round
            self._compute = out
        return out

    def link_times(self, w: torch.Tensor, rows: np.ndarray, cols: np.ndarray, message_bytes: int) -> np.ndarray:
        """Seconds of every stored entry's message (receiver ``rows[e]``, sender ``cols[e]``); 0 on the diagonal."""
        if self._links is not None and self._links[0] is w and self._links[1] == message_bytes:
            return self._links[2]
        assert self.system is not None
        link = self.system.link_time
        out = np.array(
            [0.0 if r == c else link(c, r, message_bytes) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)],
            dtype=np.float64,
        )
        self._links = (w, message_bytes, out)
        return out

    def round_time(self, round_: int, w: torch.Tensor, lost: torch.Tensor, message_bytes: int) -> float:
        """Seconds of round ``round_``, whose coalesced mixing matrix is ``w`` and lost entries ``lost``."""
        if self.system is None:
            return 1.0
        indices = w.indices()
        rows, cols = indices[0].numpy(), indices[1].numpy()
        compute = self.compute_times(round_)
        links = self.link_times(w, rows, cols, message_bytes)
        sent = rows != cols
        delivered = sent & ~lost.numpy()
        if self.order == "update_merge":
            through = compute[cols[sent]] + links[sent]
            return float(max(compute.max(initial=0.0), through.max(initial=0.0)))
        waits = np.zeros(self.n)
        np.maximum.at(waits, rows[delivered], links[delivered])
        return float(max((waits + compute).max(initial=0.0), links[sent].max(initial=0.0)))
