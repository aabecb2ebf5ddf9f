"""Differential privacy around any strategy: Flower's four central-DP wrappers and its local-DP mod.

Central DP (McMahan et al. 2018, DP-FedAvg): each participant's update ``model - reference`` is
clipped to L2 norm ``C``, the wrapped strategy aggregates ``reference + clipped update``, and
Gaussian noise of standard deviation ``noise_multiplier * C / m`` is added to what it returns, ``m``
the number of clients sampled per round (Flower's ``compute_stdv``, noise on every coordinate of the
aggregate). ``side=server`` clips on the server (Flower's ``...ServerSide...``), ``side=client`` on
the clients (``...ClientSide...`` with ``fixedclipping_mod``): in a simulation both give the same
numbers; they differ in who sees an unclipped update.

Adaptive clipping (Andrew et al. 2021) moves ``C`` toward a quantile of the update norms each round:
``C <- C exp(-clip_lr (b - target_quantile))`` with ``b`` the noisy fraction
``(count + N(0, sigma_b^2)) / K``, and the update noise uses ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``
so that noise on the count and on the update together spend ``z`` (``sigma_b`` defaults to m / 20).
``variant`` picks whose reading:

- ``andrew`` (default): the paper's Algorithm 1. ``count`` is the number of *unclipped* updates
  (``||update|| <= C``), so ``C`` settles where a ``target_quantile`` fraction is unclipped, and the
  update noise is scaled by the ``C`` that clipped this round.
- ``flower``: flwr 1.42's ``DifferentialPrivacy{Server,Client}SideAdaptiveClipping`` number for number.
  ``count`` is the number of *clipped* updates (``norm_bit``), so the same rule moves ``C`` away from
  the quantile (all clipped: ``C`` shrinks further), and the noise is scaled by the updated ``C``.
  Flower's older ``DPFedAvgAdaptive`` counted unclipped updates, as the paper does.

Local DP (Flower's ``LocalDpMod``): each client clips its update to ``C`` and adds Gaussian noise of
standard deviation ``sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`` to its model before sending
it (the classical Gaussian mechanism); the wrapped strategy aggregates the noisy models.

Noise comes from named streams of the run's seed, ``("dp", "noise", round)``, ``("dp", "count",
round)`` and ``("dp", "local", round, client)``, so a run and its resume draw the same noise. The
adaptive ``C`` and the accountant's running RDP live in the strategy state (``dp_*`` keys beside the
wrapped strategy's own) and so travel in checkpoints. ``round_metrics`` reports ``dp_epsilon`` and
``dp_delta`` after each round (sim/privacy.py: Opacus's analysis for Poisson sampling, Wang et al.'s for
fixed-size sampling; ``Accounting`` says which and against what sensitivity) and ``dp_clip_norm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sim.privacy import NEIGHBOURS, POISSON, WITHOUT_REPLACEMENT, epsilon, orders_for, rdp_per_round
from sim.seeding import torch_generator

from ..base import AggregationInfo, State, Strategy

if TYPE_CHECKING:
    from sim.training import ClientCorrection

VARIANTS = ("andrew", "flower")
ANALYSES = {
    POISSON: "Poisson-subsampled Gaussian (Opacus RDP)",
    WITHOUT_REPLACEMENT: "Gaussian under sampling without replacement (Wang et al. 2019, as dp_accounting)",
}
SIDES = ("server", "client")


@dataclass(frozen=True)
class Accounting:
    """What the accountant composes each round (docs/privacy.md, "The accountant").

    ``noise_multiplier`` is the wrapper's own z (central: noise std z C / m; local: std / C);
    ``sensitivity`` is the released quantity's L2 sensitivity in the same unit (central: C / m; local:
    C) under the ``neighbours`` relation, so the accountant sees ``noise_multiplier / sensitivity``;
    ``sensitivity = inf`` means no finite bound is proven (epsilon inf).
    """

    sample_rate: float
    noise_multiplier: float
    delta: float
    sampling: str = POISSON
    sensitivity: float = 1.0
    neighbours: str = NEIGHBOURS[POISSON]
    caveat: str = ""  # what the epsilon does not cover (a rule other than the uniform mean)

    @property
    def accountant_multiplier(self) -> float:
        """Noise standard deviation over the L2 sensitivity: the multiplier the RDP analysis takes."""
        return self.noise_multiplier / self.sensitivity

    def describe(self) -> dict[str, float | str]:
        """The accounting's assumptions, for summary.json."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
            "accountant_noise_multiplier": self.accountant_multiplier,
            "analysis": ANALYSES[self.sampling] if self.sample_rate < 1 else "Gaussian mechanism, no amplification",
            "sample_rate": self.sample_rate,
            "neighbouring": self.neighbours,
            "delta": self.delta,
            **({"caveat": self.caveat} if self.caveat else {}),
        }


def clip_updates(models: torch.Tensor, reference: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reference + update * min(1, clip / ||update||)`` per row, ``[K]`` True where a row was clipped)``.

    Flower's ``FlatClip``: one norm over all parameters; an update of norm 0 is left as it is.
    """
    updates = models.to(torch.float64) - reference.to(torch.float64)
    norms = updates.norm(dim=1)
    scale = torch.where(norms > clip, clip / norms.clamp_min(1e-300), torch.ones_like(norms))
    clipped = reference.to(torch.float64) + updates * scale[:, None]
    return clipped.to(models.dtype), norms > clip


def gaussian(shape: int | tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    """Drawn where the generator is (the CPU: the same noise whatever device the models are on)."""
    return std * torch.randn(shape, generator=generator, dtype=torch.float64, device=generator.device)


class _DPWrapper(Strategy):
    """Delegates everything but ``aggregate`` to the wrapped strategy; keeps the accountant's RDP."""

    def __init__(self, inner: Strategy, label: str, seed: int, accounting: Accounting):
        self.inner = inner
        self.name = f"{inner.name}+{label}"
        self.requires = inner.requires  # type: ignore[misc]  # the wrapped rule's needs are the run's
        self.needs_validation = inner.needs_validation  # type: ignore[misc]
        self.offline_only = inner.offline_only  # type: ignore[misc]
        self.client_side = inner.client_side  # type: ignore[misc]
        self.needs_server = inner.needs_server  # type: ignore[misc]
        self.gossip_only = inner.gossip_only  # type: ignore[misc]
        self.seed = seed
        self.accounting = accounting
        self.orders = orders_for(accounting.sampling)
        self._rdp_per_round = rdp_per_round(
            accounting.sample_rate, accounting.accountant_multiplier, accounting.sampling, self.orders
        )

    def _split(self, state: State) -> tuple[State, State]:
        inner = {k: v for k, v in state.items() if not k.startswith("dp_")}
        return inner, {k: v for k, v in state.items() if k.startswith("dp_")}

    def _own_state(self) -> State:
        return {"dp_rounds": 0, "dp_rdp": torch.zeros(len(self.orders), dtype=torch.float64)}

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        return {**self.inner.init_state(params, num_clients), **self._own_state()}

    def _account(self, own: State) -> State:
        """One more release: RDP adds up over rounds (an empty round counts, as under Poisson sampling)."""
        per_round = torch.tensor(self._rdp_per_round, dtype=torch.float64)
        return {**own, "dp_rounds": int(own["dp_rounds"]) + 1, "dp_rdp": own["dp_rdp"] + per_round}

    def _with_defaults(self, state: State) -> tuple[State, State]:
        inner, own = self._split(state)
        own = {**self._own_state(), **own}
        if own["dp_rdp"].shape != (len(self.orders),):  # a checkpoint from another order grid: every round
            rounds = int(own["dp_rounds"])  # adds the same RDP, so the total is rounds times one round's
            own["dp_rdp"] = torch.zeros(len(self.orders), dtype=torch.float64)
            if rounds:
                own["dp_rdp"] = rounds * torch.tensor(self._rdp_per_round, dtype=torch.float64)
        return inner, own

    def client_correction(
        self, client_ids: torch.Tensor, start: torch.Tensor, state: State | None
    ) -> ClientCorrection | None:
        """The wrapped rule's term (FedProx, SCAFFOLD): DP acts on what leaves the clients, not on training."""
        return self.inner.client_correction(client_ids, start, None if state is None else self._split(state)[0])

    def check_tolerance(self, n: int, num_byzantine: int = 0) -> None:
        self.inner.check_tolerance(n, num_byzantine)

    def on_empty_round(self, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        inner, own = self._with_defaults(state)
        params, inner = self.inner.on_empty_round(info, inner)
        return params, {**inner, **self._account(own)}

    def round_metrics(self, state: State, probabilities: torch.Tensor | None) -> dict[str, float]:
        inner, own = self._with_defaults(state)
        rounds = int(own["dp_rounds"])
        spent = epsilon([float(v) for v in own["dp_rdp"]], self.accounting.delta, self.orders) if rounds else 0.0
        return {
            **self.inner.round_metrics(inner, probabilities),
            "dp_epsilon": spent,
            "dp_delta": self.accounting.delta,
        }


class CentralDP(_DPWrapper):
    """Clip every update, aggregate with the wrapped strategy, add Gaussian noise to the result."""

    def __init__(
        self,
        inner: Strategy,
        *,
        label: str,
        seed: int,
        accounting: Accounting,
        clipping_norm: float,
        num_sampled_clients: float,
        side: str = "server",
        adaptive: bool = False,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
        clipped_count_stddev: float = 0.0,
        update_noise_multiplier: float | None = None,
        variant: str = "andrew",
    ):
        super().__init__(inner, label, seed, accounting)
        self.clipping_norm = clipping_norm
        self.num_sampled_clients = num_sampled_clients
        self.side = side
        self.adaptive = adaptive
        self.target_quantile = target_quantile
        self.clip_lr = clip_lr
        self.clipped_count_stddev = clipped_count_stddev
        # adaptive clipping spends part of z on the count; fixed clipping puts all of it on the update
        self.update_noise_multiplier = (
            accounting.noise_multiplier if update_noise_multiplier is None else update_noise_multiplier
        )
        self.variant = variant

    def _own_state(self) -> State:
        return {**super()._own_state(), "dp_clip_norm": float(self.clipping_norm)}

    def noise_std(self, clip: float) -> float:
        """Flower's ``compute_stdv``: ``z * C / m``."""
        return self.update_noise_multiplier * clip / self.num_sampled_clients

    def next_clip(self, clip: float, clipped: torch.Tensor, round_: int) -> float:
        """The geometric update of Andrew et al. (or Flower's reading of it) from this round's norm bits."""
        bits = clipped if self.variant == "flower" else ~clipped
        noise = gaussian((), self.clipped_count_stddev, torch_generator(self.seed, "dp", "count", round_))
        fraction = (float(bits.sum()) + float(noise)) / len(clipped)
        return clip * math.exp(-self.clip_lr * (fraction - self.target_quantile))

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        inner, own = self._with_defaults(state)
        clip = float(own["dp_clip_norm"])
        clipped_models, clipped = clip_updates(models, info.reference, clip)
        new_clip = self.next_clip(clip, clipped, info.round) if self.adaptive else clip
        params, inner = self.inner.aggregate(clipped_models, info, inner)
        std = self.noise_std(new_clip if self.variant == "flower" else clip)
        if std > 0:
            noise = gaussian(params.shape, std, torch_generator(self.seed, "dp", "noise", info.round))
            params = (params.to(torch.float64) + noise.to(params.device)).to(params.dtype)
        return params, {**inner, **self._account({**own, "dp_clip_norm": new_clip})}

    def on_empty_round(self, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        """Nobody took part: the wrapped rule's model plus the same noise as any round (DP-FedAvg adds it to a
        sum of zero updates). Without it an empty round would release the model exactly, and Poisson
        sampling's analysis, which covers the round that sampled only the one client, would not hold."""
        params, state = super().on_empty_round(info, state)
        std = self.noise_std(float(self._with_defaults(state)[1]["dp_clip_norm"]))
        if std > 0:
            noise = gaussian(params.shape, std, torch_generator(self.seed, "dp", "noise", info.round))
            params = (params.to(torch.float64) + noise.to(params.device)).to(params.dtype)
        return params, state

    def round_metrics(self, state: State, probabilities: torch.Tensor | None) -> dict[str, float]:
        _, own = self._with_defaults(state)
        return {**super().round_metrics(state, probabilities), "dp_clip_norm": float(own["dp_clip_norm"])}


class LocalDP(_DPWrapper):
    """Every client clips its update and noises its model before the wrapped strategy sees it."""

    def __init__(
        self, inner: Strategy, *, label: str, seed: int, accounting: Accounting, clipping_norm: float, std: float
    ):
        super().__init__(inner, label, seed, accounting)
        self.clipping_norm = clipping_norm
        self.std = std

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        inner, own = self._with_defaults(state)
        clipped, _ = clip_updates(models, info.reference, self.clipping_norm)
        if self.std > 0:
            noise = torch.stack(
                [
                    gaussian(models.shape[1], self.std, torch_generator(self.seed, "dp", "local", info.round, int(c)))
                    for c in info.client_ids
                ]
            ).to(models.device)
            clipped = (clipped.to(torch.float64) + noise).to(models.dtype)
        params, inner = self.inner.aggregate(clipped, info, inner)
        return params, {**inner, **self._account(own)}

    def round_metrics(self, state: State, probabilities: torch.Tensor | None) -> dict[str, float]:
        return {**super().round_metrics(state, probabilities), "dp_clip_norm": float(self.clipping_norm)}
