"""Each client's model on its own local test rows, in batched passes, and the distribution over clients.

Two batched paths give the numbers of :func:`sequential_scores` (one :func:`sim.training.evaluate` per
client), which the tests hold them to:

- one model for everyone (FL's global model): one forward pass over every evaluated client's rows,
  then per-client sums by ``index_add`` (:func:`shared_model_scores`);
- one model per client (gossip nodes, personalized rules): the clients' rows padded to ``[K, T]`` and
  ``vmap`` over (model, rows) pairs, in chunks of clients and rows, padding masked out
  (:func:`own_model_scores`).

Counts stay integers and loss sums float64, so an accuracy is exactly ``correct / rows``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from sim.layout import Layout

#: client rows gathered at once by :func:`own_model_scores` (clients x rows of a chunk)
ROWS_PER_CHUNK = 16384


def client_rows(lo: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, owner)``: the row indices ``lo[k] .. lo[k] + n[k] - 1`` of every client, client after client, and
    the position ``k`` each row belongs to. Fixed for a run, so :class:`~sim.client_eval.ClientEvaluator` builds
    them once and passes them to every :func:`shared_model_scores` call."""
    owner = torch.repeat_interleave(torch.arange(len(n)), n)
    start = torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    return lo[owner] + torch.arange(int(n.sum())) - start, owner


@torch.no_grad()
def shared_model_scores(
    model: nn.Module,
    layout: Layout,
    params: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    lo: torch.Tensor,
    n: torch.Tensor,
    chunk: int = 8192,
    placed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct [K] int64, loss_sum [K] float64)`` of one model ``[P]`` on each client's rows ``lo[k]:lo[k]+n[k]``.

    ``placed``: :func:`client_rows` of ``(lo, n)`` when the caller keeps it (built here otherwise).
    """
    rows, owner = client_rows(lo, n) if placed is None else placed
    correct = torch.zeros(len(n), dtype=torch.int64)
    loss_sum = torch.zeros(len(n), dtype=torch.float64)
    state = layout.to_state_dict(params)
    device = params.device
    for part, who in zip(rows.split(chunk), owner.split(chunk), strict=True):
        xb, yb = x[part.to(x.device)].to(device), y[part.to(y.device)].to(device)
        logits = functional_call(model, state, (xb,))
        correct.index_add_(0, who, (logits.argmax(1) == yb).long().cpu())
        loss_sum.index_add_(0, who, F.cross_entropy(logits, yb, reduction="none").double().cpu())
    return correct, loss_sum


@torch.no_grad()
def own_model_scores(
    model: nn.Module,
    layout: Layout,
    stacked: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    lo: torch.Tensor,
    n: torch.Tensor,
    chunk: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct [K] int64, loss_sum [K] float64)`` of model ``stacked[k]`` on client k's rows ``lo[k]:lo[k]+n[k]``."""

    def logits_of(p: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(model, layout.to_state_dict(p), (xb,))

    batched = vmap(logits_of, in_dims=(0, 0))
    device = stacked.device
    correct = torch.zeros(len(n), dtype=torch.int64)
    loss_sum = torch.zeros(len(n), dtype=torch.float64)
    for c in range(0, len(n), chunk):
        models, c_lo, c_n = stacked[c : c + chunk], lo[c : c + chunk], n[c : c + chunk]
        longest = int(c_n.max()) if len(c_n) else 0
        step = max(1, ROWS_PER_CHUNK // len(c_n)) if len(c_n) else 1
        for r in range(0, longest, step):
            pos = torch.arange(r, min(r + step, longest))
            valid = pos[None, :] < c_n[:, None]  # [k, t]: padding past a client's last row is masked
            index = torch.where(valid, c_lo[:, None] + pos[None, :], c_lo[:, None])  # padding reads the first row
            xb, yb = x[index.to(x.device)].to(device), y[index.to(y.device)].to(device)
            logits = batched(models, xb)  # [k, t, C]
            hit = (logits.argmax(-1) == yb) & valid.to(device)
            losses = F.cross_entropy(logits.transpose(1, 2), yb, reduction="none").double() * valid.to(device)
            correct[c : c + len(c_n)] += hit.sum(-1).cpu()
            loss_sum[c : c + len(c_n)] += losses.sum(-1).cpu()
    return correct, loss_sum


def sequential_scores(
    model: nn.Module, layout: Layout, stacked: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lo, n
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: ``(accuracy [K], mean loss [K])`` from one :func:`sim.training.evaluate` per client."""
    from sim.training import evaluate

    out = [
        evaluate(model, layout, stacked[k], x[int(lo[k]) : int(lo[k] + n[k])], y[int(lo[k]) : int(lo[k] + n[k])])
        for k in range(len(n))
    ]
    return torch.tensor([a for a, _ in out], dtype=torch.float64), torch.tensor(
        [b for _, b in out], dtype=torch.float64
    )


def worst_share_mean(values: np.ndarray, share: float = 0.1) -> float:
    """The mean of the lowest ``max(1, floor(share * K))`` values: q-FedAvg's "worst 10%".

    litian96/fair_flearn's plot_fairness.py takes ``np.mean(np.sort(accuracies)[:int(num_user * 0.1)])``;
    with fewer than 10 clients that is an empty mean (NaN), here the single worst client.
    """
    count = max(1, math.floor(share * len(values) + 1e-9))
    return float(np.sort(values)[:count].mean())


def distribution_columns(correct: torch.Tensor, loss_sum: torch.Tensor, n: torch.Tensor) -> dict[str, float]:
    """metrics.csv's per-client columns over the evaluated clients (those with at least one local test row)."""
    has = n > 0
    rows = n[has].to(torch.float64).numpy()
    acc = correct[has].to(torch.float64).numpy() / rows
    loss = loss_sum[has].numpy() / rows
    if len(acc) == 0:
        return {"clients_evaluated": 0}
    return {
        "clients_evaluated": len(acc),
        "client_accuracy_mean": float(acc.mean()),
        "client_accuracy_weighted": float(correct[has].sum()) / float(rows.sum()),
        "client_accuracy_std": float(acc.std()),
        "client_accuracy_min": float(acc.min()),
        "client_accuracy_p10": worst_share_mean(acc),
        "client_accuracy_median": float(np.median(acc)),
        "client_accuracy_max": float(acc.max()),
        "client_loss_mean": float(loss.mean()),
        "client_loss_weighted": float(loss_sum[has].sum()) / float(rows.sum()),
    }
