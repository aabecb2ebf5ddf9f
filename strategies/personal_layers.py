"""FedPer, FedRep and FedBN: layers matched by a pattern stay on each client, the rest is federated.

One class, the variants through its arguments (``variant``, ``local``):

- ``fedper`` (Arivazhagan et al. 2019): the last layer (``<last>``) is each client's own; local training
  trains the whole model as usual, the server averages the rest.
- ``fedrep`` (Collins et al. 2021): the same split (the head is local, the body shared), but each round a
  client first trains its head for ``head_epochs`` with the body frozen, then the body for
  ``body_epochs`` with the head frozen (defaults 10 and 1: the authors' CIFAR scripts, ``local_ep=11,
  local_rep_ep=1``). The head phase draws its batches from the round's ``"train"`` stream, the body phase
  from ``"fedrep_body"``; both phases use the run's ``train`` config otherwise, each with a fresh momentum.
- ``fedbn`` (Li et al. 2021): the normalization layers (``<norm>``: their weights, biases and running
  statistics) stay local.

Each client starts a round from the global shared entries plus its own local entries, kept in the strategy
state as ``state["personal"]`` ``[N, L]`` (the L local entries of every client, in layout order; created at
the first round from the initial model, and checkpointed with the rest of the state). The server averages
the shared entries by samples (FedAvg, ``weighting``, ``server_lr``); the global model's local entries stay
the initial ones (they are never sent), so its pooled test accuracy is not the rule's measure: per-client
evaluation scores :meth:`personal_models`. Only the shared entries are sent (:meth:`shared_mask`).

In sync gossip a node's own model already holds its local layers: a merge averages the shared entries over
the node and what it received and keeps its own local ones (``info.reference``). FedRep's phases run in FL's
:meth:`train_clients` only, so gossip refuses it. Patterns: :mod:`strategies.layer_patterns`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import torch

from sim.training import ClientCorrection, TrainConfig
from sim.validation import choice, optional_integer

from .base import AggregationInfo, State, Strategy
from .client_state import PERSONAL, store_rows, sum_stats
from .fedavg import FedAvg
from .layer_patterns import LAST, NORM, check_patterns, local_mask

if TYPE_CHECKING:
    from sim.backends.base import Backend, ClientBatch
    from sim.layout import Layout

VARIANTS = ("fedper", "fedrep", "fedbn")
DEFAULT_LOCAL = {"fedper": (LAST,), "fedrep": (LAST,), "fedbn": (NORM,)}
#: the stream FedRep's body phase draws its batches from (the head phase draws the round's "train")
BODY_STREAM = "fedrep_body"
_FEDREP_GOSSIP = (
    "FedRep alternates head and body epochs inside an FL round's local work (train_clients); the gossip loops "
    "train every node's whole model in one call. Use mode=federated, or fedper (local head, joint training) "
    "in gossip."
)


class PersonalLayers(Strategy):
    """Local layers (by pattern) kept per client; FedAvg over the shared ones; FedRep's alternating epochs."""

    name = "fedper"
    #: the rule changes local work: loops that cannot run ``train_clients`` (asynchronous FL and gossip) refuse it
    client_side: ClassVar[bool] = True

    def __init__(
        self,
        variant: str = "fedper",
        local=None,
        head_epochs: int | None = 10,
        body_epochs: int | None = 1,
        weighting: str = "samples",
        server_lr: float = 1.0,
    ):
        self.variant = choice("strategy.variant", variant, VARIANTS)
        self.name = self.variant
        self.patterns = DEFAULT_LOCAL[self.variant] if local is None else check_patterns(local)
        run = "the run's train config"
        self.head_epochs = optional_integer("strategy.head_epochs", head_epochs, 1, run)
        self.body_epochs = optional_integer("strategy.body_epochs", body_epochs, 1, run)
        self.alternating = self.variant == "fedrep"
        if self.alternating:
            self.needs_server = _FEDREP_GOSSIP  # type: ignore[misc]
        self.inner = FedAvg(weighting=weighting, server_lr=server_lr)
        self._masks: dict[Layout, torch.Tensor] = {}
        self._local: torch.Tensor | None = None  # the run's local mask, set by shared_mask(layout)
        self._on: dict[torch.device, torch.Tensor] = {}  # _local on each device it was asked for (one copy a run)

    # ---- the split --------------------------------------------------------------------------------
    def local_mask(self, layout: Layout) -> torch.Tensor:
        """``[P]`` bool: the entries that stay on the client (ConfigError for a pattern that names nothing)."""
        if layout not in self._masks:
            self._masks[layout] = local_mask(layout, self.patterns)
        if self._local is not self._masks[layout]:
            self._local, self._on = self._masks[layout], {}
        return self._local

    def shared_mask(self, layout: Layout) -> torch.Tensor:
        return ~self.local_mask(layout)

    def _mask(self, device: torch.device) -> torch.Tensor:
        """The run's local mask on ``device``, copied there once (starts, train_clients, aggregate: every round)."""
        if self._local is None:
            raise RuntimeError("shared_mask(layout) must be called before training (the FL loop does it first)")
        if device not in self._on:
            self._on[device] = self._local.to(device)
        return self._on[device]

    def _personal(self, state: State, params: torch.Tensor, num_clients: int | None = None) -> torch.Tensor:
        """``[N, L]`` every client's local entries: the state's, or (before the first round) the initial model's."""
        if PERSONAL in state:
            return state[PERSONAL]
        if num_clients is None:
            num_clients = int(state["num_clients"])
        return params[self._mask(params.device)].detach().expand(num_clients, -1).clone()

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        # the [N, L] rows are created at the first round (a gossip node's state never holds them)
        return {"num_clients": torch.tensor(num_clients)}

    def starts(self, client_ids: torch.Tensor, params: torch.Tensor, state: State) -> torch.Tensor:
        """``[K, P]``: the global model with each client's own local entries."""
        local = self._mask(params.device)
        rows = self._personal(state, params)
        out = params.detach().expand(len(client_ids), -1).clone()
        out[:, local] = rows[client_ids.to(rows.device)].to(out.device, out.dtype)
        return out

    def personal_models(self, client_ids: torch.Tensor, params: torch.Tensor, state: State) -> torch.Tensor:
        return self.starts(client_ids, params, state)

    # ---- local work ---------------------------------------------------------------------------------
    def train_clients(
        self,
        backend: Backend,
        client_ids: torch.Tensor,
        params: torch.Tensor,
        round_: int,
        state: State,
        correction: ClientCorrection | None = None,
    ) -> tuple[ClientBatch, State]:
        starts = self.starts(client_ids, params, state)
        if self.alternating:
            batch = self._fedrep(backend, client_ids, starts, round_, correction)
        else:
            batch = backend.train(client_ids, starts, round_, self.requires, correction=correction)
        local = self._mask(batch.params.device)
        state = {**state, PERSONAL: self._personal(state, params)}
        return batch, store_rows(state, batch.client_ids, batch.params[:, local])

    def _phase_config(self, run: TrainConfig, epochs: int | None) -> TrainConfig | None:
        if epochs is None:
            return None
        return dataclasses.replace(run, epochs=epochs, local_steps=None, local_steps_min=None)

    def _fedrep(
        self,
        backend: Backend,
        client_ids: torch.Tensor,
        starts: torch.Tensor,
        round_: int,
        correction: ClientCorrection | None,
    ) -> ClientBatch:
        """Head epochs with the body frozen, then body epochs with the head frozen (Collins et al., Algorithm 1)."""
        run: TrainConfig | None = getattr(backend, "train_config", None)
        if run is None:
            raise RuntimeError(f"{type(backend).__name__} has no train_config; FedRep needs the run's train config")
        local = self._mask(starts.device)
        base = correction if correction is not None else ClientCorrection()
        head = backend.train(
            client_ids,
            starts,
            round_,
            correction=dataclasses.replace(base, frozen=~local),
            train=self._phase_config(run, self.head_epochs),
        )
        body = backend.train(
            client_ids,
            head.params,
            round_,
            self.requires,
            correction=dataclasses.replace(base, frozen=local),
            train=self._phase_config(run, self.body_epochs),
            stream=BODY_STREAM,
        )
        return _both_phases(head, body)

    # ---- the server (or a gossip node's merge) ------------------------------------------------------
    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        """FedAvg over the shared entries; the local ones stay the reference's (the global's, or a node's own)."""
        merged, _ = self.inner.aggregate(models, info, {})
        self.local_mask(info.layout)
        local = self._mask(merged.device)
        return torch.where(local, info.reference.to(merged.dtype), merged), state


def _both_phases(head: ClientBatch, body: ClientBatch) -> ClientBatch:
    """The body phase's models, with both phases' steps, step-weighted mean loss and backend counters."""
    steps_h = head.num_steps if head.num_steps is not None else torch.zeros_like(head.num_samples)
    steps_b = body.num_steps if body.num_steps is not None else torch.zeros_like(body.num_samples)
    total = steps_h + steps_b
    w_h, w_b = steps_h.to(torch.float64), steps_b.to(torch.float64)
    loss_h = torch.nan_to_num(head.train_loss.double().cpu()) * w_h
    loss_b = torch.nan_to_num(body.train_loss.double().cpu()) * w_b
    loss = torch.where(total > 0, (loss_h + loss_b) / total.clamp_min(1), torch.tensor(float("nan")))
    stats = sum_stats(head.stats, body.stats)
    return dataclasses.replace(body, train_loss=loss.to(torch.float32), num_steps=total, stats=stats)
