"""CHOCO-gossip / CHOCO-SGD (Koloskova, Stich & Jaggi 2019): gossip with compressed messages that converges.

Every node i keeps its model ``x_i`` and a public copy ``x_hat_i`` that all its neighbours hold too.
A round, in the order of the authors' code (epfml/ChocoSGD, ``ParallelCHOCO.step`` and the convex
code's ``method == "choco"``): local training gives ``x_i``; the consensus step
``x_i <- x_i + gamma * sum_j w_ij (x_hat_j - x_hat_i)`` reads the copies; node i sends
``q_i = Q(x_i - x_hat_i)`` and every holder of the copy (its neighbours and itself) adds it,
``x_hat_i <- x_hat_i + q_i``. The part of ``x_i - x_hat_i`` a message leaves out stays in the next
difference, so the copies track the models with a compressor as coarse as top-1 % or 1-bit sign.

The rule needs the engine's copies and compressor, so it is not a merge of K models: synchronous
gossip runs it over all nodes at once (:mod:`sim.gossip.choco`), and the per-node ``aggregate`` is
refused. ``order``: ``code`` (the above) or ``paper``, the paper's Algorithm 2, which sends
``Q(x_i - x_hat_i)`` of the freshly trained model and then takes the consensus step on the updated copies;
with ``gamma = 1`` and no compression ``paper`` is plain gossip averaging (D-PSGD as the gossip loop runs
it, ``x <- W x_trained``) and ``code`` is ``x <- x_trained + (W - I) x_before``.

``hat_init``: ``zeros`` (the paper's Algorithm 2 and the authors' deep-learning code) or ``initial``
(their convex code: the copies start at the shared initial model, which every node knows from the
seed, so nothing is sent for it).
"""

from __future__ import annotations

import torch

from sim.errors import ConfigError
from sim.validation import choice, number

from .base import AggregationInfo, State, Strategy

HAT_INITS = ("zeros", "initial")
ORDERS = ("code", "paper")


class Choco(Strategy):
    name = "choco"
    gossip_only = (
        "CHOCO keeps public copies of every node's model on its neighbours and moves them by compressed "
        "differences; an FL server has no neighbours (for compressed FL uploads use compress= with another rule)"
    )

    def __init__(self, gamma: float = 1.0, hat_init: str = "zeros", order: str = "code"):
        self.gamma = number(
            "strategy.gamma", gamma, 0, 1, lo_open=True, allowed="a consensus step size in (0, 1] for choco"
        )
        self.hat_init = choice("strategy.hat_init", hat_init, HAT_INITS)
        self.order = choice("strategy.order", order, ORDERS)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        raise ConfigError(
            "strategy",
            self.name,
            "a rule that merges K models",
            "CHOCO runs in synchronous gossip only, over all nodes at once (sim/gossip/choco.py).",
        )


def mixing_terms(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w in dtype, its row sums [N, 1])``: what :func:`consensus` reads of a sparse ``[N, N]`` mixing matrix.

    A static graph's matrix is the same every round, so the gossip loop builds these once (sim/gossip/choco.py).
    """
    w = w.coalesce()
    row_sums = torch.zeros(w.shape[0], dtype=w.dtype).index_add_(0, w.indices()[0], w.values())
    return w.to(dtype), row_sums.to(dtype).unsqueeze(1)


def consensus(
    x: torch.Tensor,
    hat: torch.Tensor,
    w: torch.Tensor,
    gamma: float,
    terms: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``x_i + gamma * sum_j w_ij (x_hat_j - x_hat_i)`` for every node: ``[N, P]``, ``w`` a sparse ``[N, N]``.

    ``terms``: ``mixing_terms(w, hat.dtype)`` when the caller keeps them across rounds.
    """
    w_cast, row_sums = mixing_terms(w, hat.dtype) if terms is None else terms
    mixed = torch.sparse.mm(w_cast, hat) - row_sums * hat
    return x + gamma * mixed
