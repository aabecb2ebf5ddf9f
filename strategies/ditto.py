"""Ditto (Li, Hu, Beirami, Smith, ICML 2021) and local-only training: a personal model kept by every client.

Ditto's client k holds a personal model ``v_k`` besides the global one. Each round it takes part, it
trains the global model it received, ``w^t``, as FedAvg does (the server averages these), and its own
``v_k`` on the objective ``F_k(v) + lam/2 ||v - w^t||^2``, i.e. with the gradient ``g + lam (v - w^t)``.
The pull is one :class:`~sim.training.ClientCorrection`: ``prox * (v - v_start) + offset`` with
``prox = lam`` and ``offset = lam (v_start - w^t)``, so every backend trains the personal models in one
call, like any local training. Per-client evaluation scores ``v_k`` (:meth:`Ditto.personal_models`).

Read against the authors' code (litian96/ditto, ``flearn/trainers_MTL/ditto.py``; tests/test_ditto_ref.py):

- ``v_k`` starts as the initial global model ``w^0`` for every client (their ``BaseFedarated`` copies
  the initial model into each ``local_models`` entry); a client that never took part keeps ``w^0`` and is
  evaluated with it, as theirs is.
- Both trainings draw the same minibatches: the authors step ``v_k`` and the global copy on the same
  ``data_batch``, one after the other, for the same ``local_iters``; here both calls read the client's
  round stream ``("train", round, client)``, so the batches, their order and the step count are equal.
- The server averages the trained global models by samples (``weighting=samples``, FedAvg's); the
  authors' ``simple_average`` is uniform over the sampled clients (``weighting=uniform``), with clients
  drawn in proportion to their samples (their ``sampling=2``).

``lam = 0`` trains each ``v_k`` on its own data alone; :class:`LocalOnly` is that without the global
model's training and aggregation (nothing is sent), the baseline personalization is measured against.

Where it runs: FL (synchronous) only. Gossip nodes each hold their own model already and the gossip
loops train one model per node; asynchronous FL trains clients without ``train_clients``; Flower's
messages do not carry the personal models. All three are refused before any work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from sim.training import ClientCorrection

from .base import AggregationInfo, State, check_positive
from .client_state import PERSONAL, personal_rows, store_rows, sum_stats
from .fedavg import FedAvg

if TYPE_CHECKING:
    from sim.backends.base import Backend, ClientBatch
    from sim.layout import Layout

_NO_GOSSIP = (
    "{name} keeps a personal model on every client beside the global model that one server sends out; the gossip "
    "loops train one model per node, which is already that node's own. Use mode=federated."
)


class Ditto(FedAvg):
    """Ditto's global FedAvg plus each participant's personal model trained with the pull ``lam (v - w^t)``."""

    name = "ditto"
    #: the personal training changes local work: loops that cannot run ``train_clients`` (async FL) refuse it
    client_side: ClassVar[bool] = True
    needs_server: ClassVar[str | None] = _NO_GOSSIP.format(name="Ditto")

    def __init__(self, lam: float = 1.0, weighting: str = "samples", server_lr: float = 1.0):
        super().__init__(weighting=weighting, server_lr=server_lr)
        self.lam = check_positive(self.name, "lam", lam, allow_zero=True)

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        """Every client's ``v_k`` starts as the initial global model (the authors' ``local_models``)."""
        return {PERSONAL: params.detach().expand(num_clients, -1).clone()}

    def train_clients(
        self,
        backend: Backend,
        client_ids: torch.Tensor,
        params: torch.Tensor,
        round_: int,
        state: State,
        correction: ClientCorrection | None = None,
    ) -> tuple[ClientBatch, State]:
        batch = backend.train(client_ids, params, round_, self.requires, correction=correction)
        personal = self._train_personal(backend, client_ids, params, round_, state)
        batch.stats = sum_stats(batch.stats, personal.stats)
        return batch, self._store(state, personal)

    def _train_personal(
        self, backend: Backend, client_ids: torch.Tensor, params: torch.Tensor, round_: int, state: State
    ) -> ClientBatch:
        """``v_k`` trained on the round's batches with ``g + lam (v - w^t)`` (``w^t = params``, fixed all round)."""
        start = personal_rows(state, client_ids).to(params.device)
        pull = None
        if self.lam:
            pull = ClientCorrection(prox=self.lam, offsets=self.lam * (start - params))
        return backend.train(client_ids, start, round_, correction=pull)

    @staticmethod
    def _store(state: State, personal: ClientBatch) -> State:
        return store_rows(state, personal.client_ids, personal.params)

    def personal_models(self, client_ids: torch.Tensor, params: torch.Tensor, state: State) -> torch.Tensor | None:
        return personal_rows(state, client_ids).to(params.device)


class LocalOnly(Ditto):
    """Every participant trains its own model on its own rows; nothing is sent or aggregated.

    The personal models are Ditto's with ``lam = 0`` (the same batches, bit for bit), without the global
    model's training: the global model stays the initial one, so ``test_accuracy`` is the initial model's
    and the per-client columns (``eval.clients``) are the ones to read; ``train_loss`` is the personal
    trainings' and ``bytes_up`` / ``bytes_down`` are 0.
    """

    name = "local_only"
    needs_server: ClassVar[str | None] = _NO_GOSSIP.format(name="local_only")

    def __init__(self):
        super().__init__(lam=0.0)

    def train_clients(
        self,
        backend: Backend,
        client_ids: torch.Tensor,
        params: torch.Tensor,
        round_: int,
        state: State,
        correction: ClientCorrection | None = None,
    ) -> tuple[ClientBatch, State]:
        personal = self._train_personal(backend, client_ids, params, round_, state)
        return personal, self._store(state, personal)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        return info.reference, state

    def shared_mask(self, layout: Layout) -> torch.Tensor | None:
        return torch.zeros(layout.size, dtype=torch.bool)
