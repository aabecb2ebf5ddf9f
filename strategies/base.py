"""The strategy interface shared by FL servers, gossip nodes and checkpoint merging.

A strategy turns ``models [K, P]`` plus an :class:`AggregationInfo` into one model ``[P]``. Memory
it keeps across rounds (server-optimizer moments, FedAU's participation intervals) lives in a
``state`` dict of tensors that the engine holds and passes back, so state can be saved, reloaded and
kept per gossip node without the strategy knowing where it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sim.errors import ConfigError
from sim.layout import Layout
from sim.validation import number

if TYPE_CHECKING:
    from sim.backends.base import Backend, ClientBatch
    from sim.training import ClientCorrection, TrainConfig

State = dict[str, Any]


@dataclass
class AggregationInfo:
    """Everything a rule may look at besides the models themselves."""

    client_ids: torch.Tensor  # [K] int64 ids of the models' senders
    num_samples: torch.Tensor  # [K] training rows behind each model
    round: int
    num_clients: int  # N, all clients that exist (FedAU and fedavg_all divide by it)
    layout: Layout
    reference: torch.Tensor  # [P] FL: the current global model; gossip: the receiving node's own model
    self_index: int | None = None  # gossip: row of ``models`` that is the receiver's own model
    validate: Callable[[torch.Tensor], float] | None = None  # held-out score of a flat model (higher is better)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-client extras, e.g. "fisher": [K, P]
    participation_prob: torch.Tensor | None = None  # [K] known p_n when the participation model knows it
    mixing_weights: torch.Tensor | None = None  # gossip: [K] the topology's mixing weights for these models
    num_byzantine: int = 0  # how many of the K models may be Byzantine (robust rules with f=null read it)
    num_steps: torch.Tensor | None = None  # [K] local SGD steps behind each model (FedNova, SCAFFOLD); None: unknown
    train: TrainConfig | None = None  # the clients' local training config (its lr, momentum); None: unknown


class Strategy:
    """Base class: override ``aggregate`` (and ``init_state`` when the rule keeps memory)."""

    #: the run's label in reports; a class default that an instance may refine (fedadam, ties)
    name: str = "strategy"
    #: per-client extras the engine must compute and pass in ``info.extras`` (e.g. {"fisher"})
    requires: ClassVar[frozenset[str]] = frozenset()
    #: True when the rule cannot work without ``info.validate`` (greedy soups)
    needs_validation: ClassVar[bool] = False
    #: why FL and gossip servers must refuse the rule (only offline merging of checkpoints applies it);
    #: None for every rule that works in a run. Read by the run's config check and the Flower adapters.
    offline_only: ClassVar[str | None] = None
    #: True when the rule changes local training through :meth:`client_correction` (FedProx, SCAFFOLD,
    #: FedDyn); engines that cannot pass a correction to their training (async gossip) refuse such rules
    client_side: ClassVar[bool] = False
    #: why gossip must refuse the rule (it needs one server that sees every client, e.g. SCAFFOLD's
    #: global control variate); None where a gossip node can run it. Read by the run's config check.
    needs_server: ClassVar[str | None] = None
    #: why FL servers must refuse the rule (it merges a node's own model with its neighbours', e.g.
    #: ClippedGossip); None where a server can apply it. Read by the run's config check and the Flower adapters.
    gossip_only: ClassVar[str | None] = None

    def client_correction(
        self, client_ids: torch.Tensor, start: torch.Tensor, state: State | None
    ) -> ClientCorrection | None:
        """The term this rule adds to each local gradient of ``client_ids`` this round, or None.

        ``start`` is what they train from (``[P]`` or ``[K, P]``); ``state`` the rule's state (None in
        gossip, where a node's state is not a server's).
        """
        return None

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        return {}

    def train_clients(
        self,
        backend: Backend,
        client_ids: torch.Tensor,
        params: torch.Tensor,
        round_: int,
        state: State,
        correction: ClientCorrection | None = None,
    ) -> tuple[ClientBatch, State]:
        """One round of the clients' local work in FL: by default every client trains from ``params``.

        Personalization rules override it: FedPer/FedRep/FedBN start each client from the global
        shared layers plus its own local layers, Ditto also trains each client's personal model. The
        returned state carries what the clients keep for themselves (``[N, P]`` rows, checkpointed
        with the rest of the strategy state).
        """
        return backend.train(client_ids, params, round_, self.requires, correction=correction), state

    def personal_models(self, client_ids: torch.Tensor, params: torch.Tensor, state: State) -> torch.Tensor | None:
        """``[K, P]``: the models ``client_ids`` would use themselves, or None when that is the global ``params``.

        Per-client evaluation reports these (personalized accuracy).
        """
        return None

    def shared_mask(self, layout: Layout) -> torch.Tensor | None:
        """``[P]`` bool: the entries a client sends (the rest stay local, e.g. FedPer's head); None: all of them."""
        return None

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def check_tolerance(self, n: int, num_byzantine: int = 0) -> None:
        """ConfigError when ``n`` models, ``num_byzantine`` of them Byzantine, are more than the rule tolerates.

        Called by the config check with the expected number of models per aggregation, before any
        work; robust rules (strategies/robust/) override it, every other rule tolerates nothing and
        says nothing (FedAvg under attack is the baseline a comparison needs).
        """

    def on_empty_round(self, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        """A round in which nobody took part (``info.client_ids`` is empty): keep the model.

        Rules that count rounds (FedAU) or step from memory (MIFA) override this.
        """
        return info.reference, state

    def round_metrics(self, state: State, probabilities: torch.Tensor | None) -> dict[str, float]:
        """Extra columns for metrics.csv (e.g. FedAU's weight error); ``probabilities`` is p_n of all clients."""
        return {}


def weighted_average(models: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k x_k / sum_k w_k`` as one matrix-vector product."""
    w = weights.to(models.dtype)
    total = w.sum()
    if total <= 0:
        raise ValueError("aggregation weights sum to zero")
    return (w / total) @ models


def check_positive(strategy: str, field: str, value: Any, allow_zero: bool = False) -> float:
    """A finite number > 0 (>= 0 with ``allow_zero``): an infinite step or scale would make every model NaN."""
    return number(
        f"strategy.{field}",
        value,
        0,
        lo_open=not allow_zero,
        allowed=f"a finite number {'>=' if allow_zero else '>'} 0 for {strategy}",
    )


def check_unit_interval(
    strategy: str, field: str, value: Any, closed_right: bool = False, closed_left: bool = True
) -> float:
    interval = f"{'[' if closed_left else '('}0, 1{']' if closed_right else ')'}"
    return number(
        f"strategy.{field}",
        value,
        0,
        1,
        lo_open=not closed_left,
        hi_open=not closed_right,
        allowed=f"a number in {interval} for {strategy}",
    )


def build_strategy(strategy_cfg) -> Strategy:
    """Instantiate ``strategy._target_`` with the group's other keys as arguments.

    Done by hand rather than with ``hydra.utils.instantiate`` so that a ConfigError raised by the
    strategy's own checks reaches the user as it is, not wrapped in an InstantiationException.
    """
    from hydra.utils import get_class

    cfg = dict(strategy_cfg)
    name = cfg.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError("strategy.name", name, "a non-empty label (the run's name in reports)")
    target = cfg.pop("_target_", None)
    if not target:
        raise ConfigError(
            "strategy._target_",
            target,
            "the dotted path of a Strategy class",
            f"The strategy config {name!r} has no _target_.",
        )
    try:
        cls = get_class(target)
    except Exception:
        raise ConfigError(
            "strategy._target_", target, "an importable Strategy class, e.g. strategies.fedavg.FedAvg"
        ) from None
    try:
        strategy = cls(**cfg)
    except TypeError as exc:
        raise ConfigError("strategy", name, f"options that {cls.__name__} accepts", str(exc)) from None
    if not isinstance(strategy, Strategy):
        raise ConfigError("strategy._target_", target, "a subclass of strategies.base.Strategy")
    return strategy
