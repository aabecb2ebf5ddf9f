"""Geometric median (RFA, Pillutla, Kakade & Harchaoui 2022) by the smoothed Weiszfeld iteration."""

from __future__ import annotations

import torch

from sim.validation import choice, integer, number

from ..base import AggregationInfo, State
from .common import RobustRule

GEOMED_INIT = ("mean", "reference")


class GeometricMedian(RobustRule):
    """The point minimising ``sum_k |z - x_k|``, approximated by smoothed Weiszfeld steps. Needs n > 2f.

    One step: ``beta_k = 1 / max(nu, |z - x_k|)``, ``z <- sum_k beta_k x_k / sum_k beta_k``. It stops
    after ``max_iter`` steps, or earlier when the objective improved by less than ``eps`` times its
    value (Pillutla et al.'s ``ftol``; ``eps = 0`` runs every step). Every iterate is a weighted
    mean of the inputs, so its distances to them follow from one ``[K, K]`` Gram matrix: the stack
    is read for that product and for the final weighted sum, whatever the number of steps.

    ``init``: ``mean`` (the average of the inputs, as the RFA authors' code starts) or ``reference``
    (the global model in FL, the receiver's own model in gossip). ByzFL's ``GeometricMedian`` starts
    at zero on gradients, i.e. at the reference on models: ``init=reference, eps=0, max_iter=T``
    gives its numbers. Rows with an inf or NaN entry are left out, as ByzFL drops infinite rows.
    ``f`` only sets the tolerance check: the geometric median's breakdown point is 1/2.
    """

    name = "geometric_median"

    def __init__(
        self, f: int | None = None, nu: float = 1e-6, max_iter: int = 100, eps: float = 1e-6, init: str = "mean"
    ):
        super().__init__(f)
        self.nu = number("strategy.nu", nu, 0, lo_open=True, allowed="a finite number > 0 (the smoothing distance)")
        self.max_iter = integer("strategy.max_iter", max_iter, 1)
        self.eps = number("strategy.eps", eps, 0, 1, allowed="a number in [0, 1] (relative improvement to go on)")
        self.init = choice("strategy.init", init, GEOMED_INIT)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        self.tolerated_f(models, info)
        finite = torch.isfinite(models.sum(dim=1))  # rows with an inf or NaN entry
        points = models if bool(finite.all()) else models[finite]
        if len(points) == 0:
            return info.reference.clone(), state
        gram = centred_gram(points)
        if self.init == "mean":
            weights = torch.full((len(points),), 1.0 / len(points), dtype=gram.dtype, device=gram.device)
            distances = distances_to_combination(gram, weights)
        else:
            distances = torch.linalg.vector_norm(points - info.reference.to(points.dtype), dim=1).to(gram.dtype)
        objective = float(distances.sum())
        for _ in range(self.max_iter):
            betas = 1.0 / distances.clamp_min(self.nu)
            weights = betas / betas.sum()
            distances = distances_to_combination(gram, weights)
            previous, objective = objective, float(distances.sum())
            if self.eps > 0 and abs(previous - objective) <= self.eps * previous:
                break
        return weights.to(points.dtype) @ points, state


def centred_gram(points: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` inner products of the points minus their mean (in float64 for the K x K algebra)."""
    centred = points - points.mean(dim=0)
    return (centred @ centred.T).to(torch.float64)


def distances_to_combination(gram: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``|x_k - z|`` for ``z = sum_j w_j x_j`` (weights summing to 1), from the Gram matrix alone.

    ``|x_k - z|^2 = G_kk - 2 (G w)_k + w^T G w`` with G the centred Gram matrix (a shift of every
    point leaves the distances unchanged): every Weiszfeld step costs K x K operations, and the
    ``[P]`` model is formed once, at the end.
    """
    spread = gram @ weights
    return (gram.diagonal() - 2 * spread + weights @ spread).clamp_min(0).sqrt()
