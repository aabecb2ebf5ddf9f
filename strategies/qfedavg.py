"""q-FedAvg (Li, Sanjabi, Beirami, Smith 2020, "Fair Resource Allocation in Federated Learning").

q-FFL reweights clients by their loss: the objective ``sum_k F_k^(q+1) / (q+1)`` pushes the model
toward clients it serves badly. The server treats each client's update as a gradient estimate with
Lipschitz constant ``L = 1 / learning_rate`` (the clients' local learning rate):

    g_k     = L (w - w_k)
    Delta_k = F_k^q g_k
    h_k     = q F_k^(q-1) ||g_k||^2 + L F_k^q
    w      <- w - sum_k Delta_k / sum_k h_k

``F_k`` is client k's loss at the start model ``w`` (the engine's per-client extra ``start_loss``);
both powers take ``F_k + 1e-10`` so a zero loss stays finite. This is Flower's ``QFedAvg``
(``flwr.serverapp.strategy``, flwr 1.42) number for number, with its ``train_loss`` read as
``start_loss``. With ``q = 0`` the step is the unweighted average of the client models (FedAvg
with ``weighting=uniform``): the rule ignores sample counts, as Flower's and the authors' do.
"""

from __future__ import annotations

import torch

from sim.errors import RunError

from .base import AggregationInfo, State, Strategy, check_positive

START_LOSS = "start_loss"
LOSS_FLOOR = 1e-10  # Flower's and the authors' offset inside F^q and F^(q-1)


class QFedAvg(Strategy):
    name = "qfedavg"
    requires = frozenset({START_LOSS})

    def __init__(self, q: float = 0.1, learning_rate: float = 0.1):
        self.q = check_positive(self.name, "q", q, allow_zero=True)
        self.learning_rate = check_positive(self.name, "learning_rate", learning_rate)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        loss = info.extras.get(START_LOSS)
        if loss is None or loss.shape != (len(models),):
            got = None if loss is None else tuple(loss.shape)
            raise RunError(
                f"q-FedAvg weights each client by its loss at the start model and needs the per-client "
                f"extra {START_LOSS!r} of shape ({len(models)},); the engine passed {got}."
            )
        lipschitz = 1.0 / self.learning_rate
        w = info.reference.to(torch.float64)
        grads = lipschitz * (w - models.to(torch.float64))  # [K, P]
        loss_q = torch.pow(loss.to(torch.float64) + LOSS_FLOOR, self.q)  # [K]
        deltas = loss_q @ grads  # sum_k F_k^q g_k
        h = self.q * torch.pow(loss.to(torch.float64) + LOSS_FLOOR, self.q - 1) * (grads * grads).sum(1)
        h = h + lipschitz * loss_q
        return (w - deltas / h.sum()).to(info.reference.dtype), state
