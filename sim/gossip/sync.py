"""Synchronous gossip (D-PSGD, Lian et al. 2017): every node trains, then merges with its neighbours.

Each round every node sends its model to each neighbour of that round's graph; each message is lost
with probability ``gossip.drop_prob``. A node merges its own model with what it received through the
strategy (``info.self_index = 0``, ``info.mixing_weights`` its row of the topology's mixing matrix,
with the weight of lost messages moved to itself so the row still sums to one); a node that
received nothing keeps its model. Stateless rules that define ``aggregate_all`` (gossip_avg, and
variance_corrected with its per-node, per-layer rescaling) merge all nodes at once from the sparse
matrix of what each node received (``received_matrix``), as a few sparse ``[N, N] @ [N, P]``
products; they give the same numbers as the per-node calls, which every other rule gets.

``gossip.order``: ``update_merge`` trains then merges (D-PSGD); ``merge_update`` merges then trains.
A rule that needs per-model extras (fisher_merge) merges with the extras of the models it merges:
those the backend computed at the end of the round's training, or, for ``merge_update``'s first merge
(before any training), extras of the initial models computed before round 1. A message carries its
model and the sender's extras; ``bytes_up`` / ``bytes_down`` count both.

With an attack (sim/attacks, docs/attacks.md) Byzantine nodes are nodes of the graph: each honest
node merges, in place of each Byzantine neighbour's model, a model crafted for it from its delivered
honest neighbours' models (so the per-node path runs, with ``info.num_byzantine`` set); Byzantine
nodes do not merge, and accuracy, consensus and training loss are over honest nodes only. Label
flippers instead train on flipped labels and follow the protocol (no crafted rows).

Every row has ``time_s``: the rounds' simulated seconds added up, each round's by :mod:`.timing` from the
system model (the slowest node's training and exchanges; 1.0 with ``system=none``). Time changes no other
number of the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sim.attacks import with_byzantine
from sim.backends.base import client_extras
from sim.checks import check_finite
from sim.client_eval import ClientEvaluator
from sim.node_models import initial_node_params, merge_info, received_from_entries
from sim.results import MetricsLog
from sim.run_metrics import node_metrics
from sim.seeding import numpy_rng

from .choco import ChocoGossip
from .compressed import ModelCodec, message_bytes
from .config import GossipConfig
from .nodes import evaluated_nodes
from .timing import RoundClock

__all__ = ["SyncGossip", "exchange_columns", "merge_info", "received_from_entries", "received_matrix", "round_messages"]


def received_matrix(w: torch.Tensor, lost: torch.Tensor) -> torch.Tensor:
    """The round's mixing matrix with lost messages removed and their weight moved to the diagonal.

    Row i then holds exactly what node i merges: its own model with weight (own + lost) and each
    model it received with its mixing weight; a node that received nothing has a lone 1 on the
    diagonal. Every node's diagonal entry is stored, also when its weight is zero.
    """
    rows, cols = w.indices()
    return received_from_entries(rows, cols, w.values(), lost, w.shape[0])


def round_messages(topology, round_: int, drop_prob: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The round's coalesced mixing matrix and which of its entries are lost messages.

    The loss draws come from ``("loss", round)``, one per stored entry in coalesced order, so every
    schedule that builds the round from this function loses the same messages (the partitioned
    Ray loop in :mod:`.partitioned` does).
    """
    w = topology.mixing_matrix(round_).coalesce()
    rows, cols = w.indices()
    lost = torch.zeros(len(rows), dtype=torch.bool)
    if drop_prob > 0:
        draws = torch.from_numpy(numpy_rng(seed, "loss", round_).random(len(rows)))
        lost = (rows != cols) & (draws < drop_prob)
    return w, lost


def exchange_columns(participants: int, sent: int, lost: int, message_bytes: int) -> dict[str, int]:
    """A round's message columns: what the simulated protocol sent and delivered (every sync gossip loop)."""
    return {
        "num_participants": participants,
        "bytes_up": sent * message_bytes,
        "bytes_down": (sent - lost) * message_bytes,
        "messages_sent": sent,
        "messages_lost": lost,
    }


class SyncGossip:
    def __init__(self, exp, topology, cfg: GossipConfig):
        self.exp, self.topology, self.cfg = exp, topology, cfg
        self.n = exp.data.num_clients
        self.ids = torch.arange(self.n)
        self.sizes = exp.data.client_sizes
        self.states = [exp.strategy.init_state(exp.initial_params, self.n) for _ in range(self.n)]
        self.validate = exp.validation_fn() if exp.strategy.needs_validation else None
        self.extras: dict[str, torch.Tensor] = {}  # per-node extras of the last training (e.g. Fisher)
        self.stats: dict[str, float] = {}  # the backend's numbers about the last training (e.g. retries)
        self.bytes_per_model = message_bytes(exp)  # compress=...: the encoded size (sim/gossip/compressed.py)
        self.choco = ChocoGossip.for_run(exp)  # strategy=choco: the public copies (sim/gossip/choco.py)
        self.codec = ModelCodec.for_run(exp)  # compress=... with a merge rule: compressed models (naive)
        self.eval_sample = evaluated_nodes(self.n, cfg.eval_nodes, int(exp.cfg.seed))
        self.fast_path = True
        # the static graph's received matrix, built once for aggregate_all; tests turn the fast path off to compare
        self._received: tuple[torch.Tensor, torch.Tensor] | None = None
        self.attack = getattr(exp, "attack", None)  # Byzantine nodes (sim/attacks), or None
        self.byzantine_messages = 0  # crafted or label-flipped models that reached honest nodes in the last mix
        self.clock = RoundClock(exp, cfg.order)  # simulated seconds per round (sim/gossip/timing.py)
        self.messages: tuple[torch.Tensor, torch.Tensor] | None = None  # the last mix's (mixing matrix, lost entries)
        self.client_eval: ClientEvaluator | None = None  # eval.clients: set by run() (it needs the log)

    def train(self, params: torch.Tensor, round_: int) -> tuple[torch.Tensor, torch.Tensor]:
        # a node trains towards its own start model (FedProx); rules with per-client state need a server
        correction = self.exp.strategy.client_correction(self.ids, params, None)
        batch = self.exp.backend.train(self.ids, params, round_, self.exp.strategy.requires, correction=correction)
        check_finite(batch.params, batch.client_ids, round_, "models")
        self.extras = batch.extras
        self.stats = batch.stats
        return batch.params, batch.train_loss

    def initial_extras(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """The extras of the nodes' initial models, for a first merge that comes before any training."""
        return client_extras(self.exp.setup, self.ids.tolist(), params, self.exp.strategy.requires)

    def bytes_per_message(self) -> int:
        """One model plus the sender's extras of the last training (e.g. its Fisher diagonal)."""
        return self.bytes_per_model + sum(v[0].numel() * v.element_size() for v in self.extras.values())

    def mix(self, params: torch.Tensor, round_: int) -> tuple[torch.Tensor, int, int]:
        """Merge every node with its neighbours; returns (new params, messages sent, messages lost)."""
        w, lost_mask = round_messages(self.topology, round_, self.cfg.drop_prob, int(self.exp.cfg.seed))
        self.messages = (w, lost_mask)
        rows, cols = w.indices()
        values = w.values()
        off_diag = rows != cols
        sent = int(off_diag.sum())
        lost = int(lost_mask.sum())
        if self.choco is not None:  # CHOCO: consensus on the copies, then compressed differences, all nodes at once
            new = self.choco.mix(params, w, round_)
            check_finite(new, self.ids, round_, "the merged parameters")
            return new, sent, lost
        decoded = None if self.codec is None else self.codec.encode(params, self.ids, "gossip", round_)
        strategy = self.exp.strategy
        attack = self.attack
        crafted = attack is not None and attack.crafted
        silent = attack.mask if attack is not None and crafted else None  # nodes that send crafted models, not merge
        if attack is not None:  # delivered messages from a Byzantine sender (column) to an honest receiver (row)
            self.byzantine_messages = int((off_diag & ~lost_mask & attack.mask[cols] & ~attack.mask[rows]).sum())
        if self.fast_path and hasattr(strategy, "aggregate_all") and not crafted and decoded is None:
            if lost:
                received = received_matrix(w, lost_mask).to(params.device)  # backend.device: where the models are
            else:  # a static graph without losses: the same matrix every round, built once
                if self._received is None or self._received[0] is not w:
                    self._received = (w, received_matrix(w, lost_mask).to(params.device))
                received = self._received[1]
            new = strategy.aggregate_all(received, params, self.exp.layout)
            check_finite(new, self.ids, round_, "the merged parameters")
            return new, sent, lost
        kept = ~lost_mask
        new = params.clone()
        bounds = torch.searchsorted(rows, torch.arange(self.n + 1))
        for i in range(self.n):
            if silent is not None and bool(silent[i]):
                continue  # a Byzantine node's own model is never sent; it need not merge
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            r_cols, r_vals, r_kept = cols[lo:hi], values[lo:hi], kept[lo:hi]
            others = (r_cols != i) & r_kept
            if not bool(others.any()):
                continue  # nothing received: the node keeps its model
            senders = r_cols[others]
            self_weight = float(r_vals[~others].sum())  # own weight plus that of lost messages
            members = torch.cat([torch.tensor([i]), senders])
            if attack is not None:
                models, num_byzantine = attack.received(params, i, senders, round_)
            elif decoded is not None:  # its own exact model and the decoded messages
                models = torch.cat([params[i : i + 1], decoded[senders]])
            else:
                models = params[members]
            info = merge_info(
                members,
                self.sizes[members],
                round_,
                self.n,
                self.exp.layout,
                params[i],
                torch.cat([torch.tensor([self_weight]), r_vals[others]]),
                {k: v[members] for k, v in self.extras.items()},
                self.validate,
            )
            if attack is not None:
                info = with_byzantine(info, num_byzantine)
            new[i], self.states[i] = strategy.aggregate(models, info, self.states[i])
        check_finite(new, self.ids, round_, "the merged parameters")
        return new, sent, lost

    def run(
        self,
        log: MetricsLog,
        on_round: Callable[[dict], None],
        resume: Any = None,
        round_end: Callable[[int, torch.Tensor, Any], None] | None = None,
    ) -> torch.Tensor:
        """Run the rounds; ``resume`` (round, node models, :meth:`carried` state) continues a saved run.

        ``round_end(round, node models, carried state)`` is called after every round (checkpoints).
        """
        exp, cfg = self.exp, self.cfg
        rounds, eval_every = int(exp.cfg.rounds), int(exp.cfg.eval_every)
        self.client_eval = ClientEvaluator.for_run(exp, log)
        if resume is not None:
            first, params = resume.round + 1, resume.params.clone()
            self.states, self.extras = resume.state["states"], resume.state["extras"]
            for part in (self.choco, self.codec):
                if part is not None:
                    part.restore(resume.state)
            start = time.perf_counter() - float(log.rows[-1]["wall_s"])
            clock = float(log.rows[-1].get("time_s", resume.round))  # a checkpoint from before time_s: unit rounds
        else:
            first = 1
            params = initial_node_params(exp.initial_params, exp.layout, self.n, cfg, int(exp.cfg.seed))
            if self.choco is not None:
                self.choco.start(params)
            start, clock = time.perf_counter(), 0.0
            row0 = {"round": 0, **self.evaluate(params), **exchange_columns(0, 0, 0, 0), "time_s": 0.0}
            log.append({**row0, **self.attack_columns(), "wall_s": 0.0})
            if cfg.order == "merge_update" and exp.strategy.requires:
                self.extras = self.initial_extras(params)
        for round_ in range(first, rounds + 1):
            if cfg.order == "update_merge":
                params, losses = self.train(params, round_)
                message_bytes = self.bytes_per_message()
                params, sent, lost = self.mix(params, round_)
            else:
                message_bytes = self.bytes_per_message()
                params, sent, lost = self.mix(params, round_)
                params, losses = self.train(params, round_)
            assert self.messages is not None
            clock += self.clock.round_time(round_, *self.messages, message_bytes)
            ok = ~torch.isnan(losses)
            if self.attack is not None:  # the honest nodes' training loss
                ok &= ~self.attack.mask
            weights = self.sizes.to(torch.float64)[ok]
            row = {
                "round": round_,
                "train_loss": float((weights * losses[ok].double()).sum() / weights.sum()) if ok.any() else np.nan,
                **exchange_columns(self.n, sent, lost, message_bytes),
                **self.attack_columns(),
                **self.stats,
                "time_s": clock,
            }
            if round_ % eval_every == 0 or round_ == rounds:
                row.update(self.evaluate(params))
            row["wall_s"] = time.perf_counter() - start
            log.append(row)
            on_round(row)
            if round_end is not None:
                round_end(round_, params, self.carried())
        return params

    def carried(self) -> dict[str, Any]:
        """What the next round reads besides the node models: per-node strategy states, and the extras
        of the last training (merge_update merges with them before it trains)."""
        parts = [p.carried() for p in (self.choco, self.codec) if p is not None]  # CHOCO's copies, residuals
        return {"states": self.states, "extras": self.extras, **{k: v for part in parts for k, v in part.items()}}

    def attack_columns(self) -> dict[str, int]:
        """``num_byzantine`` (Byzantine nodes, all of which take part) and ``byzantine_messages`` (their
        models that reached honest nodes in the round's merge); nothing without an attack."""
        if self.attack is None:
            return {}
        return {"num_byzantine": len(self.attack.ids), "byzantine_messages": self.byzantine_messages}

    def evaluate(self, params: torch.Tensor) -> dict[str, float]:
        """Test accuracy, consensus and weight variance of the honest nodes (all nodes without an attack)."""
        data = self.exp.data
        sample = self.eval_sample
        all_params = params
        if self.attack is not None:
            honest = self.attack.honest_ids
            params = params[honest]
            if sample is not None:  # the sampled nodes that are honest, as positions among the honest ones
                sample = torch.nonzero(torch.isin(honest, sample)).flatten()
                sample = sample if len(sample) else None
        row = node_metrics(
            self.exp.model, self.exp.layout, params, data.x_test, data.y_test, sample, data.x_val, data.y_val
        )
        if self.client_eval is not None:  # each node's own model on its own local test (the honest ones)
            row.update(self.client_eval.nodes(all_params))
        return row
