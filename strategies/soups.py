"""Model soups and other weight-space merges of models that share an init.

- ``uniform_soup`` (Wortsman et al. 2022): the plain average of the models.
- ``greedy_soup`` (Wortsman et al. 2022, ``mlfoundations/model-soups``): score every candidate on the
  server-held validation split, sort best first (ties keep the row order), start the soup with the
  best and add each next candidate if the uniform average of soup + candidate scores at least as
  well (``>=``; ``strict=true`` uses ``>`` as the authors' ``main.py`` does). The soup is the uniform
  average of the kept models.
- ``fisher_merge`` (Matena & Raffel 2022, as ``mmatena/model_merging``'s ``merging.py`` computes it):
  ``theta = sum_i c_i F'_i theta_i / sum_i c_i F'_i`` elementwise over the parameter entries, ``F_i``
  the diagonal Fisher of model i (see ``sim/fisher.py``) and ``c_i = l_i`` (``weighting``):
  - ``normalize_fishers=true`` (the reference's default) divides ``c_i`` by the L2 norm of model i's
    whole Fisher (``sqrt(sum F_i^2)`` over every parameter entry), so a model whose Fisher is large
    everywhere does not outweigh the rest; a Fisher that is 0 everywhere is left as it is.
  - ``F'_i = max(F_i, fisher_floor)`` for the *target* model only when ``favor_target_model=true``
    (the reference's default), for every model when false. Where no model has Fisher, the merge then
    keeps the target's value (favoured) or the ``c_i``-weighted mean (not favoured).
  The target is ``info.self_index`` when the caller sets it (gossip: the receiving node's own model),
  else row 0: the first checkpoint in ``python -m sim.merge`` (the reference's convention: the first
  model is the target), the first received model (lowest client id) on an FL server. Which model is
  the target only matters at entries where some model's Fisher is below the floor;
  ``favor_target_model=false`` makes the rule symmetric. Buffers (no Fisher, e.g. BatchNorm
  statistics) are averaged with the ``l_i``.
- ``interpolate`` (WiSE-FT, Wortsman et al. 2022): ``(1 - alpha) base + alpha mean(models)``, base the
  reference model (the FL global model, or in gossip the node's own model).
- ``sparse_soup`` (Zimmer, Spiegel, Pokutta, "Sparse Model Soups", ICLR 2024): models retrained from
  one pruned model share its mask; their average is taken and the mask kept. Reading implemented:
  the mask is a set of *parameter* entries (buffers are averaged, never masked) forced to exactly
  0.0 in the soup; ``mask=intersection`` zeroes the entries that are exactly zero in all models
  (the shared mask when every model kept it; the soup is then as sparse as the common mask),
  ``mask=first`` zeroes the entries that are zero in the first model (its mask is the shared one),
  ``mask=union`` zeroes entries zero in any model (only the common support survives).
  It is a rule for ``python -m sim.merge`` only: gossipsoup's local training does not keep pruned
  weights at zero, so in an FL or gossip run no entry stays zero through a round and the rule would
  be a plain average. ``SparseSoup.offline_only`` says why, and runs refuse the rule before any work.
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
            raise ConfigError(
                "strategy.name",
                self.name,
                "a strategy that needs no validation split",
                "greedy_soup scores every candidate on a server-held validation split; set dataset.val_fraction > 0.",
            )
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

    def __init__(
        self,
        weighting: str = "uniform",
        fisher_floor: float = 1e-6,
        normalize_fishers: bool = True,
        favor_target_model: bool = True,
    ):
        self.weighting = _check_weighting(weighting)
        self.fisher_floor = check_positive(self.name, "fisher_floor", fisher_floor)
        self.normalize_fishers = _check_bool("normalize_fishers", normalize_fishers)
        self.favor_target_model = _check_bool("favor_target_model", favor_target_model)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        fisher = info.extras.get("fisher")
        if fisher is None:
            raise RunError(
                "fisher_merge needs each client's diagonal Fisher in info.extras['fisher'], "
                "but the engine did not provide Fisher diagonals for this round."
            )
        if fisher.shape != models.shape:
            raise RunError(
                f"fisher_merge got Fisher diagonals of shape {tuple(fisher.shape)} for models of "
                f"shape {tuple(models.shape)}; they must match."
            )
        lam = client_weights(self.weighting, info, len(models)).to(torch.float64)
        params = info.layout.trainable_mask()
        x, f = models.to(torch.float64), fisher.to(torch.float64)[:, params]  # [K, P], [K, p]
        coeff = lam / fisher_norms(f) if self.normalize_fishers else lam
        floored = torch.ones(len(models), dtype=torch.bool)
        if self.favor_target_model:  # only the target's Fisher is floored; the donors' are used as they are
            floored[:] = False
            floored[0 if info.self_index is None else info.self_index] = True
        f = torch.where(floored[:, None], f.clamp_min(self.fisher_floor), f)
        weights = coeff[:, None] * f
        merged = lam @ x / lam.sum()  # buffers have no Fisher: their l_i-weighted mean
        merged[params] = (weights * x[:, params]).sum(0) / weights.sum(0)
        return merged.to(models.dtype), state


def fisher_norms(fisher: torch.Tensor) -> torch.Tensor:
    """Each model's Fisher L2 norm over all its entries (``_l2_norm_of_fisher``); 0 becomes 1 so that an
    all-zero Fisher (a saturated model) leaves its coefficient alone instead of dividing by zero."""
    norms = fisher.square().sum(1).sqrt()
    return torch.where(norms > 0, norms, torch.ones_like(norms))


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
    offline_only = (
        "sparse_soup merges checkpoints that share a pruning mask, but local training here does not "
        "keep pruned weights at zero: after one round no entry is zero in every model and the rule is "
        "a plain average. Merge masked checkpoints offline with `python -m sim.merge CHECKPOINTS "
        "--method sparse_soup`, or use uniform_soup / fedavg as the run's rule."
    )

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
