"""Rules that clip each input's distance to a centre: centered clipping (FL) and ClippedGossip (gossip)."""

from __future__ import annotations

import torch

from sim.errors import ConfigError
from sim.validation import choice, integer, number

from ..base import AggregationInfo, State
from ..gossip import merge_weights
from .common import RobustRule, clip_scales, zero_nonfinite_rows

CC_CENTER = ("last_update", "last", "reference")
CLIPPED_GOSSIP_WEIGHTS = ("mixing", "uniform")


class CenteredClipping(RobustRule):
    """Centered clipping (Karimireddy, He & Jaggi 2021): ``L`` times ``v <- v + mean_k clip(x_k - v, tau)``.

    The paper clips momenta (gradients, in the FL version of Karimireddy, He & Jaggi 2022 the clients'
    updates) around the previous aggregate of the same kind. Here the stack holds models, so the
    ``center`` option says what "previous" means:

    - ``last_update`` (default): around ``info.reference`` plus the previous aggregate *update*
      (previous output minus the reference it was computed for), kept in the state. In FL that is
      the global model plus the last round's aggregate step: ByzFL's ``CenteredClipping`` object kept
      across rounds in its gradient path (``update_model_with_gradients``), called on the clients'
      updates, with momentum 0. The first call starts from the zero update, as ByzFL's ``m = 0``.
    - ``last``: around the previous output *model* (ByzFL's weights path). In FL the previous output
      is the global model the round starts from, so every round clips around a zero update: static
      clipping of each update around the global model, not CC. Kept for gossip and comparisons.
    - ``reference``: around ``info.reference`` every call (no memory).

    The state (``center``: the last update or model, empty before the first call) is strategy state,
    saved in checkpoints and reloaded on resume. Defaults are ByzFL's (tau = 100, L = 1). Karimireddy et
    al. need f / n below a constant; the check asks n > 2f, as for the other rules, since ByzFL states none.
    """

    name = "centered_clipping"

    def __init__(self, f: int | None = None, tau: float = 100.0, iterations: int = 1, center: str = "last_update"):
        super().__init__(f)
        self.tau = number("strategy.tau", tau, 0, lo_open=True, allowed="a finite number > 0 (the clipping radius)")
        self.iterations = integer("strategy.iterations", iterations, 1)
        self.center = choice("strategy.center", center, CC_CENTER)

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        return {"center": torch.empty(0)}  # empty: not yet set, the first call starts from info.reference

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        self.tolerated_f(models, info)
        reference = info.reference.to(models.dtype)
        last = state.get("center")
        if self.center == "reference" or last is None or last.numel() != models.shape[1]:
            v = reference.clone()
        elif self.center == "last_update":
            v = reference + last.to(device=models.device, dtype=models.dtype)
        else:
            v = last.to(device=models.device, dtype=models.dtype).clone()
        for _ in range(self.iterations):  # v + mean_k clip(x_k - v) as one product, not a clipped copy of the stack
            deltas = zero_nonfinite_rows(models - v)
            v = v + (clip_scales(deltas, self.tau) / len(models)) @ deltas
        if self.center == "reference":
            return v, state
        return v, {**state, "center": (v - reference) if self.center == "last_update" else v.clone()}


class ClippedGossip(RobustRule):
    """ClippedGossip (He, Karimireddy & Jaggi 2022), a gossip merge rule.

    ``x_i <- x_i + sum_j W_ij clip(x_j - x_i, tau_i)``: the receiver's own model plus its
    neighbours' differences, each clipped to radius tau_i, weighted by the mixing row
    (``weights=mixing``, ``info.mixing_weights``, normalised to sum 1) or equally (``uniform``).

    ``tau = null`` is the adaptive radius of the authors' code (epfml/byzantine-robust-decentralized-
    optimizer, ``SelfCenteredClipping``): the second-largest neighbour distance, so the farthest
    neighbour is clipped to the next one's distance. Here that is generalised to the (f + 1)-th
    largest, clipping the f farthest neighbours (f = 1 is the authors' rule; f = 0 clips nothing and
    is plain gossip averaging); with f or more neighbours missing, the smallest distance. A number
    fixes the radius (the paper's analysis uses a fixed tau_i).

    Needs a receiver: an FL server has no own model among the inputs, and with the global model as
    centre the rule would be one step of centered clipping, so FL runs are refused
    (``gossip_only``). Tolerance: at most n - 2 Byzantine among n (at least one honest neighbour).
    """

    name = "clipped_gossip"
    limit = "n >= f + 2"
    gossip_only = (
        "ClippedGossip clips each neighbour's model around the receiving node's own model, which an FL "
        "server does not have (around the global model it is one step of centered_clipping: use that). "
        "Run it with mode=gossip."
    )

    def __init__(self, f: int | None = None, tau: float | None = None, weights: str = "mixing"):
        super().__init__(f)
        self.tau = (
            None
            if tau is None
            else number("strategy.tau", tau, 0, lo_open=True, allowed="null (adaptive) or a finite number > 0")
        )
        self.weights = choice("strategy.weights", weights, CLIPPED_GOSSIP_WEIGHTS)

    def max_tolerated(self, n: int) -> int:
        return max(n - 2, 0)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        if info.self_index is None:
            raise ConfigError("strategy", self.name, "a gossip merge rule (mode=gossip)", self.gossip_only)
        f = self.tolerated_f(models, info)
        own = models[info.self_index]
        raw = models - own
        if len(models) == 1:
            return own.clone(), state
        tau = self.tau if self.tau is not None else adaptive_radius(raw, info.self_index, f)
        deltas = zero_nonfinite_rows(raw)
        weights = merge_weights(self.weights, 0.0, info, len(models)).to(models.dtype)
        return own + (weights / weights.sum() * clip_scales(deltas, tau)) @ deltas, state


def adaptive_radius(deltas: torch.Tensor, self_index: int, f: int) -> torch.Tensor:
    """The (f + 1)-th largest neighbour distance (the smallest when there are f neighbours or fewer)."""
    norms = torch.linalg.vector_norm(deltas, dim=1)
    others = torch.cat([norms[:self_index], norms[self_index + 1 :]])
    ordered = torch.sort(others, descending=True).values
    return ordered[min(f, len(ordered) - 1)]
