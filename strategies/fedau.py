"""FedAU (Wang & Ji, ICLR 2024): adaptive weights for unknown participation statistics.

Each client's weight estimates 1/p_n online as the mean of the intervals between its
participations, so the aggregate is unbiased without knowing p_n. Read from the authors' code
(IBM/fedau, ``main.py``, ``-weighting adaptive``):

- client n keeps ``count_n`` (rounds since it last took part) and its recorded intervals;
- when n takes part, its weight is the mean of its recorded intervals (1 when none yet), computed
  *before* this round is recorded; then ``count_n + 1`` is recorded and ``count_n`` reset;
- when n is absent, ``count_n += 1``; on reaching the cutoff K, K is recorded and ``count_n`` reset;
- ``x <- x + lr_g * (1/N) * sum over participants of w_n (local_n - x)``.

The intervals are kept as a sum and a count (their mean is all that is used), so the state is three
``[N]`` tensors.
"""

from __future__ import annotations

import torch

from sim.errors import ConfigError

from .all_clients import all_clients_step
from .base import AggregationInfo, State, Strategy, check_positive


class FedAU(Strategy):
    name = "fedau"

    def __init__(self, cutoff: int | None = None, server_lr: float = 1.0):
        if cutoff is not None and (isinstance(cutoff, bool) or not isinstance(cutoff, int) or cutoff < 1):
            raise ConfigError("strategy.cutoff", cutoff, "null (no cutoff) or an integer K >= 1")
        self.cutoff = cutoff
        self.server_lr = check_positive(self.name, "server_lr", server_lr)

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        zeros = lambda: torch.zeros(num_clients, dtype=torch.float64)  # noqa: E731
        return {"count": zeros(), "interval_sum": zeros(), "interval_num": zeros()}

    @staticmethod
    def weights(state: State) -> torch.Tensor:
        """Every client's current weight (1 where no interval is recorded yet)."""
        num = state["interval_num"]
        return torch.where(num > 0, state["interval_sum"] / num.clamp(min=1), torch.ones_like(num))

    def _advance(self, state: State, present: torch.Tensor) -> State:
        count = state["count"].clone()
        interval_sum, interval_num = state["interval_sum"].clone(), state["interval_num"].clone()
        absent = torch.ones_like(count, dtype=torch.bool)
        absent[present] = False
        # participants record the interval that ends now
        interval_sum[present] += count[present] + 1
        interval_num[present] += 1
        count[present] = 0
        count[absent] += 1
        if self.cutoff is not None:
            capped = absent & (count >= self.cutoff)
            interval_sum[capped] += self.cutoff
            interval_num[capped] += 1
            count[capped] = 0
        return {"count": count, "interval_sum": interval_sum, "interval_num": interval_num}

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        if not state:
            state = self.init_state(info.reference, info.num_clients)
        w = self.weights(state)[info.client_ids]  # before this round is recorded
        new = all_clients_step(models, info, w, self.server_lr)
        return new, self._advance(state, info.client_ids)

    def on_empty_round(self, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        if not state:
            state = self.init_state(info.reference, info.num_clients)
        return info.reference, self._advance(state, info.client_ids)

    def round_metrics(self, state: State, probabilities: torch.Tensor | None) -> dict[str, float]:
        """Error of the estimated weights against 1/p_n, over clients with a recorded interval."""
        if probabilities is None or not state:
            return {}
        seen = state["interval_num"] > 0
        if not bool(seen.any()):
            return {"fedau_weight_rel_error": float("nan"), "fedau_clients_estimated": 0}
        target = 1.0 / probabilities.to(torch.float64)
        rel = ((self.weights(state) - target).abs() / target)[seen]
        return {"fedau_weight_rel_error": float(rel.mean()), "fedau_clients_estimated": int(seen.sum())}
