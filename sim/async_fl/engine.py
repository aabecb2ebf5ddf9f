"""Asynchronous FL as an event-driven simulation: FedAsync (Xie et al. 2019) and FedBuff (Nguyen et al. 2022).

``async_fl.concurrency`` clients train at once. A task starts when the server hands a client the
current global model (its version, ``tau``, is the number of server updates applied so far) and
ends ``task_time`` later (the system model's download + compute + upload; 1.0 s with
``system=none``). When a task ends the server takes the client's model ``y``:

- FedAsync: ``x <- (1 - a) x + a y`` with ``a = alpha * s(version - tau)``: one server update each;
- FedBuff: the delta ``y - x_tau`` goes to a buffer; once it holds ``buffer_size`` deltas, the
  strategy aggregates the models ``x + s(version - tau_i) (y_i - x_tau_i)`` with ``x`` as reference,
  and ``x <- x + server_lr (aggregate - x)``: one server update per full buffer.

The freed slot goes at once to a client drawn uniformly from the idle ones that the system model
says are available (none available: the slot waits until the first idle client is). A task during
which its client goes offline (``available_through``) fails: no update arrives, the slot is freed at
its end. The run ends after ``rounds`` server updates; a row (with an evaluation) follows every
``eval_every`` server updates and the last.

Determinism: client draws come from one stream (``numpy_rng(seed, "async_fl")``) consumed in event
order; events are ordered by (time, sequence number); client k's n-th task trains with
``torch_generator(seed, "train", n, k)``. A task's training depends only on its client, count and
start model, so tasks are not trained when they start but collected, and all collected tasks are
trained in one backend call when the first result among them is needed: clients that start at the
same simulated instant (with ``system=none`` all C of a wave) train as one vectorized batch, as
asynchronous gossip batches its exchanges. Only wall time depends on this.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from sim.backends import aggregate_on_backend
from sim.checks import check_finite
from sim.client_eval import ClientEvaluator
from sim.federated import evaluation_row
from sim.results import MetricsLog
from sim.seeding import numpy_rng
from sim.training import client_local_steps, steps_per_client
from strategies import AggregationInfo

from . import state as saved
from .config import AsyncFLConfig

FINISH, RETRY = 0, 1
#: random draws of a client before the idle and available ones are listed (few: C is small against N)
DRAWS = 64

#: called after every row with (its index, server updates so far, global model, a function returning the carried state)
RowEnd = Callable[[int, int, torch.Tensor, Callable[[], dict[str, Any]]], None]


def row_count(rounds: int, eval_every: int) -> int:
    """Rows after the initial one: every ``eval_every`` server updates, and after the last."""
    return rounds // eval_every + (1 if rounds % eval_every else 0)


@dataclass
class Task:
    """One client's local training: what it started from and, once trained, what it sends."""

    client: int
    count: int  # the client's task count: its training stream is ("train", count, client)
    version: int  # tau: server updates applied when it downloaded the model
    start: torch.Tensor  # the global model of that version
    failed: bool  # the client goes offline before the task ends: nothing arrives
    params: torch.Tensor | None = None  # [P] after training (None until the batch it belongs to is trained)
    loss: float = math.nan
    samples: int = 0


class AsyncFL:
    def __init__(self, exp, conf: AsyncFLConfig, system):
        self.exp, self.conf, self.system = exp, conf, system
        self.n = exp.data.num_clients
        self.seed = int(exp.cfg.seed)
        self.rng = numpy_rng(self.seed, "async_fl")
        self.queue: list = []  # (time, seq, kind, task id)
        self.next_seq = 0
        self.next_task = 0
        self.tasks: dict[int, Task] = {}
        self.busy = np.zeros(self.n, dtype=bool)
        self.trained = np.zeros(self.n, dtype=np.int64)  # tasks given to each client so far
        self.version = 0
        self.time = 0.0
        self.retry_at: float | None = None  # a RETRY event waits for an available client
        self.buffer: list[tuple[int, torch.Tensor, int, int]] = []  # FedBuff: (client, delta, tau, samples)
        self.sizes = exp.data.client_sizes
        self.bytes_per_model = exp.layout.size * exp.initial_params.element_size()
        self.validate = exp.validation_fn() if exp.strategy.needs_validation else None
        self.acc = saved.fresh_accumulators()
        self.params: torch.Tensor = exp.initial_params  # set by run() (or restored by a resume)
        self.state: Any = None  # the strategy's state, likewise
        # steps x batch of every client (unequal local work draws per task, in _samples)
        self.steps = steps_per_client(self.sizes, exp.train)

    # ---- scheduling ------------------------------------------------------------------------------
    def push(self, t: float, kind: int, task: int) -> None:
        heapq.heappush(self.queue, (t, self.next_seq, kind, task))
        self.next_seq += 1

    def eligible(self, client: int, t: float) -> bool:
        return not self.busy[client] and self.system.available(client, t)

    def draw_client(self, t: float) -> int | None:
        """A client drawn uniformly from the idle, available ones; None when there is none."""
        for _ in range(DRAWS):
            client = int(self.rng.integers(self.n))
            if self.eligible(client, t):
                return client
        idle = [c for c in np.flatnonzero(~self.busy).tolist() if self.system.available(c, t)]
        return None if not idle else idle[int(self.rng.integers(len(idle)))]

    def samples(self, client: int, count: int) -> int:
        """Training samples of a task (steps x batch), what the system model's compute time is for."""
        train = self.exp.train
        drawn = client_local_steps(train, self.seed, [count], [client])
        steps = self.steps[client] if drawn is None else steps_per_client(self.sizes[[client]], train, drawn)[0]
        return int(steps) * train.batch_size

    def dispatch(self, t: float) -> None:
        """Fill every free slot at time ``t`` with the current global model."""
        while len(self.tasks) < self.conf.concurrency:
            client = self.draw_client(t)
            if client is None:
                self.wait_for_client(t)
                return
            count = int(self.trained[client])
            self.trained[client] += 1
            length = self.system.task_time(
                client, self.bytes_per_model, self.bytes_per_model, self.samples(client, count)
            )
            failed = not self.system.available_through(client, t, t + length)
            task_id = self.next_task
            self.next_task += 1
            self.tasks[task_id] = Task(client, count, self.version, self.params, failed)
            self.busy[client] = True
            self.acc["bytes_down"] += self.bytes_per_model
            self.push(t + length, FINISH, task_id)

    def wait_for_client(self, t: float) -> None:
        """No idle client is available: try again when the first one becomes available."""
        idle = np.flatnonzero(~self.busy).tolist()
        when = min((self.system.next_available(c, t) for c in idle), default=math.inf)
        if math.isfinite(when) and when > t and self.retry_at is None:
            self.retry_at = when
            self.push(when, RETRY, -1)

    # ---- training --------------------------------------------------------------------------------
    def train_pending(self) -> None:
        """Train every collected task in one backend call (each from its own start model and stream)."""
        ids = [k for k, task in self.tasks.items() if task.params is None and not task.failed]
        if not ids:
            return
        tasks = [self.tasks[k] for k in ids]
        clients = torch.tensor([task.client for task in tasks])
        starts = torch.stack([task.start for task in tasks])
        rounds = torch.tensor([task.count for task in tasks])
        batch = self.exp.backend.train(clients, starts, rounds, self.exp.strategy.requires)
        self.acc["train_calls"] += 1
        check_finite(batch.params, batch.client_ids, self.version + 1, "models")
        for key, value in batch.stats.items():  # e.g. the Ray backend's retries, summed per row
            self.acc["stats"][key] = self.acc["stats"].get(key, 0.0) + float(value)
        for j, task in enumerate(tasks):
            task.params = batch.params[j].detach().cpu()
            task.loss = float(batch.train_loss[j])
            task.samples = int(batch.num_samples[j])

    # ---- the server ------------------------------------------------------------------------------
    def finish(self, t: float, task_id: int) -> bool:
        """A task ends at ``t``; returns whether the server applied an update."""
        task = self.tasks[task_id]
        if task.params is None and not task.failed:
            self.train_pending()  # this task and every other collected one, in one backend call
        del self.tasks[task_id]
        self.busy[task.client] = False
        if task.failed:
            self.acc["failed"] += 1
            return False
        assert task.params is not None
        acc = self.acc
        acc["bytes_up"] += self.bytes_per_model
        acc["updates"] += 1
        staleness = self.version - task.version
        acc["staleness_sum"] += staleness
        acc["staleness_max"] = max(acc["staleness_max"], staleness)
        if not math.isnan(task.loss):
            acc["loss_sum"] += task.samples * task.loss
            acc["loss_weight"] += task.samples
        if self.conf.algorithm == "fedasync":
            mix = self.conf.alpha * self.conf.weight(staleness)
            self.params = (1.0 - mix) * self.params + mix * task.params
            self.after_update(torch.tensor([task.client]))
            return True
        self.buffer.append((task.client, task.params - task.start, task.version, task.samples))
        if len(self.buffer) < self.conf.buffer_size:
            return False
        self.apply_buffer()
        return True

    def apply_buffer(self) -> None:
        """FedBuff's server step: the strategy aggregates the staleness-weighted models; the server moves server_lr."""
        clients = torch.tensor([entry[0] for entry in self.buffer])
        weights = torch.tensor([self.conf.weight(self.version - entry[2]) for entry in self.buffer])
        deltas = torch.stack([entry[1] for entry in self.buffer])
        models = self.params + weights.to(deltas.dtype)[:, None] * deltas
        info = AggregationInfo(
            client_ids=clients,
            num_samples=torch.tensor([entry[3] for entry in self.buffer]),
            round=self.version + 1,
            num_clients=self.n,
            layout=self.exp.layout,
            reference=self.params,
            validate=self.validate,
            train=self.exp.train,
        )
        merged, self.state = aggregate_on_backend(self.exp.backend, self.exp.strategy, models, info, self.state)
        merged = merged.detach().cpu()
        lr = self.conf.server_lr
        self.params = merged if lr == 1.0 else self.params + lr * (merged - self.params)
        self.buffer = []
        self.after_update(clients)

    def after_update(self, clients: torch.Tensor) -> None:
        self.version += 1
        check_finite(self.params, clients, self.version, "the server model")

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, log: MetricsLog, on_row: Callable[[dict], None], resume=None, row_end: RowEnd | None = None):
        """Run to ``rounds`` server updates; ``resume`` (global model, :func:`state.capture`) continues a saved run."""
        exp = self.exp
        rounds, every = int(exp.cfg.rounds), int(exp.cfg.eval_every)
        clients = ClientEvaluator.for_run(exp, log)  # eval.clients: each client's model on its local test
        if resume is None:
            self.params = exp.initial_params.detach().cpu().clone()
            self.state = exp.strategy.init_state(self.params, self.n)
            log.append(
                {
                    "round": 0,
                    "time_s": 0.0,
                    **evaluation_row(exp, self.params, clients, self.state),
                    "num_participants": 0,
                    "wall_s": 0.0,
                }
            )
            self.dispatch(0.0)
            start = time.perf_counter()
            rows = 0
        else:
            saved.restore(self, resume.state, resume.params)
            start = time.perf_counter() - float(log.rows[-1]["wall_s"])  # wall time continues where it stopped
            rows = int(resume.state["evaluation"])
        while self.version < rounds:
            if not self.queue:
                raise RuntimeError("asynchronous FL: no task in flight and no client ever available again")
            t, _, kind, task_id = heapq.heappop(self.queue)
            self.time = t
            if kind == RETRY:
                self.retry_at = None
                updated = False
            else:
                updated = self.finish(t, task_id)
            self.dispatch(t)
            if updated and (self.version % every == 0 or self.version == rounds):
                rows += 1
                row = {"round": self.version, "time_s": t, **self.row_counts()}
                row.update(evaluation_row(exp, self.params, clients, self.state))
                row.update(exp.strategy.round_metrics(self.state, None))
                row["wall_s"] = time.perf_counter() - start
                log.append(row)
                on_row(row)
                if row_end is not None:
                    row_end(rows, self.version, self.params, partial(saved.capture, self, rows))
        return self.params

    def row_counts(self) -> dict[str, float]:
        """What happened since the previous row: updates received, their staleness and loss, bytes, failed tasks."""
        acc, self.acc = self.acc, saved.fresh_accumulators()
        updates = acc["updates"]
        row: dict[str, float] = {
            "num_participants": updates,
            "staleness_mean": acc["staleness_sum"] / updates if updates else math.nan,
            "staleness_max": acc["staleness_max"] if updates else math.nan,
            "failed": acc["failed"],
            "train_calls": acc["train_calls"],
            "bytes_up": acc["bytes_up"],
            "bytes_down": acc["bytes_down"],
            "train_loss": acc["loss_sum"] / acc["loss_weight"] if acc["loss_weight"] else math.nan,
            **acc["stats"],
        }
        return row
