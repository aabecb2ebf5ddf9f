"""Geometric median (RFA, Pillutla, Kakade & Harchaoui 2022) by the smoothed Weiszfeld iteration."""

from __future__ import annotations

import torch

from sim.validation import choice, integer, number

from ..base import AggregationInfo, State
from .common import RobustRule, column_blocks, gram_about, median_of_sorted, sort_columns

GEOMED_INIT = ("mean", "reference")
GEOMED_WEIGHTS = ("samples", "uniform")


class GeometricMedian(RobustRule):
    """The point minimising ``sum_k a_k |z - x_k|``, approximated by smoothed Weiszfeld steps. Needs n > 2f.

    As the RFA authors' ``geometric_median_update`` (krishnap25/RFA): ``a_k`` are the clients' sample
    counts normalised to sum 1 (``weights=samples``; ``uniform``: 1 / n each), the start is the
    a-weighted mean (``init=mean``), and one step is ``b_k = a_k / max(nu, |z - x_k|)``,
    ``z <- sum_k b_k x_k / sum_k b_k``. It stops after ``max_iter`` steps, or earlier when
    ``|previous - objective| < eps * objective`` with objective ``sum_k a_k |z - x_k|`` (RFA's
    ``ftol``; ``eps = 0`` runs every step). Defaults are the authors': nu = 1e-5, 4 steps, eps = 1e-6.

    ByzFL's ``GeometricMedian(nu, T)`` is ``weights=uniform, init=reference, eps=0, max_iter=T`` with the
    same nu (its zero start on gradients is the reference on models; ByzFL's defaults nu = 0.1, T = 3).

    Every iterate is a weighted mean of the inputs, so its distances to them follow from one ``[K, K]``
    float64 Gram matrix about the coordinate median (exact whatever the scale of a few far rows, see
    ``pairwise_sq_distances``): the stack is read for that product and for the final weighted sum,
    whatever the number of steps. Rows with an inf or NaN entry are left out, as ByzFL drops infinite
    rows. ``f`` only sets the tolerance check: the geometric median's breakdown point is 1/2. Sample
    weights let a Byzantine client claim a large share by reporting many samples; ``uniform`` does not.
    """

    name = "geometric_median"

    def __init__(
        self,
        f: int | None = None,
        nu: float = 1e-5,
        max_iter: int = 4,
        eps: float = 1e-6,
        init: str = "mean",
        weights: str = "samples",
    ):
        super().__init__(f)
        self.nu = number("strategy.nu", nu, 0, lo_open=True, allowed="a finite number > 0 (the smoothing distance)")
        self.max_iter = integer("strategy.max_iter", max_iter, 1)
        self.eps = number("strategy.eps", eps, 0, 1, allowed="a number in [0, 1] (relative improvement to go on)")
        self.init = choice("strategy.init", init, GEOMED_INIT)
        self.weights = choice("strategy.weights", weights, GEOMED_WEIGHTS)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        self.tolerated_f(models, info)
        finite = torch.isfinite(models).all(dim=1)  # rows with an inf or NaN entry
        points = models if bool(finite.all()) else models[finite]
        if len(points) == 0:
            return info.reference.clone(), state
        centre = median_of_sorted(sort_columns(points))
        gram = gram_about(points, centre)
        alphas = self.alphas(info, finite).to(device=gram.device)
        if self.init == "mean":
            weights = alphas
            distances = distances_to_combination(gram, weights)
        else:  # from the reference: direct differences, float64
            reference = info.reference.to(device=points.device, dtype=torch.float64)
            squares = torch.zeros(len(points), dtype=torch.float64, device=points.device)
            for c in column_blocks(points):
                squares += ((points[:, c].to(torch.float64) - reference[c]) ** 2).sum(dim=1)
            distances = squares.sqrt()
            weights = None
        objective = float(alphas @ distances)
        for _ in range(self.max_iter):
            betas = alphas / distances.clamp_min(self.nu)
            weights = betas / betas.sum()
            distances = distances_to_combination(gram, weights)
            previous, objective = objective, float(alphas @ distances)
            if self.eps > 0 and abs(previous - objective) < self.eps * objective:
                break
        assert weights is not None  # max_iter >= 1
        return weighted_sum(points, weights), state

    def alphas(self, info: AggregationInfo, finite: torch.Tensor) -> torch.Tensor:
        """The clients' weights a_k (summing to 1) of the finite rows: sample counts, or 1 / n each."""
        if self.weights == "uniform":
            count = int(finite.sum())
            return torch.full((count,), 1.0 / count, dtype=torch.float64)
        samples = info.num_samples.to(torch.float64).cpu()[finite.cpu()]
        if not bool((samples > 0).all()) or not bool(torch.isfinite(samples).all()):
            samples = torch.ones_like(samples)  # no usable counts (e.g. merging checkpoints): equal weights
        return samples / samples.sum()


def weighted_sum(points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k x_k`` accumulated in float64 (weights from the K x K algebra), returned in the points' dtype."""
    out = torch.empty(points.shape[1], dtype=points.dtype, device=points.device)
    w = weights.to(device=points.device)
    for c in column_blocks(points):
        out[c] = (w @ points[:, c].to(torch.float64)).to(points.dtype)
    return out


def distances_to_combination(gram: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``|x_k - z|`` for ``z = sum_j w_j x_j`` (weights summing to 1), from the Gram matrix alone.

    ``|x_k - z|^2 = G_kk - 2 (G w)_k + w^T G w`` with G the Gram matrix about any centre (a shift of every
    point leaves the distances unchanged): every Weiszfeld step costs K x K operations, and the
    ``[P]`` model is formed once, at the end.
    """
    spread = gram @ weights
    return (gram.diagonal() - 2 * spread + weights @ spread).clamp_min(0).sqrt()
