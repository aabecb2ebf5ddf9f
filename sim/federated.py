"""The federated loop: sample participants, train them on a backend, aggregate, evaluate.

It is the star-topology case of the engine: the same data, local training, backends, strategies
and results writer serve the gossip loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from strategies import AggregationInfo

from .attacks import with_byzantine
from .backends import aggregate_on_backend
from .checks import check_finite
from .client_eval import ClientEvaluator
from .compress.fl import FLCompression
from .results import MetricsLog
from .run_metrics import weight_variance_columns
from .system.fl_clock import FLClock
from .training import evaluate

if TYPE_CHECKING:
    from .attacks import Attack
    from .experiment import Experiment

EvalHook = Callable[[int, dict], None]


def evaluation_row(
    exp: Experiment, params: torch.Tensor, clients: ClientEvaluator | None = None, state: Any = None
) -> dict[str, float]:
    """The global model's columns; with ``clients`` (eval.clients) each client's model on its own local test too."""
    acc, loss = evaluate(exp.model, exp.layout, params, exp.data.x_test, exp.data.y_test)
    row = {"test_accuracy": acc, "test_loss": loss}
    row.update(weight_variance_columns(exp.layout, params))
    if len(exp.data.y_val):
        row["val_accuracy"] = evaluate(exp.model, exp.layout, params, exp.data.x_val, exp.data.y_val)[0]
    if clients is not None:
        row.update(clients.fl(params, state))
    return row


def byzantine_rows(
    attack: Attack | None, batch, reference: torch.Tensor, round_: int, row: dict
) -> tuple[torch.Tensor, int]:
    """The stack the strategy aggregates: the trained models with the Byzantine participants' rows crafted.

    Byzantine clients take part as the participation model draws them; the backend trains them like
    any client (label flippers on their flipped labels), then crafted attacks replace their rows
    (sim/attacks/engine.py). ``row["num_byzantine"]`` counts the Byzantine models in the stack.
    """
    if attack is None:
        return batch.params, 0
    models, count = attack.substitute(batch.params, batch.client_ids, reference, round_)
    row["num_byzantine"] = count
    return models, count


@dataclass
class Resume:
    """Where a resumed run continues: after ``round`` with this global model and strategy state."""

    round: int
    params: torch.Tensor
    state: Any


#: called after every round with (round, global model, strategy state); writes checkpoints, may stop the run
RoundEnd = Callable[[int, torch.Tensor, Any], None]


def run_federated(
    exp: Experiment,
    log: MetricsLog,
    on_round: Callable[[dict], None] = lambda row: None,
    resume: Resume | None = None,
    round_end: RoundEnd | None = None,
) -> torch.Tensor:
    """Run ``cfg.rounds`` rounds from ``exp.initial_params`` (or from ``resume``); returns the final global model.

    With ``resume`` the metrics rows so far are already in ``log``; the participation process is
    replayed through the completed rounds (its state is a function of the seed and the rounds).
    """
    cfg = exp.cfg
    rounds, eval_every = int(cfg.rounds), int(cfg.eval_every)
    bytes_per_model = exp.layout.size * exp.initial_params.element_size()
    shared = exp.strategy.shared_mask(exp.layout)  # what clients send: local layers (FedPer, FedBN) stay home
    bytes_per_upload = bytes_per_model if shared is None else int(shared.sum()) * exp.initial_params.element_size()
    bytes_per_download = bytes_per_upload  # the server sends the shared entries only
    compress = FLCompression.for_run(exp, shared)  # compress=...: encoded uploads (sim/compress/fl.py)
    if compress is not None:
        bytes_per_upload, bytes_per_download = compress.upload_bytes, compress.download_bytes
    validate = exp.validation_fn() if exp.strategy.needs_validation else None
    known_p = getattr(exp.participation, "probabilities", None)
    attack: Attack | None = getattr(exp, "attack", None)
    clock = FLClock.for_run(exp, bytes_per_upload, bytes_per_download)  # simulated time (sim/system/, docs/system.md)
    clients = ClientEvaluator.for_run(exp, log)  # eval.clients: per-client evaluation (sim/client_eval), None: off

    if resume is None:
        first = 1
        params = exp.initial_params.clone()
        state = exp.strategy.init_state(params, exp.data.num_clients)
        start = time.perf_counter()
        log.append(
            {
                "round": 0,
                **evaluation_row(exp, params, clients, state),
                "num_participants": 0,
                **({} if attack is None else {"num_byzantine": 0}),
                "bytes_up": 0,
                "bytes_down": 0,
                "wall_s": 0.0,
                "time_s": 0.0,
                "dropped": 0,
                "failed": 0,
            }
        )
    else:
        first, params, state = resume.round + 1, resume.params.clone(), resume.state
        for done in range(1, first):
            clock.sample(done)
        clock.resume(log.rows[-1])
        start = time.perf_counter() - float(log.rows[-1]["wall_s"])  # wall time continues where it stopped
    if compress is not None:
        state = compress.take(state)  # the residuals (a resumed state carries them) stay out of the strategy's
    for round_ in range(first, rounds + 1):
        ids = clock.sample(round_)
        row: dict = {"round": round_, "num_participants": int(len(ids))}
        if attack is not None:
            row["num_byzantine"] = 0
        batch = None
        if len(ids):  # the clock keeps the clients whose updates arrive (all of them with system=none)
            correction = exp.strategy.client_correction(ids, params, state)
            batch, state = exp.strategy.train_clients(exp.backend, ids, params, round_, state, correction)
            check_finite(batch.params, batch.client_ids, round_, "models")
            batch = clock.settle(batch, row)
        else:
            row.update(clock.empty_round())
        if batch is None or len(batch.client_ids) == 0:
            kept = ids if batch is None else batch.client_ids
            info = AggregationInfo(
                client_ids=kept,
                num_samples=kept.clone(),
                round=round_,
                num_clients=exp.data.num_clients,
                layout=exp.layout,
                reference=params,
            )
            params, state = exp.strategy.on_empty_round(info, state)
            row.update(train_loss=math.nan, bytes_up=0, bytes_down=len(ids) * bytes_per_download)
        else:
            models, num_byzantine = byzantine_rows(attack, batch, params, round_, row)
            if compress is not None:  # every upload is encoded, a Byzantine one too: the wire format is the server's
                models = compress.upload(models, batch.client_ids, params, round_)
            info = AggregationInfo(
                client_ids=batch.client_ids,
                num_samples=batch.num_samples,
                round=round_,
                num_clients=exp.data.num_clients,
                layout=exp.layout,
                reference=params,
                validate=validate,
                extras=batch.extras,
                participation_prob=None if known_p is None else known_p[batch.client_ids],
                num_steps=batch.num_steps,
                train=exp.train,
            )
            if attack is not None:
                info = with_byzantine(info, num_byzantine)
            params, state = aggregate_on_backend(exp.backend, exp.strategy, models, info, state)
            if compress is not None:  # compress.downlink: the model every client holds after the broadcast
                params = compress.broadcast(params, info.reference, round_)
            check_finite(params, batch.client_ids, round_, "the aggregated parameters")
            weights = batch.num_samples.to(torch.float64)
            losses = batch.train_loss.to(torch.float64)
            ok = ~torch.isnan(losses)
            if attack is not None:  # the loss of the honest participants' training
                ok &= ~attack.mask[batch.client_ids]
            row["train_loss"] = float((weights[ok] * losses[ok]).sum() / weights[ok].sum()) if ok.any() else math.nan
            extra_bytes = sum(t.numel() * t.element_size() for t in batch.extras.values())
            row["bytes_up"] = len(batch.client_ids) * bytes_per_upload + extra_bytes
            row["bytes_down"] = len(ids) * bytes_per_download
            row.update(batch.stats)
        row.update(exp.strategy.round_metrics(state, known_p))
        if round_ % eval_every == 0 or round_ == rounds:
            row.update(evaluation_row(exp, params, clients, state))
        row["wall_s"] = time.perf_counter() - start
        log.append(row)
        on_round(row)
        if round_end is not None:
            round_end(round_, params, state if compress is None else compress.join(state))
    return params
