"""Rules that pick inputs by their pairwise distances: Krum, Multi-Krum and Bulyan.

One ``[K, K]`` matrix of squared distances (a float64 Gram product about the coordinate median, see
``pairwise_sq_distances``) serves every score; the rest are sorts of K x K numbers, whatever the model
size. Exact ties between scores go to the lower index (``argmin``, stable ``argsort``), as in Flower.
"""

from __future__ import annotations

import torch

from sim.errors import ConfigError
from sim.validation import choice, integer

from ..base import AggregationInfo, State
from .common import RobustRule, mean_of_nearest, median_of_sorted, pairwise_sq_distances, sort_columns

KRUM_SCORING = ("paper", "byzfl")


def krum_scores(dist: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Each row's sum of squared distances to its ``neighbours`` nearest other rows.

    Sorting a row puts its own 0 first; the next ``neighbours`` entries are the nearest others (a
    duplicate of the row also sits at 0, and then either zero may be dropped: same sum).
    """
    return torch.sort(dist, dim=1).values[:, 1 : 1 + neighbours].sum(dim=1)


class Krum(RobustRule):
    """Krum and Multi-Krum (Blanchard et al. 2017): average the ``m`` inputs with the lowest Krum scores.

    A score is the sum of squared distances to the input's nearest neighbours. ``m = 1`` is Krum
    (the chosen model itself), ``m = null`` is n - f (ByzFL's ``MultiKrum``).

    ``scoring``: ``paper`` counts the n - f - 2 nearest others and needs n > 2f + 2 (Blanchard et
    al.'s Krum, and Flower's); ``byzfl`` counts n - f - 1, as ByzFL 0.0.11 does (its distances sorted
    with the row's own zero, kept up to index n - f), and then needs only n > 2f as ByzFL checks.
    The paper's count is the default because its proof needs it: with n - f - 1 neighbours an
    honest input's set may include a Byzantine one even when all n - f honest inputs are close.
    ByzFL averages the selected distances where the paper sums them: same order, same choice.
    """

    name = "krum"

    def __init__(self, f: int | None = None, m: int | None = 1, scoring: str = "paper"):
        super().__init__(f)
        self.m = None if m is None else integer("strategy.m", m, 1, allowed="null (n - f) or an integer >= 1")
        self.scoring = choice("strategy.scoring", scoring, KRUM_SCORING)
        self.limit = "n > 2f + 2" if self.scoring == "paper" else "n > 2f"
        if self.m != 1:
            self.name = "multi_krum"

    def max_tolerated(self, n: int) -> int:
        slack = 3 if self.scoring == "paper" else 1
        return max((n - slack) // 2, 0) if n >= slack else -1

    def check_tolerance(self, n: int, num_byzantine: int = 0) -> None:
        super().check_tolerance(n, num_byzantine)
        if self.m is not None and self.m > n:
            raise ConfigError("strategy.m", self.m, f"at most n={n}, the number of models per aggregation")

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        f = self.tolerated_f(models, info)
        n = len(models)
        neighbours = n - f - (2 if self.scoring == "paper" else 1)
        scores = krum_scores(pairwise_sq_distances(models), neighbours)
        m = n - f if self.m is None else self.m
        if m == 1:
            return models[torch.argmin(scores)].clone(), state
        chosen = torch.argsort(scores, stable=True)[:m]
        return models[chosen].mean(dim=0), state


class Bulyan(RobustRule):
    """Bulyan (El Mhamdi et al. 2018) over Krum, as Flower's ``aggregate_bulyan``. Needs n >= 4f + 3.

    1. Select theta = n - 2f inputs one at a time, each the Krum choice (n' - f - 2 nearest others
       among the n' inputs not yet selected, at least 1) of those left;
    2. per coordinate, average the beta = theta - 2f selected values nearest their median.

    ByzFL 0.0.11 has no Bulyan; the reference test compares with Flower. The paper states the limit
    as n >= 4f + 3 (Flower checks the same); the issue's "n > 4f + 3" would refuse n = 4f + 3,
    which the paper allows.
    """

    name = "bulyan"
    limit = "n >= 4f + 3"

    def max_tolerated(self, n: int) -> int:
        return (n - 3) // 4 if n >= 3 else -1

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        f = self.tolerated_f(models, info)
        n = len(models)
        theta, beta = n - 2 * f, n - 4 * f
        dist = pairwise_sq_distances(models)
        left = torch.ones(n, dtype=torch.bool, device=models.device)
        chosen = []
        for _ in range(theta):  # a loop over selections of K x K scores, never over parameters
            remaining = int(left.sum())
            neighbours = min(max(remaining - f - 2, 1), remaining - 1)
            masked = dist.masked_fill(~left[None, :], float("inf"))
            scores = krum_scores(masked, neighbours).masked_fill(~left, float("inf"))
            best = int(torch.argmin(scores))
            chosen.append(best)
            left[best] = False
        selected = models[torch.tensor(chosen, device=models.device)]  # in the order picked, as Flower keeps them
        return mean_of_nearest(selected, median_of_sorted(sort_columns(selected)), beta), state
