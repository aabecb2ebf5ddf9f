"""Asynchronous gossip as an event-driven simulation in continuous time (Ormandi et al. 2013).

Each node wakes on its own clock (exponential with mean ``wake_interval``, or periodic with a random
phase) and contacts one random neighbour of the graph of the current period: ``push`` sends its
model, ``pull`` asks for the neighbour's model, ``push_pull`` does both. A message arrives after the
configured delay, unless it is dropped (probability ``drop_prob``) or its receiver is offline when
it arrives. A receiver merges the model with its own through the strategy, then trains the result
(``merge_update``), or trains both its own model and the received one on its data and then merges
the two (``update_merge``, as gossipy's ``CreateModelMode.UPDATE_MERGE`` and Ormandi et al. do).
Churn: ``probability`` draws each node online with ``online_prob`` anew for every ``wake_interval``
of time; ``sessions`` alternates exponential online / offline sessions. Offline nodes neither send
nor receive. Evaluation events run every ``eval_interval``; the run lasts ``rounds * wake_interval``.

Determinism: all random choices come from one stream consumed in event order, events are ordered by
(time, sequence number), and node k's n-th training uses ``torch_generator(seed, "train", n, k)``;
under ``update_merge`` a delivery is two trainings of node k, its own model first (count n), then
the received model (count n + 1). An evaluation row's ``train_loss`` is the mean local training
loss (weighted by the nodes' sizes) of the trainings since the previous evaluation.

Batched exchanges (``gossip.batch_exchanges``, on by default): a delivery's merge and training do
not draw from the event stream, and they only touch the receiver's model, state and training count.
So deliveries are collected, in event order, until an event would read a model that a collected
delivery is about to change (a second delivery to the same node, a push or an answer to a pull from
such a node, an evaluation, the end of the run); then all collected deliveries are trained in one
backend call (each node with its own training count) and merged node by node. Every event, random
draw, message, count and merge happens exactly as in the event-by-event simulation; the models
equal it to float rounding (the vectorized backend trains a batch as it trains one client). What
changes is only the wall time.

With a system model (``system=...``, :mod:`.timing`) the clock runs in seconds: a message takes the link's
``link_time`` (a pull request 0 bytes) instead of a ``gossip.delay`` draw, and a delivery makes its receiver
train for ``compute_time`` (two trainings under ``update_merge``), one delivery at a time: a later one is
re-queued at the end of the running training, whose result replaces the node's model only then (a TRAINED
event; pushes and pull answers meanwhile send the old model, so they need no flush). A node is online when
the churn options and the system's availability both say so; a delivery whose training would end after the
node goes offline is lost. The event stream draws nothing for these durations, so with ``system=none``
every event and number is as before; every row's ``time_s`` is the event time.

Checkpoints (``checkpoint.every``, counted in evaluations) are taken right after an evaluation's
row, where the flush before it has left no delivery collected; :mod:`sim.gossip.async_state` lists
what they hold. A resumed run rebuilds this object, restores that state and continues the loop.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from sim.checks import check_finite
from sim.client_eval import ClientEvaluator
from sim.node_models import initial_node_params
from sim.results import MetricsLog
from sim.run_metrics import node_metrics
from sim.seeding import numpy_rng
from strategies import AggregationInfo

from . import async_state
from .compressed import ModelCodec, message_bytes
from .config import GossipConfig
from .nodes import evaluated_nodes
from .timing import enabled_system, training_samples

WAKE, DELIVER, REQUEST, TOGGLE, EVALUATE, TRAINED = 0, 1, 2, 3, 4, 5

#: called after every evaluation with (its index, node models, a function returning the carried state)
EvaluationEnd = Callable[[int, torch.Tensor, Callable[[], dict[str, Any]]], None]


def evaluation_count(rounds: int, cfg: GossipConfig) -> int:
    """Evaluations after time 0 in a run of ``rounds * wake_interval``: one every ``eval_interval``."""
    return int(np.floor(rounds * cfg.wake_interval / cfg.eval_interval + 1e-9))


class AsyncGossip:
    def __init__(self, exp, topology, cfg: GossipConfig):
        self.exp, self.topology, self.cfg = exp, topology, cfg
        self.n = exp.data.num_clients
        self.rng = numpy_rng(exp.cfg.seed, "gossip", "async")
        self.next_seq = 0  # events are ordered by (time, sequence number)
        self.first_eval_seq = 0  # the sequence number of the first evaluation event
        self.queue: list = []
        self.trained = np.zeros(self.n, dtype=np.int64)
        self.states = [exp.strategy.init_state(exp.initial_params, self.n) for _ in range(self.n)]
        self.validate = exp.validation_fn() if exp.strategy.needs_validation else None
        self.online = np.ones(self.n, dtype=bool)
        self.online_slot = -1
        self.counts = {"sent": 0, "lost": 0, "merges": 0, "trainings": 0, "bytes": 0}
        self.last_counts: dict[str, int] = {}
        self.bytes_per_model = message_bytes(exp)  # compress=...: the encoded size (sim/gossip/compressed.py)
        self.codec = ModelCodec.for_run(exp)  # compress=...: a message carries the decoded compressed model
        self.sizes = exp.data.client_sizes  # once: computing it is O(N), merges happen per event
        self.backend_stats: dict[str, float] = {}
        self.pending: dict[int, tuple[int, torch.Tensor]] = {}  # receiver -> (sender, model), in event order
        self.eval_sample = evaluated_nodes(self.n, cfg.eval_nodes, int(exp.cfg.seed))
        self.client_eval: ClientEvaluator | None = None  # eval.clients: set by run() (it needs the log)
        self.batch_sizes: list[int] = []  # deliveries trained per backend call (for benchmarks)
        self.loss_sum, self.loss_weight = 0.0, 0.0  # size-weighted training losses since the last evaluation
        # a system model (sim/system): trainings take compute_time, messages link_time (sim/gossip/timing.py)
        self.system = enabled_system(exp)
        self.busy_until = np.zeros(self.n)  # with a system model: when each node's current training ends
        self.staged: dict[int, torch.Tensor] = {}  # node -> the model its running training ends with

    # ---- scheduling ------------------------------------------------------------------------------
    def push(self, t: float, kind: int, *data) -> None:
        heapq.heappush(self.queue, (t, self.next_seq, kind, data))
        self.next_seq += 1

    def next_wake(self, t: float) -> float:
        if self.cfg.clock == "exponential":
            return t + self.rng.exponential(self.cfg.wake_interval)
        return t + self.cfg.wake_interval

    def delay(self, sender: int, receiver: int, nbytes: int) -> float:
        """A message's delay: the link's time with a system model, else a draw of the ``gossip.delay`` options."""
        if self.system is not None:
            return self.system.link_time(sender, receiver, nbytes)
        c = self.cfg
        if c.delay == "constant":
            return c.delay_value
        if c.delay == "uniform":
            return self.rng.uniform(c.delay_low, c.delay_value)
        return self.rng.exponential(c.delay_value) if c.delay_value > 0 else 0.0

    def is_online(self, node: int, t: float) -> bool:
        if self.cfg.churn == "probability":
            slot = int(t // self.cfg.wake_interval)
            if slot != self.online_slot:
                self.online = numpy_rng(self.exp.cfg.seed, "churn", slot).random(self.n) < self.cfg.online_prob
                self.online_slot = slot
        if self.system is not None and self.online[node]:  # the churn options and the system's availability
            return self.system.available(node, t)
        return bool(self.online[node])

    # ---- node actions ----------------------------------------------------------------------------
    def send(self, t: float, sender: int, receiver: int, model: torch.Tensor | None) -> None:
        """A model message, or (``model=None``) a pull request, which carries no model bytes."""
        if model is not None and self.codec is not None:  # drawn from the count of sent messages (checkpointed)
            sent = self.counts["sent"]
            model = self.codec.encode(model.unsqueeze(0), torch.tensor([sender]), "gossip_async", sent)[0]
        self.counts["sent"] += 1
        if model is not None:
            self.counts["bytes"] += self.bytes_per_model
        if self.rng.random() < self.cfg.drop_prob:
            self.counts["lost"] += 1
            return
        if model is None:
            self.push(t + self.delay(sender, receiver, 0), REQUEST, sender, receiver)
        else:
            self.push(t + self.delay(sender, receiver, self.bytes_per_model), DELIVER, sender, receiver, model)

    def train_nodes(self, nodes: list[int], starts: torch.Tensor) -> torch.Tensor:
        """Train ``starts[j]`` on node ``nodes[j]``'s data, at the node's next count of trainings; a
        node listed twice trains at its next two counts, in list order."""
        counts: dict[int, int] = {}
        rounds = []
        for node in nodes:
            counts[node] = counts.get(node, int(self.trained[node]))
            rounds.append(counts[node])
            counts[node] += 1
        ids = torch.tensor(nodes)
        batch = self.exp.backend.train(ids, starts, torch.tensor(rounds), self.exp.strategy.requires)
        for node, count in counts.items():
            self.trained[node] = count
        self.counts["trainings"] += len(nodes)
        for key, value in batch.stats.items():  # e.g. the Ray backend's retries, summed per evaluation
            self.backend_stats[key] = self.backend_stats.get(key, 0) + value
        check_finite(batch.params, batch.client_ids, max(rounds) + 1, "models")
        self.record_losses(ids, batch.train_loss)
        return batch.params

    def record_losses(self, ids: torch.Tensor, losses: torch.Tensor) -> None:
        """Add trainings' losses, weighted by the nodes' sizes as synchronous rounds weight them."""
        ok = ~torch.isnan(losses)
        weights = self.sizes[ids][ok].to(torch.float64)
        self.loss_sum += float((weights * losses[ok].double()).sum())
        self.loss_weight += float(weights.sum())

    def merge(self, node: int, own: torch.Tensor, received: torch.Tensor, sender: int) -> torch.Tensor:
        members = torch.tensor([node, sender])
        info = AggregationInfo(
            client_ids=members,
            num_samples=self.sizes[members],
            round=int(self.trained[node]),
            num_clients=self.n,
            layout=self.exp.layout,
            reference=own,
            self_index=0,
            validate=self.validate,
        )
        merged, self.states[node] = self.exp.strategy.aggregate(torch.stack([own, received]), info, self.states[node])
        self.counts["merges"] += 1
        return merged

    def receive(self, node: int, sender: int, model: torch.Tensor) -> None:
        if node in self.pending:
            self.flush()
        self.pending[node] = (sender, model)
        if not self.cfg.batch_exchanges:
            self.flush()

    def start_training(self, t: float, node: int, sender: int, model: torch.Tensor) -> None:
        """With a system model: a delivery waits while its node trains, then the node trains for
        ``compute_time``; its new model replaces the old one when that training ends (a TRAINED event).
        A delivery whose training would outlast the node's availability is lost."""
        assert self.system is not None
        if self.busy_until[node] > t:  # in the node's inbox until its current training ends
            self.push(float(self.busy_until[node]), DELIVER, sender, node, model)
            return
        trainings = 1 if self.cfg.order == "merge_update" else 2
        count = int(self.trained[node])
        samples = training_samples(
            self.sizes,
            self.exp.train,
            int(self.exp.cfg.seed),
            [count + k for k in range(trainings)],
            [node] * trainings,
        )
        end = t + sum(self.system.compute_time(node, s) for s in samples.tolist())
        if not self.system.available_through(node, t, end):
            self.counts["lost"] += 1
            return
        self.busy_until[node] = end
        self.push(end, TRAINED, node)
        self.receive(node, sender, model)

    def reads(self, node: int) -> None:
        """An event is about to read ``node``'s model: apply the deliveries waiting for it first (with a
        system model, a delivery's result shows only at its TRAINED event, which is the one reader that flushes)."""
        if node in self.pending:
            self.flush()

    def flush(self) -> None:
        """Train and merge every collected delivery; one backend call for all of them."""
        if not self.pending:
            return
        nodes = list(self.pending)
        senders = [self.pending[n][0] for n in nodes]
        models = [self.pending[n][1] for n in nodes]
        self.pending = {}
        if self.cfg.order == "merge_update":
            starts = [self.merge(n, self.params[n], m, s) for n, m, s in zip(nodes, models, senders, strict=True)]
            trained = self.train_nodes(nodes, torch.stack(starts))
            for k, n in enumerate(nodes):
                self.store(n, trained[k])
        else:  # update_merge: every node trains its own model, then the received one, in one call
            trained = self.train_nodes(nodes + nodes, torch.stack([self.params[n] for n in nodes] + models))
            k = len(nodes)
            for j, (n, s) in enumerate(zip(nodes, senders, strict=True)):
                self.store(n, self.merge(n, trained[j], trained[k + j], s))
        self.batch_sizes.append(len(nodes))

    def store(self, node: int, model: torch.Tensor) -> None:
        """A delivery's result: the node's model at once, or with a system model when its training ends."""
        if self.system is None:
            self.params[node] = model
        else:
            self.staged[node] = model

    # ---- the loop --------------------------------------------------------------------------------
    def run(
        self,
        log: MetricsLog,
        on_eval: Callable[[dict], None],
        resume: Any = None,
        eval_end: EvaluationEnd | None = None,
    ) -> torch.Tensor:
        """Run to ``rounds * wake_interval``; ``resume`` (node models, :func:`async_state.capture` state)
        continues a saved run, whose rows are already in ``log``.

        ``eval_end`` is called after every evaluation (checkpoints).
        """
        exp, cfg = self.exp, self.cfg
        horizon = int(exp.cfg.rounds) * cfg.wake_interval
        self.client_eval = ClientEvaluator.for_run(exp, log)  # eval.clients: each node on its own local test
        if resume is None:
            self.start_events(log)
            start = time.perf_counter()
        else:
            self.resume(resume.params, resume.state)
            start = time.perf_counter() - float(log.rows[-1]["wall_s"])  # wall time continues where it stopped
        while self.queue:
            t, _, kind, data = heapq.heappop(self.queue)
            if t > horizon:
                break
            if kind == WAKE:
                if self.cfg.protocol != "pull" and self.system is None:
                    self.reads(data[0])  # a push sends the node's current model
                self.wake(t, data[0])
            elif kind == DELIVER:
                sender, receiver, model = data
                if not self.is_online(receiver, t):
                    self.counts["lost"] += 1
                elif self.system is None:
                    self.receive(receiver, sender, model)
                else:
                    self.start_training(t, receiver, sender, model)
            elif kind == TRAINED:
                if data[0] in self.pending:  # its training's result is computed (a collected delivery: now)
                    self.flush()
                self.params[data[0]] = self.staged.pop(data[0])
            elif kind == REQUEST:
                asker, asked = data
                if self.is_online(asked, t):
                    if self.system is None:
                        self.reads(asked)
                    self.send(t, asked, asker, self.params[asked].clone())
                else:
                    self.counts["lost"] += 1
            elif kind == TOGGLE:
                node = data[0]
                self.online[node] = not self.online[node]
                mean = cfg.mean_online if self.online[node] else cfg.mean_offline
                self.push(t + self.rng.exponential(mean), TOGGLE, node)
            else:
                self.flush()
                row = {
                    "round": t / cfg.wake_interval,
                    "time": t,
                    **self.evaluate(),
                    **self.count_row(),
                    "time_s": t,
                    "wall_s": time.perf_counter() - start,
                }
                log.append(row)
                on_eval(row)
                if eval_end is not None:
                    eval_end(data[0], self.params, partial(async_state.capture, self, t, data[0]))
        self.flush()
        return self.params

    def start_events(self, log: MetricsLog) -> None:
        """The start of a fresh run: initial models, first wake-ups, churn, evaluation events, row 0."""
        exp, cfg = self.exp, self.cfg
        self.params = initial_node_params(exp.initial_params, exp.layout, self.n, cfg, int(exp.cfg.seed))
        for node in range(self.n):
            first = (
                self.rng.exponential(cfg.wake_interval)
                if cfg.clock == "exponential"
                else self.rng.uniform(0, cfg.wake_interval)
            )
            self.push(first, WAKE, node)
        if cfg.churn == "sessions":
            p_online = cfg.mean_online / (cfg.mean_online + cfg.mean_offline)
            self.online = self.rng.random(self.n) < p_online
            for node in range(self.n):
                mean = cfg.mean_online if self.online[node] else cfg.mean_offline
                self.push(self.rng.exponential(mean), TOGGLE, node)
        self.first_eval_seq = self.next_seq
        for k in range(1, evaluation_count(int(exp.cfg.rounds), cfg) + 1):
            self.push(k * cfg.eval_interval, EVALUATE, k)
        row0 = {"round": 0.0, "time": 0.0, **self.evaluate(), **self.count_row(), "time_s": 0.0, "wall_s": 0.0}
        log.append(row0)

    def resume(self, params: torch.Tensor, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; a run extended to more rounds gets its further evaluation events.

        Those get the sequence number the evaluation events of a fresh run get (``first_eval_seq``):
        above the initial events', below every event the loop adds, exactly as in the longer run.
        """
        async_state.restore(self, state, params)
        queued = [data[0] for _, _, kind, data in self.queue if kind == EVALUATE]
        last_queued = max(queued, default=int(state["evaluation"]))
        for k in range(last_queued + 1, evaluation_count(int(self.exp.cfg.rounds), self.cfg) + 1):
            heapq.heappush(self.queue, (k * self.cfg.eval_interval, self.first_eval_seq, EVALUATE, (k,)))

    def wake(self, t: float, node: int) -> None:
        self.push(self.next_wake(t), WAKE, node)
        if not self.is_online(node, t):
            return
        period = int(t // self.cfg.wake_interval)
        neighbours = self.topology.neighbors(node, period)
        if not neighbours:
            return
        peer = neighbours[int(self.rng.integers(len(neighbours)))]
        if self.cfg.protocol in ("push", "push_pull"):
            self.send(t, node, peer, self.params[node].clone())
        if self.cfg.protocol in ("pull", "push_pull"):
            self.send(t, node, peer, None)

    def count_row(self) -> dict[str, float]:
        """Counts since the previous evaluation (like the per-round figures of synchronous runs)."""
        c, last = self.counts, self.last_counts
        self.last_counts = dict(c)
        delta = {k: c[k] - last.get(k, 0) for k in c}
        stats, self.backend_stats = self.backend_stats, {key: 0 for key in self.backend_stats}
        row = {
            "num_participants": delta["trainings"],
            "messages_sent": delta["sent"],
            "messages_lost": delta["lost"],
            "merges": delta["merges"],
            "bytes_up": delta["bytes"],
            "bytes_down": delta["bytes"],
            **stats,
        }
        if self.loss_weight > 0:  # rows without trainings (the start) leave train_loss empty, as sync rounds do
            row["train_loss"] = self.loss_sum / self.loss_weight
        self.loss_sum, self.loss_weight = 0.0, 0.0
        return row

    def evaluate(self) -> dict[str, float]:
        data = self.exp.data
        row = node_metrics(
            self.exp.model,
            self.exp.layout,
            self.params,
            data.x_test,
            data.y_test,
            self.eval_sample,
            data.x_val,
            data.y_val,
        )
        if self.client_eval is not None:
            row.update(self.client_eval.nodes(self.params))
        return row
