"""Per-client evaluation inside the loops: which model each client uses, scores, columns, clients.csv rows.

The loops call :meth:`ClientEvaluator.fl` (FL, synchronous and asynchronous) or
:meth:`ClientEvaluator.nodes` (gossip) at each evaluation; both return metrics.csv's distribution
columns and stage one clients.csv row per evaluated client, which :class:`sim.results.MetricsLog` writes
with the round and ``time_s`` of the metrics row it appends next.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from sim.finetune import finetuned
from sim.results import ClientLog, MetricsLog

from .config import EvalConfig, evaluated_clients
from .scores import client_rows, distribution_columns, own_model_scores, shared_model_scores

if TYPE_CHECKING:
    from sim.experiment import Experiment


def client_models(
    exp: Experiment, ids: torch.Tensor, params: torch.Tensor, state: Any, finetune_steps: int = 0, index: int = 0
) -> torch.Tensor | None:
    """``[K, P]``: the models clients ``ids`` use themselves, or None when that is the global ``params`` for all.

    The one place that decides what per-client evaluation scores: a personalization rule's own models
    (``strategy.personal_models``: FedPer/FedRep/FedBN's local layers, Ditto's personal models), else the
    global model. With ``finetune_steps`` (``eval.finetune_steps``) each client first takes that many local steps
    from that model on its own training rows (:mod:`sim.finetune`; ``index``: the evaluation's metrics row).
    """
    models = exp.strategy.personal_models(ids, params, state)
    if finetune_steps:
        models = finetuned(exp.backend, exp.train, ids, params if models is None else models, finetune_steps, index)
    return models


class ClientEvaluator:
    """The evaluated clients (fixed for the run) and their local test rows' places."""

    def __init__(self, exp: Experiment, conf: EvalConfig, log: MetricsLog):
        self.exp, self.conf = exp, conf
        data = exp.data
        eligible = data.local_sizes > 0
        attack = getattr(exp, "attack", None)
        if attack is not None:  # Byzantine clients' scores would mix into the honest clients' distribution
            eligible &= ~attack.mask
        self.ids = evaluated_clients(conf.clients, eligible, int(exp.cfg.seed))
        assert data.local_offsets is not None and data.x_local is not None and data.y_local is not None
        self.lo, self.n = data.local_offsets[:-1][self.ids], data.local_sizes[self.ids]
        self.x, self.y = data.x_local, data.y_local
        self.placed = client_rows(self.lo, self.n)  # the global model's row order, the same at every evaluation
        self.test_n = torch.full((len(self.ids),), len(data.y_test), dtype=torch.int64)  # gossip: the pooled test
        if log.clients is None:
            log.clients = ClientLog(log.path.with_name("clients.csv"))
        self.log = log.clients
        self.metrics = log  # its row count names an evaluation's fine-tuning batches (sim/finetune.py)

    @classmethod
    def for_run(cls, exp: Experiment, log: MetricsLog) -> ClientEvaluator | None:
        """None with ``eval.clients=none`` (the default): the loops then do no per-client work at all."""
        conf = EvalConfig.from_config(exp.cfg.get("eval"))
        return cls(exp, conf, log) if conf.active else None

    def fl(self, params: torch.Tensor, state: Any) -> dict[str, float]:
        """Each evaluated client's model (:func:`client_models`) on its own local test rows."""
        start = time.perf_counter()
        models = client_models(self.exp, self.ids, params, state, self.conf.finetune_steps, len(self.metrics.rows))
        if models is None:
            correct, loss_sum = shared_model_scores(
                self.exp.model, self.exp.layout, params, self.x, self.y, self.lo, self.n, placed=self.placed
            )
        else:
            correct, loss_sum = own_model_scores(
                self.exp.model, self.exp.layout, models, self.x, self.y, self.lo, self.n
            )
        return self._record(correct, loss_sum, {}, start)

    def nodes(self, params: torch.Tensor) -> dict[str, float]:
        """Each evaluated gossip node's own model on its own local test rows, and on the pooled test set."""
        start = time.perf_counter()
        models = params[self.ids.to(params.device)]
        if self.conf.finetune_steps:  # eval.finetune_steps: each node's own model, fine-tuned (sim/finetune.py)
            steps, index = self.conf.finetune_steps, len(self.metrics.rows)
            models = finetuned(self.exp.backend, self.exp.train, self.ids, models, steps, index)
        exp = self.exp
        correct, loss_sum = own_model_scores(exp.model, exp.layout, models, self.x, self.y, self.lo, self.n)
        test = self.test_n
        hits, losses = own_model_scores(
            exp.model, exp.layout, models, exp.data.x_test, exp.data.y_test, torch.zeros_like(test), test
        )
        pooled = {"test_accuracy": (hits.double() / test).tolist(), "test_loss": (losses / test).tolist()}
        return self._record(correct, loss_sum, pooled, start)

    def _record(self, correct: torch.Tensor, loss_sum: torch.Tensor, extra: dict[str, list], start: float) -> dict:
        rows = self.n.to(torch.float64)
        self.log.stage(
            {
                "client": self.ids.tolist(),
                "accuracy": (correct.to(torch.float64) / rows).tolist(),
                "loss": (loss_sum / rows).tolist(),
                "samples": self.n.tolist(),
                **extra,
            }
        )
        columns = distribution_columns(correct, loss_sum, self.n)
        columns["client_eval_s"] = time.perf_counter() - start
        return columns
