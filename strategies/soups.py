"""Model soups and other weight-space merges of models that share an init.

- ``uniform_soup`` (Wortsman et al. 2022): the plain average of the models.
- ``greedy_soup`` (Wortsman et al. 2022, ``mlfoundations/model-soups``): score every candidate on the
  server-held validation split, sort best first (ties keep the row order), start the soup with the
  best and add each next candidate if the uniform average of soup + candidate scores at least as
  well (``>=``; ``strict=true`` uses ``>`` as the authors' ``main.py`` does). The soup is the uniform
  average of the kept models.
- ``fisher_merge`` (Matena & Raffel 2022): ``theta = sum_i l_i F_i theta_i / sum_i l_i F_i``
  elementwise, ``F_i`` the diagonal Fisher of model i (see ``sim/fisher.py``) floored at
  ``fisher_floor`` so that entries where every Fisher is 0 (buffers) fall back to the average.
- ``interpolate`` (WiSE-FT, Wortsman et al. 2022): ``(1 - alpha) base + alpha mean(models)``, base the
  reference model (the FL global model, or in gossip the node's own model).
- ``sparse_soup`` (Zimmer, Spiegel, Pokutta, "Sparse Model Soups", ICLR 2024): models retrained from
  one pruned model share its mask; their average is taken and the mask kept. Reading implemented:
  the mask is a set of *parameter* entries (buffers are averaged, never masked) forced to exactly
  0.0 in the soup; ``mask=intersection`` zeroes the entries that are exactly zero in all models
  (the shared mask when every model kept it; the soup is then as sparse as the common mask),
  ``mask=first`` zeroes the entries that are zero in the first model (its mask is the shared one),
  ``mask=union`` zeroes entries zero in any model (only the common support survives).
"""

from __future__ import annotations

import math

import torch

from sim.errors import ConfigError, RunError

from .base import AggregationInfo, State, Strategy, check_positive, check_unit_interval, weighted_average
from .fedavg import WEIGHTINGS, client_weights

SPARSE_MASKS = ("intersection", "first", "union")
INTERPOLATE_BASES = ("reference",)


def _check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ConfigError("strategy.weighting", weighting, f"one of {', '.join(WEIGHTINGS)}")
    return weighting


def _check_bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"strategy.{field}", value, "true or false")
    return value


def uniform_average(models: torch.Tensor) -> torch.Tensor:
    return weighted_average(models, torch.ones(len(models), dtype=torch.float64))


class UniformSoup(Strategy):
    name = "uniform_soup"

    def __init__(self, weighting: str = "uniform"):
        self.weighting = _check_weighting(weighting)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        return weighted_average(models, client_weights(self.weighting, info, len(models))), state


class GreedySoup(Strategy):
    """Greedy soup; ``state["kept"]`` holds the rows (``kept_clients`` the client ids) of the last soup."""

    name = "greedy_soup"
    needs_validation = True

    def __init__(self, strict: bool = False):
        self.strict = _check_bool("strict", strict)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        if info.validate is None:
            raise ConfigError("strategy.name", self.name, "a strategy that needs no validation split",
                              "greedy_soup scores every candidate on a server-held validation split; "
                              "set dataset.val_fraction > 0.")
        k = len(models)
        scores = [float(info.validate(models[i])) for i in range(k)]
        # NaN scores sort last; sorted() is stable, so equal scores keep the row order
        order = sorted(range(k), key=lambda i: -scores[i] if not math.isnan(scores[i]) else math.inf)
        kept = [order[0]]
        soup_sum = models[order[0]].to(torch.float64).clone()
        soup, best = models[order[0]].clone(), scores[order[0]]
        for i in order[1:]:
            candidate_sum = soup_sum + models[i].to(torch.float64)
            candidate = (candidate_sum / (len(kept) + 1)).to(models.dtype)
            score = float(info.validate(candidate))
            if score > best or (not self.strict and score == best):
                kept.append(i)
                soup_sum, soup, best = candidate_sum, candidate, score
        new_state = dict(state)
        new_state["kept"] = torch.tensor(kept, dtype=torch.long)
        new_state["kept_clients"] = info.client_ids[new_state["kept"]].to(torch.long)
        new_state["score"] = best
        return soup, new_state

    def round_metrics(self, state: State, probabilities: torch.Tensor | None) -> dict[str, float]:
        if "kept" not in state:
            return {}
        return {"greedy_kept": float(len(state["kept"])), "greedy_val": float(state["score"])}


class FisherMerge(Strategy):
    name = "fisher_merge"
    requires = frozenset({"fisher"})

    def __init__(self, weighting: str = "uniform", fisher_floor: float = 1e-6):
        self.weighting = _check_weighting(weighting)
        self.fisher_floor = check_positive(self.name, "fisher_floor", fisher_floor)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        fisher = info.extras.get("fisher")
        if fisher is None:
            raise RunError("fisher_merge needs each client's diagonal Fisher in info.extras['fisher'], "
                           "but the engine did not provide Fisher diagonals for this round.")
        if fisher.shape != models.shape:
            raise RunError(f"fisher_merge got Fisher diagonals of shape {tuple(fisher.shape)} for models of "
                           f"shape {tuple(models.shape)}; they must match.")
        lam = client_weights(self.weighting, info, len(models)).to(torch.float64)
        weights = lam[:, None] * fisher.to(torch.float64).clamp_min(self.fisher_floor)  # [K, P]
        merged = (weights * models.to(torch.float64)).sum(0) / weights.sum(0)
        return merged.to(models.dtype), state


class Interpolate(Strategy):
    """WiSE-FT: ``(1 - alpha) base + alpha merge``; ``alpha=1`` is the uniform soup, 0 keeps the base."""

    name = "interpolate"

    def __init__(self, alpha: float = 0.5, base: str = "reference"):
        self.alpha = check_unit_interval(self.name, "alpha", alpha, closed_right=True)
        if base not in INTERPOLATE_BASES:
            raise ConfigError("strategy.base", base, f"one of {', '.join(INTERPOLATE_BASES)}")
        self.base = base

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        merged = uniform_average(models)
        return (1 - self.alpha) * info.reference.to(merged.dtype) + self.alpha * merged, state


class SparseSoup(Strategy):
    name = "sparse_soup"

    def __init__(self, mask: str = "intersection", weighting: str = "uniform"):
        if mask not in SPARSE_MASKS:
            raise ConfigError("strategy.mask", mask, f"one of {', '.join(SPARSE_MASKS)}")
        self.mask = mask
        self.weighting = _check_weighting(weighting)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        zero = models == 0
        if self.mask == "intersection":
            masked = zero.all(0)
        elif self.mask == "first":
            masked = zero[0]
        else:
            masked = zero.any(0)
        masked = masked & info.layout.trainable_mask()  # buffers are statistics, never pruned
        avg = weighted_average(models, client_weights(self.weighting, info, len(models)))
        return avg.masked_fill(masked, 0.0), state
