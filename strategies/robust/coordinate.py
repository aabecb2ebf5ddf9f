"""Coordinate-wise rules: each parameter is aggregated on its own, from the K values of that column.

All three work on the whole ``[K, P]`` stack with one sort along the model axis (``sort_columns``). Like
ByzFL and Flower they ignore ``num_samples``: a weight per client would let a Byzantine client claim
any number of rows.
"""

from __future__ import annotations

import torch

from ..base import AggregationInfo, State
from .common import RobustRule, mean_of_nearest, median_of_sorted, sort_columns


class CoordinateMedian(RobustRule):
    """Coordinate-wise median (Yin et al. 2018): numpy's median, the mean of the two middle values for even K.

    ``f`` only sets the tolerance check (n > 2f, the median's breakdown point); the rule itself has
    no parameter. Same numbers as ByzFL's ``Median`` and Flower's ``FedMedian``; torch.median would
    give the lower middle value instead.
    """

    name = "median"

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        self.tolerated_f(models, info)
        return median_of_sorted(sort_columns(models)), state


class TrimmedMean(RobustRule):
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop the f largest and f smallest values, average n - 2f.

    Needs n > 2f. The trimmed values are removed by a sort, not subtracted from the sum: an attacker's
    1e30 would otherwise swamp the float32 sum it is subtracted from. ByzFL's ``TrMean`` gives the
    same numbers; Flower's ``FedTrimmedAvg`` cuts a fraction (``beta``) instead of a count.
    """

    name = "trimmed_mean"

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        f = self.tolerated_f(models, info)
        if f == 0:
            return models.mean(dim=0), state
        return sort_columns(models)[f : len(models) - f].mean(dim=0), state


class MeaMed(RobustRule):
    """Mean around the median (Xie et al. 2018): per coordinate, the mean of the n - f values nearest the median.

    Needs n > 2f (as ByzFL's ``Meamed`` checks). Same numbers as ByzFL's ``Meamed``, also where equal values
    sit at one end of a column (crafted Byzantine rows are identical): ``mean_of_nearest`` keeps the
    n - f nearest values, not a run that ends at the farthest one.
    """

    name = "meamed"

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        f = self.tolerated_f(models, info)
        center = median_of_sorted(sort_columns(models))
        return mean_of_nearest(models, center, len(models) - f), state
