"""Merging task vectors from a base: task arithmetic, TIES and DARE (names as in arcee-ai/mergekit).

Each model's delta from the base is ``tau_i = theta_i - base``, base = ``info.reference`` (the FL
global model; in gossip the node's own model, whose own delta is then 0). The result is
``base + scaling * delta`` with

- ``task_arithmetic`` (Ilharco et al. 2023): ``delta = sum_i w_i tau_i``;
- ``ties`` (Yadav et al. 2023): trim each ``tau_i`` to its ``density`` fraction of largest magnitudes,
  separately in every tensor of the layout (mergekit's ``magnitude`` sparsifier works per tensor),
  elect each entry's sign as the sign of ``sum_i w_i trimmed_i`` (mergekit's ``sum`` consensus; a
  zero sum elects +), and take the disjoint mean ``sum_i w_i a_i tau_i / sum_i w_i a_i`` over the
  models whose nonzero entry agrees with the elected sign (``a_i`` in {0, 1}; an entry where none
  agree stays at the base);
- ``dare`` (Yu et al. 2024): drop each delta entry with probability ``1 - density`` and multiply the
  kept ones by ``1 / density`` (the paper's rescale; mergekit instead rescales each tensor to keep
  its L1 norm), then combine as task arithmetic, or, with ``sign_consensus=true``, with the TIES
  election and disjoint mean (mergekit's ``dare_ties`` sums the agreeing deltas without dividing
  by default; the disjoint mean is TIES-Merging's own rule). The drop mask is drawn from
  ``torch_generator(seed, "dare", round, node)`` (node -1 on an FL server), so gossip nodes draw
  different masks; the YAML sets ``seed: ${seed}``, the run's seed.

Weights ``w_i`` are ``1/K`` (``weighting=uniform``) or ``n_i / sum n`` (``samples``). mergekit asks
for a weight per model and has no default; weights summing to one make ``scaling`` (mergekit's
``lambda``) read like a server learning rate: task arithmetic with ``scaling=1`` is the plain
(FedAvg-style) average, whatever K is. Buffers (e.g. BatchNorm statistics) are not deltas to trim
or extrapolate: they are averaged with the same weights.
"""

from __future__ import annotations

import math

import torch

from sim.errors import ConfigError
from sim.layout import Layout
from sim.seeding import torch_generator

from .base import AggregationInfo, State, Strategy, check_positive, check_unit_interval
from .fedavg import WEIGHTINGS, client_weights

METHODS = ("task_arithmetic", "ties", "dare")


def trim_by_magnitude(tau: torch.Tensor, density: float, layout: Layout) -> torch.Tensor:
    """Keep, per model and per weight/bias tensor, the ``floor(density * numel)`` (at least 1) entries
    of largest magnitude; ties in magnitude keep the earlier entry."""
    if density >= 1:
        return tau
    out = torch.zeros_like(tau)
    for spec in layout.of_kind("weight", "bias"):
        t = tau[:, spec.slice]
        k = max(1, math.floor(density * spec.numel + 1e-9))
        top = torch.argsort(t.abs(), dim=1, descending=True, stable=True)[:, :k]
        out[:, spec.slice] = torch.zeros_like(t).scatter(1, top, t.gather(1, top))
    return out


def dare_drop(tau: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each entry with probability ``1 - density``, rescale the kept ones by ``1 / density``."""
    if density >= 1:
        return tau
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float64, device=generator.device).to(tau.device)
    keep = keep < density
    return torch.where(keep, tau / density, torch.zeros_like(tau))


def disjoint_merge(tau: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """TIES: elect signs by the weighted sum, then the weighted mean of the agreeing entries."""
    weighted = w[:, None] * tau
    elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(tau.dtype)
    agree = (torch.sign(tau) == elected).to(tau.dtype)  # a zero (trimmed / dropped) entry never agrees
    divisor = (w[:, None] * agree).sum(0)
    divisor[divisor == 0] = 1
    return (weighted * agree).sum(0) / divisor


class TaskArithmetic(Strategy):
    name = "task_arithmetic"

    def __init__(
        self,
        method: str = "task_arithmetic",
        scaling: float = 1.0,
        density: float = 1.0,
        weighting: str = "uniform",
        sign_consensus: bool = False,
        seed: int = 0,
    ):
        if method not in METHODS:
            raise ConfigError("strategy.method", method, f"one of {', '.join(METHODS)}")
        self.method = method
        self.name = method  # the run's label: task_arithmetic, ties or dare
        self.scaling = check_positive(method, "scaling", scaling)
        check_unit_interval(method, "density", density, closed_right=True, closed_left=False)
        if method == "task_arithmetic" and density != 1:
            raise ConfigError(
                "strategy.density",
                density,
                "1 for task_arithmetic",
                "Only ties (magnitude trim) and dare (random drop) sparsify the deltas.",
            )
        self.density = float(density)
        if weighting not in WEIGHTINGS:
            raise ConfigError("strategy.weighting", weighting, f"one of {', '.join(WEIGHTINGS)}")
        self.weighting = weighting
        if not isinstance(sign_consensus, bool):
            raise ConfigError("strategy.sign_consensus", sign_consensus, "true or false")
        self.sign_consensus = sign_consensus or method == "ties"
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError("strategy.seed", seed, "an integer >= 0")
        self.seed = seed

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        dtype = torch.float64
        x = models.to(dtype)
        base = info.reference.to(dtype)
        w = client_weights(self.weighting, info, len(models)).to(dtype)
        w = w / w.sum()
        tau = x - base
        if self.method == "ties":
            tau = trim_by_magnitude(tau, self.density, info.layout)
        elif self.method == "dare":
            node = -1 if info.self_index is None else int(info.client_ids[info.self_index])
            tau = dare_drop(tau, self.density, torch_generator(self.seed, "dare", info.round, node))
        delta = disjoint_merge(tau, w) if self.sign_consensus else w @ tau
        out = base + self.scaling * delta
        for spec in info.layout.of_kind("buffer"):
            out[spec.slice] = w @ x[:, spec.slice]
        return out.to(models.dtype), state
