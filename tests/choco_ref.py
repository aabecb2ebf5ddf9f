"""A plain-torch transcription of CHOCO-SGD as the authors' code runs it (epfml/ChocoSGD), for the tests.

Written apart from sim/gossip/choco.py, node by node, with the bookkeeping of their deep-learning code
(``ParallelCHOCO``): node i holds its own copy of every neighbour's public model (``hats[i][j]``) and a
running ``memory[i] = sum_j w_ij hats[i][j]`` that is updated by ``w_ij q_j`` as messages arrive, never
recomputed. One step, in their order (``ParallelCHOCO.step``; the convex code's ``method == "choco"`` is
the same):

1. the SGD step (here: the round's local training of every node, ``train(x, round)``);
2. ``x_i <- x_i + gamma (memory_i - hats[i][i])``  (``update_params_from_neighbor``);
3. ``q_i = Q(x_i - hats[i][i])``; every holder j of i's copy (i's neighbours and i) adds ``q_i`` to
   ``hats[j][i]`` and ``w_ji q_i`` to ``memory_j``  (``CHOCOCompressor.pipeline``).

The copies start at zero (their deep-learning code) or at the initial model (their convex code). Q is
applied to the whole flat vector, as in their convex code (their deep-learning code compresses each
parameter tensor separately). The compressors below are transcribed from their convex code as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sim.seeding import torch_generator

Compress = Callable[[torch.Tensor, int, int], torch.Tensor]  # (vector, node, round) -> what the neighbours decode


def top_k(fraction: float) -> Compress:
    """The convex code's ``top``: ``argsort(|x|)[::-1][:k]`` kept (a stable sort: ties to the lowest index)."""

    def q(x: torch.Tensor, node: int, round_: int) -> torch.Tensor:
        k = max(1, math.ceil(round(fraction * len(x), 6)))
        order = sorted(range(len(x)), key=lambda i: -abs(float(x[i])))[:k]
        out = torch.zeros_like(x)
        out[order] = x[order]
        return out

    return q


def scaled_sign(x: torch.Tensor, node: int, round_: int) -> torch.Tensor:
    """``(||x||_1 / n) sign(x)``, a zero entry sent as +1."""
    scale = float(x.abs().sum()) / len(x)
    return torch.tensor([-scale if float(v) < 0 else scale for v in x], dtype=x.dtype)


def qsgd(levels: int, seed: int, biased: bool) -> Compress:
    """The convex code's ``qsgd_quantize``; its uniform draws from ``("compress", "gossip", round, node)``."""

    def q(x: torch.Tensor, node: int, round_: int) -> torch.Tensor:
        draws = torch.rand(len(x), generator=torch_generator(seed, "compress", "gossip", round_, node), dtype=x.dtype)
        norm = torch.sqrt(torch.sum(x * x))
        if float(norm) == 0:
            return torch.zeros_like(x)
        level_float = levels * x.abs() / norm
        previous = torch.floor(level_float)
        new_level = previous + (draws < (level_float - previous)).to(x.dtype)
        scale = 1.0
        if biased:
            n = len(x)
            scale = 1.0 / (min(n / levels**2, n**0.5 / levels) + 1.0)
        return scale * torch.sign(x) * norm * new_level / levels

    return q


def identity(x: torch.Tensor, node: int, round_: int) -> torch.Tensor:
    return x.clone()


def choco_reference(
    x0: torch.Tensor,
    w: torch.Tensor,
    gamma: float,
    rounds: int,
    train: Callable[[torch.Tensor, int], torch.Tensor],
    compress: Compress,
    hat_init: str = "zeros",
    order: str = "code",
) -> torch.Tensor:
    """The nodes' models ``[N, P]`` after ``rounds`` CHOCO-SGD steps on the dense mixing matrix ``w [N, N]``.

    ``order="paper"``: the paper's Algorithm 2 (lines 3-8: q from the trained model, copies updated, then the
    consensus step on the updated copies).
    """
    n = x0.shape[0]
    neighbours = [[j for j in range(n) if float(w[i, j]) != 0 or i == j] for i in range(n)]
    start = (lambda j: torch.zeros_like(x0[j])) if hat_init == "zeros" else (lambda j: x0[j].clone())
    hats = [{j: start(j) for j in neighbours[i]} for i in range(n)]
    memory = [sum((float(w[i, j]) * hats[i][j] for j in neighbours[i]), torch.zeros_like(x0[0])) for i in range(n)]
    x = [row.clone() for row in x0]
    for round_ in range(1, rounds + 1):
        x = list(train(torch.stack(x), round_))
        if order == "code":
            for i in range(n):
                x[i] = x[i] + gamma * (memory[i] - hats[i][i])
        q = [compress(x[i] - hats[i][i], i, round_) for i in range(n)]
        for i in range(n):
            for j in neighbours[i]:
                hats[i][j] = hats[i][j] + q[j]
                memory[i] = memory[i] + float(w[i, j]) * q[j]
        if order == "paper":
            for i in range(n):
                x[i] = x[i] + gamma * (memory[i] - hats[i][i])
    return torch.stack(x)


def plain_gossip_reference(
    x0: torch.Tensor, w: torch.Tensor, rounds: int, train: Callable[[torch.Tensor, int], torch.Tensor]
) -> torch.Tensor:
    """D-PSGD: train, then ``x_i <- sum_j w_ij x_j``."""
    x = x0.clone()
    for round_ in range(1, rounds + 1):
        x = w.to(x.dtype) @ train(x, round_)
    return x
