"""Synchronous gossip with the graph cut over Ray actors: the driver moves no node models.

With ``backend=ray`` (``backend.gossip=partitioned``, the default) the graph is cut into one part per
actor (:mod:`.partition`: METIS, balanced by each node's SGD steps, on the round-1 graph or one
period's union). Each :class:`~sim.backends.ray_partition.PartitionActor` keeps its nodes' models,
strategy states and extras for the whole run. Every round the driver

1. draws the round's graph and lost messages exactly as :class:`.sync.SyncGossip` does
   (:func:`.sync.round_messages`) and cuts them into per-actor plans: each actor's rows of the mixing
   matrix, and for each pair of actors the senders on the other side of a delivered cut edge;
2. calls ``publish`` on every actor, then ``merge`` with the other actors' published objects as
   arguments: Ray fetches them from the sender's object store straight into the receiver's;
3. gathers small numbers: loss sums, counts, and at evaluations the sampled nodes' accuracies, the
   parameter sums (for the mean model of the consensus distance) and the weight-variance sums.

Parts are fixed for the run (a node's state lives on its actor); with a time-varying graph each round's
cut edges are whichever of that round's edges join two parts. A model crosses to another actor once per
round however many of its neighbours live there (``models_between_actors``), while the message counts
(``messages_sent``...) stay those of the simulated protocol, as in the driver-side loop.

Faults: the ``merge`` call returns the part's state as a snapshot object that stays in the object
store of the actor's machine. When an actor dies, a new one starts from its last snapshot and re-runs
the round's calls that were lost (training is a function of the node, the round and the seed, so the
replayed round gives the same numbers); the round's ``retries`` column counts replacements.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray
import torch

from sim.backends.ray_backend import ACTOR_LOST, _reraise
from sim.backends.ray_partition import numpy_tree, payload_bytes, torch_tree
from sim.errors import RunError
from sim.results import MetricsLog
from sim.run_metrics import accuracy_columns, variance_columns

from .compressed import message_bytes
from .config import GossipConfig
from .nodes import evaluated_nodes
from .partition import cut_summary, partition_edges, partition_nodes
from .sync import exchange_columns, round_messages
from .timing import RoundClock

log = logging.getLogger("sim.gossip")


@dataclass
class RoundPlan:
    """What each actor is told in one round: its rows of the mixing matrix and what it sends where."""

    receives: list[Any]  # per actor: rows (local), cols (global), values, lost (or its ObjectRef)
    sends: list[Any]  # per source: [destination] -> global ids of the rows sent, sorted (or its ObjectRef)
    sources: list[list[int]]  # per destination: the actors it receives from, ascending
    nbytes: int  # the plan's size: what the driver puts into the object store this round


def round_plan(rows, cols, values, lost, parts: np.ndarray, local: np.ndarray, k: int) -> RoundPlan:
    """Cut one round's messages into per-actor plans (numpy, O(entries))."""
    rows, cols, values, lost = rows.numpy(), cols.numpy(), values.numpy(), lost.numpy()
    part_r, part_c = parts[rows], parts[cols]
    order = np.argsort(part_r, kind="stable")  # entries grouped by receiving actor, W's order kept inside
    bounds = np.searchsorted(part_r[order], np.arange(k + 1))
    receives = []
    for b in range(k):
        sel = order[bounds[b] : bounds[b + 1]]
        receives.append({"rows": local[rows[sel]], "cols": cols[sel], "values": values[sel], "lost": lost[sel]})
    cross = (part_r != part_c) & ~lost
    sends: list[list[np.ndarray | None]] = [[None] * k for _ in range(k)]
    sources: list[list[int]] = [[] for _ in range(k)]
    if cross.any():
        # one int64 key per (source actor, destination actor, sender), sorted and deduplicated: a 1-D sort
        # is ~90x faster than np.unique(axis=1) on the millions of cut messages of a 10^6-node graph
        n = len(parts)
        key = np.sort((part_c[cross].astype(np.int64) * k + part_r[cross]) * n + cols[cross])
        key = key[np.r_[True, key[1:] != key[:-1]]]
        pair, sender = key // n, key % n
        starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
        ends = [*starts[1:], len(key)]
        for lo, hi in zip(starts, ends, strict=True):
            a, b = divmod(int(pair[lo]), k)
            sends[a][b] = np.ascontiguousarray(sender[lo:hi])
            sources[b].append(a)
    nbytes = sum(v.nbytes for plan in receives for v in plan.values())
    nbytes += sum(ids.nbytes for row in sends for ids in row if ids is not None)
    return RoundPlan(receives, sends, [sorted(s) for s in sources], nbytes)


class PartitionedSyncGossip:
    def __init__(self, exp, topology, cfg: GossipConfig):
        self.exp, self.topology, self.cfg = exp, topology, cfg
        self.backend = exp.backend
        self.n = exp.data.num_clients
        self.sizes = exp.data.client_sizes
        self.k = min(self.backend.pool_size, self.n)
        self.bytes_per_model = message_bytes(exp)  # the shared entries (compress and CHOCO run in the driver)
        self.extras_row_bytes = 0
        seed = int(exp.cfg.seed)
        self.eval_sample = evaluated_nodes(self.n, cfg.eval_nodes, seed)
        costs = np.asarray(self.backend.client_costs(), dtype=np.int64)
        edges = partition_edges(topology, int(exp.cfg.rounds))
        self.parts = partition_nodes(self.n, edges, self.k, self.backend.partition, costs, seed)
        self.members = [np.flatnonzero(self.parts == a) for a in range(self.k)]
        self.local = np.empty(self.n, dtype=np.int64)
        for nodes in self.members:
            self.local[nodes] = np.arange(len(nodes))
        self.cut = cut_summary(self.parts, edges, self.k)
        self.actors: list[Any] = []
        self.snapshots: list[Any] = []  # per actor: the ObjectRef of its last snapshot, or its start object
        self.stats: dict[str, float] = {}
        self._eval_bytes = 0  # what the last evaluation moved through the driver
        self._row: dict[str, Any] | None = None  # the row that a gather (checkpoint, run's end) is counted in
        self.received: list[dict[str, int]] = []  # per actor: the last round's counts (tests read them)
        self._static_plan: tuple[torch.Tensor, RoundPlan] | None = None  # (mixing matrix, its plan) when no loss
        self._gathered: tuple[list, list[dict]] | None = None  # (snapshot refs, their contents) of a checkpoint
        self.clock = RoundClock(exp, cfg.order)  # simulated seconds per round, as the driver-side loop counts them
        self.messages: tuple[torch.Tensor, torch.Tensor] | None = None  # the last plan's (mixing matrix, lost entries)

    # ---- actors -------------------------------------------------------------------------------
    def _start(self, resume) -> None:
        exp = self.exp
        data = exp.data
        test = ray.put(
            {
                "x": data.x_test.contiguous().numpy(),
                "y": data.y_test.contiguous().numpy(),
                "x_val": data.x_val.contiguous().numpy(),
                "y_val": data.y_val.contiguous().numpy(),
            }
        )
        self._test = test
        parts = []
        for a, nodes in enumerate(self.members):
            start: dict[str, Any]
            if resume is not None:
                state = resume.state
                start = {
                    "snapshot": {
                        "nodes": nodes,
                        "params": resume.params[torch.from_numpy(nodes)].contiguous().numpy(),
                        "states": [numpy_tree(state["states"][i]) for i in nodes.tolist()],
                        "extras": {k: v[torch.from_numpy(nodes)].numpy() for k, v in state["extras"].items()},
                    }
                }
            else:
                start = {
                    "initial": exp.initial_params.contiguous().numpy(),
                    "gossip": self.cfg,
                    "seed": int(exp.cfg.seed),
                    "initial_extras": self.cfg.order == "merge_update" and bool(exp.strategy.requires),
                }
            parts.append({"index": a, "nodes": nodes, "num_nodes": self.n, "strategy": exp.strategy})
            self.snapshots.append(ray.put(start))
        self._parts = parts
        self.actors = [self.backend.start_partition_actor(test, parts[a], self.snapshots[a]) for a in range(self.k)]
        self.backend.partition_actors = self.actors
        ready = ray.get([a.ready.remote() for a in self.actors], timeout=self.backend.start_timeout_s)
        self.extras_row_bytes = ray.get(self.actors[0].extras_row_bytes.remote())
        sizes = [len(m) for m in self.members]
        log.info(
            "partitioned gossip: %d actors own %s nodes (%s, device %s); %d of %d edges (%.1f%%) cross actors",
            self.k,
            "/".join(map(str, sizes)),
            self.backend.partition,
            "/".join(sorted({r["device"] for r in ready})),
            self.cut["cut_edges"],
            self.cut["edges"],
            100 * self.cut["cut_fraction"],
        )

    def _replace(self, a: int) -> None:
        """A new actor for part ``a`` from its last snapshot (or its start object, before any round)."""
        self.actors[a] = self.backend.start_partition_actor(self._test, self._parts[a], self.snapshots[a])
        self.backend.partition_actors = self.actors

    def _dead(self) -> list[int]:
        """The actors that are gone. ``ready`` runs after the actor's queued calls, which all end (a call
        waiting on a dead actor's object fails), so no timeout is needed and a long round is no death."""
        dead = []
        for a, actor in enumerate(self.actors):
            try:
                ray.get(actor.ready.remote())
            except ACTOR_LOST:
                dead.append(a)
        return dead

    # ---- one round ----------------------------------------------------------------------------
    def _plan(self, round_: int, seed: int) -> tuple[RoundPlan, int, int]:
        """The round's plan with its parts already in the object store (passed to the actors by reference);
        returns (plan, messages sent, messages lost). A static graph without losses has one plan for the
        whole run: it is cut and put once, and later rounds send the actors nothing but references."""
        w, lost_mask = round_messages(self.topology, round_, self.cfg.drop_prob, seed)
        self.messages = (w, lost_mask)
        rows, cols = w.indices()
        sent, lost = int((rows != cols).sum()), int(lost_mask.sum())
        if not lost and self._static_plan is not None and self._static_plan[0] is w:
            return replace(self._static_plan[1], nbytes=0), sent, lost
        plan = round_plan(rows, cols, w.values(), lost_mask, self.parts, self.local, self.k)
        plan.receives = [ray.put(r) for r in plan.receives]
        plan.sends = [ray.put(row) for row in plan.sends]
        if not lost:
            self._static_plan = (w, plan)
        return plan, sent, lost

    def _round(self, round_: int, plan: RoundPlan) -> tuple[list[dict], list[dict], int]:
        """Both calls on every actor; an actor that dies is replaced from its snapshot and the calls
        that were lost run again. Returns (publish stats, merge stats, replacements)."""
        k, train_first = self.k, self.cfg.order == "update_merge"
        pub: list[Any] = [None] * k
        mer: list[Any] = [None] * k

        def publish(a: int) -> None:
            pub[a] = self.actors[a].publish.options(num_returns=k + 1).remote(round_, train_first, plan.sends[a])

        def merge(b: int) -> None:
            args = [pub[s][b + 1] for s in plan.sources[b]]
            mer[b] = (
                self.actors[b].merge.options(num_returns=2).remote(round_, plan.receives[b], not train_first, *args)
            )

        for a in range(k):
            publish(a)
        for b in range(k):
            merge(b)
        hook = type(self.backend).after_submit
        if hook is not None:
            hook(self.backend, round_)
        replaced = 0
        while True:
            try:
                pub_stats = ray.get([p[0] for p in pub])
                merge_stats = ray.get([m[0] for m in mer])
                break
            except ACTOR_LOST:
                pass
            except ray.exceptions.RayTaskError as exc:
                _reraise(exc)
            dead = self._dead()
            if not dead:
                raise RunError(f"round {round_}: a partition actor's result was lost while every actor lives")
            replaced += len(dead)
            if replaced > self.backend.max_retries:
                raise RunError(
                    f"round {round_}: {replaced} partition actors died (backend.max_retries="
                    f"{self.backend.max_retries}); resume the run from its last checkpoint with resume=true"
                )
            failed = [b for b in range(k) if b in dead or not _succeeded(mer[b][0])]
            for a in dead:
                log.warning("partition actor %d died in round %d; restarting it from its snapshot", a, round_)
                self._replace(a)
                publish(a)
            for b in failed:
                merge(b)
        self.snapshots = [m[1] for m in mer]
        return pub_stats, merge_stats, replaced

    # ---- the run ------------------------------------------------------------------------------
    def run(
        self,
        log_: MetricsLog,
        on_round: Callable[[dict], None],
        resume: Any = None,
        round_end: Callable[[int, Any, Any], None] | None = None,
    ) -> torch.Tensor:
        exp, cfg = self.exp, self.cfg
        rounds, eval_every, seed = int(exp.cfg.rounds), int(exp.cfg.eval_every), int(exp.cfg.seed)
        self._start(resume)
        if resume is not None:
            first = resume.round + 1
            start = time.perf_counter() - float(log_.rows[-1]["wall_s"])
            clock = float(log_.rows[-1].get("time_s", resume.round))  # a checkpoint from before time_s: unit rounds
        else:
            first, start, clock = 1, time.perf_counter(), 0.0
            evaluation = self.evaluate()
            driver = {"driver_bytes": float(self._eval_bytes)}
            row0 = {"round": 0, **evaluation, **exchange_columns(0, 0, 0, 0), "time_s": 0.0, **driver, "wall_s": 0.0}
            log_.append(row0)
        for round_ in range(first, rounds + 1):
            plan, sent, lost = self._plan(round_, seed)
            message_bytes = self.bytes_per_model + self.extras_row_bytes  # merge_update: last training's extras
            pub_stats, merge_stats, replaced = self._round(round_, plan)
            trained = pub_stats if cfg.order == "update_merge" else merge_stats
            if cfg.order == "update_merge":
                message_bytes = self.bytes_per_model + trained[0].get("extras_row_bytes", 0)
            self.extras_row_bytes = trained[0].get("extras_row_bytes", self.extras_row_bytes)
            assert self.messages is not None
            clock += self.clock.round_time(round_, *self.messages, message_bytes)
            weight_sum = sum(s["weight_sum"] for s in trained)
            self.received = [
                {k: int(s[k]) for k in ("models_received", "messages_received", "bytes_received")} for s in merge_stats
            ]
            self.stats = {
                "retries": float(replaced),
                "models_between_actors": float(sum(r["models_received"] for r in self.received)),
                "bytes_between_actors": float(sum(r["bytes_received"] for r in self.received)),
                "driver_bytes": float(plan.nbytes + payload_bytes((pub_stats, merge_stats))),
            }
            row = {
                "round": round_,
                "train_loss": sum(s["loss_sum"] for s in trained) / weight_sum if weight_sum else np.nan,
                **exchange_columns(self.n, sent, lost, message_bytes),
                **self.stats,
                "time_s": clock,
            }
            if round_ % eval_every == 0 or round_ == rounds:
                row.update(self.evaluate())
                row["driver_bytes"] += self._eval_bytes
            row["wall_s"] = time.perf_counter() - start
            log_.append(row)
            # the models gathered after this round (a checkpoint's, the run's end) pass through the driver in it:
            # they are added to the row before the checkpoint stores it and before on_round reports it
            self._row = row
            try:
                if round_ == rounds:
                    self._gather()
                if round_end is not None:
                    round_end(round_, self.node_params, self.carried)
            finally:
                self._row = None
                on_round(row)
        return self.node_params()

    # ---- evaluation and gathering -------------------------------------------------------------
    def _call_all(self, method: str, args: list[tuple]) -> list[Any]:
        """One call per actor, replacing dead actors from their snapshots (their state at a round's end)."""
        for _ in range(self.backend.max_retries + 1):
            refs = [getattr(actor, method).remote(*a) for actor, a in zip(self.actors, args, strict=True)]
            try:
                return ray.get(refs)
            except ACTOR_LOST:
                for a in self._dead():
                    self._replace(a)
            except ray.exceptions.RayTaskError as exc:
                _reraise(exc)
        raise RunError(f"partition actors kept dying during {method} (backend.max_retries={self.backend.max_retries})")

    def evaluate(self) -> dict[str, float]:
        """The same columns as :func:`.nodes.node_metrics`, from each actor's sampled nodes and sums."""
        sample = self.eval_sample
        args = [(None if sample is None else np.intersect1d(nodes, sample.numpy()),) for nodes in self.members]
        parts = self._call_all("evaluate", args)
        # through the driver: the sample ids out, the accuracies and sums back, the mean model out to every actor
        # and one distance sum back from each
        self._eval_bytes = payload_bytes(args) + payload_bytes(parts) + self.k * (self.exp.layout.size * 4 + 8)
        ids = np.concatenate([nodes if a[0] is None else a[0] for nodes, a in zip(self.members, args, strict=True)])
        order = np.argsort(ids, kind="stable")
        acc = torch.from_numpy(np.concatenate([p["acc"] for p in parts])[order])
        loss = torch.from_numpy(np.concatenate([p["loss"] for p in parts])[order])
        row = accuracy_columns(acc, loss)
        if len(self.exp.data.y_val):  # the evaluated nodes' mean accuracy on the validation split, as node_metrics
            row["val_accuracy"] = float(torch.from_numpy(np.concatenate([p["val_acc"] for p in parts])[order]).mean())
        mean = (sum(p["param_sum"] for p in parts) / self.n).astype(np.float32)
        row["consensus_distance"] = sum(self._call_all("consensus", [(mean,)] * self.k)) / self.n
        variances = torch.from_numpy(sum(p["variance_sum"] for p in parts) / self.n).to(torch.float32)
        row.update(variance_columns(self.exp.layout, variances))
        return row

    def _gather(self) -> list[dict]:
        """Every part's last snapshot (a resumed run that has not yet run a round: its start objects);
        fetched once per round however many callers (a checkpoint wants the models and the states)."""
        if self._gathered is None or self._gathered[0] is not self.snapshots:
            self._gathered = (self.snapshots, [s.get("snapshot", s) for s in ray.get(self.snapshots)])
            if self._row is not None:  # counted in the round it follows (none: a resumed run's start objects)
                self._row["driver_bytes"] += payload_bytes(self._gathered[1])
        return self._gathered[1]

    def node_params(self) -> torch.Tensor:
        """``[N, P]``: every node's model, gathered from the snapshots (checkpoints and the run's end only)."""
        out = torch.empty((self.n, self.exp.layout.size), dtype=self.exp.initial_params.dtype)
        for nodes, snap in zip(self.members, self._gather(), strict=True):
            out[torch.from_numpy(nodes)] = torch.from_numpy(np.array(snap["params"]))
        return out

    def carried(self) -> dict[str, Any]:
        """The same carried state as :meth:`.sync.SyncGossip.carried`, so checkpoints are interchangeable."""
        states: list[Any] = [None] * self.n
        extras: dict[str, torch.Tensor] = {}
        for nodes, snap in zip(self.members, self._gather(), strict=True):
            for i, s in zip(nodes.tolist(), snap["states"], strict=True):
                states[i] = torch_tree(s)
            for name, value in snap["extras"].items():
                value = torch.from_numpy(np.array(value))
                if name not in extras:
                    extras[name] = value.new_empty((self.n, *value.shape[1:]))
                extras[name][torch.from_numpy(nodes)] = value
        return {"states": states, "extras": extras}


def _succeeded(ref: Any) -> bool:
    try:
        ray.get(ref)
        return True
    except (*ACTOR_LOST, ray.exceptions.RayTaskError):
        return False
