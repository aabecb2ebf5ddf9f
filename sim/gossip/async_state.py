"""What an asynchronous gossip run carries past an evaluation, as data a checkpoint can hold.

A checkpoint is taken at an evaluation event, right after its row: the evaluation has flushed every
collected delivery (``gossip.batch_exchanges``), so no merge or training is half done, and the rest
of the run reads exactly the following, which :func:`capture` takes and :func:`restore` puts back:

- ``time`` and ``evaluation``: where the run stands (the evaluation's index counts the checkpoints);
- the event queue: every pending wake-up, churn toggle, evaluation, pull request and model message,
  with the model each message carries (a snapshot of its sender's model at sending time, which the
  sender may have changed since); each as arrays (times, sequence numbers, kinds, nodes) plus one
  ``[M, P]`` tensor of the distinct payloads (messages sent from an unchanged model share one row);
- ``next_seq``: the next event's sequence number (events are ordered by time, then sequence), and
  ``first_eval_seq``: the sequence number the evaluation events got, which the evaluations added
  when a resume extends the run get too, so they fall between the same events as in a longer run;
- ``rng``: the numpy bit generator state of the event stream (wake-ups, peers, delays, drops);
- ``trained``: every node's count of trainings (node k's n-th training uses the stream (k, n));
- ``states``: every node's strategy state;
- the churn state: ``online`` flags and, for ``probability`` churn, the slot they were drawn for;
- the counters behind a row's message and training columns, the backend's figures, and the loss
  accumulators of the next row's ``train_loss`` (all reset by the evaluation, kept for exactness);
- with a system model (simulated time, :mod:`sim.gossip.timing`): ``busy_until``, when each node's
  running training ends, and ``staged``, the models those trainings end with (installed by their
  TRAINED events, which are in the queue). A checkpoint without them (written before simulated time)
  resumes with no training running.

The node models themselves travel as the checkpoint's ``params`` ``[N, P]``. Not stored: the topology
(a function of the seed and the period), probability churn's draws (a function of the seed and the
slot), the evaluated sample of nodes and the data (functions of the seed).
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import numpy as np
import torch

DELIVER = 1  # the one event kind whose data carry a model (events.DELIVER)


class AsyncGossip(Protocol):
    """What :func:`capture` reads and :func:`restore` sets of a :class:`sim.gossip.events.AsyncGossip`.

    A protocol rather than an import: events.py imports this module, which needs no more than these fields.
    """

    params: torch.Tensor
    pending: dict[int, tuple[int, torch.Tensor]]
    next_seq: int
    first_eval_seq: int
    queue: list
    rng: Any  # numpy Generator
    trained: Any  # numpy int64 [N]
    states: list
    online: Any  # numpy bool [N]
    online_slot: int
    counts: dict[str, int]
    last_counts: dict[str, int]
    backend_stats: dict[str, float]
    loss_sum: float
    loss_weight: float
    busy_until: Any  # numpy float64 [N]
    staged: dict[int, torch.Tensor]
    codec: Any  # sim.gossip.compressed.ModelCodec | None: compress=...'s residuals


def capture(gossip: AsyncGossip, time: float, evaluation: int) -> dict[str, Any]:
    """The run's state after evaluation ``evaluation`` at ``time`` (the node models excepted)."""
    if gossip.pending:
        raise RuntimeError("a checkpoint while collected deliveries wait to be trained")
    return {
        "time": float(time),
        "evaluation": int(evaluation),
        "next_seq": gossip.next_seq,
        "first_eval_seq": gossip.first_eval_seq,
        "queue": pack_queue(gossip.queue, gossip.params),
        "rng": gossip.rng.bit_generator.state,
        "trained": gossip.trained.copy(),
        "states": gossip.states,
        "online": gossip.online.copy(),
        "online_slot": gossip.online_slot,
        "counts": dict(gossip.counts),
        "last_counts": dict(gossip.last_counts),
        "backend_stats": dict(gossip.backend_stats),
        "loss_sum": gossip.loss_sum,
        "loss_weight": gossip.loss_weight,
        "busy_until": gossip.busy_until.copy(),
        "staged_nodes": np.array(sorted(gossip.staged), dtype=np.int64),
        "staged": torch.stack([gossip.staged[k] for k in sorted(gossip.staged)])
        if gossip.staged
        else gossip.params.new_zeros((0, gossip.params.shape[1])),
        **(gossip.codec.carried() if gossip.codec is not None else {}),  # compress=...: the senders' residuals
    }


def restore(gossip: AsyncGossip, state: dict[str, Any], params: torch.Tensor) -> None:
    """Put a :func:`capture` back into a freshly built ``gossip``, whose models become ``params``."""
    gossip.params = params.clone()
    gossip.next_seq = int(state["next_seq"])
    gossip.first_eval_seq = int(state["first_eval_seq"])
    gossip.queue = unpack_queue(state["queue"])
    gossip.rng.bit_generator.state = state["rng"]
    gossip.trained = np.asarray(state["trained"], dtype=np.int64).copy()
    gossip.states = list(state["states"])
    gossip.online = np.asarray(state["online"], dtype=bool).copy()
    gossip.online_slot = int(state["online_slot"])
    gossip.counts = dict(state["counts"])
    gossip.last_counts = dict(state["last_counts"])
    gossip.backend_stats = dict(state["backend_stats"])
    gossip.loss_sum, gossip.loss_weight = float(state["loss_sum"]), float(state["loss_weight"])
    if gossip.codec is not None:
        gossip.codec.restore(state)
    if "busy_until" in state:
        gossip.busy_until = np.asarray(state["busy_until"], dtype=np.float64).copy()
        nodes = np.asarray(state["staged_nodes"], dtype=np.int64).tolist()
        gossip.staged = {k: state["staged"][j].clone() for j, k in enumerate(nodes)}


def pack_queue(queue: list, params: torch.Tensor) -> dict[str, Any]:
    """The heap as columns in its list order (so the heap invariant holds as stored), payloads deduplicated.

    ``first`` / ``second`` hold an event's nodes (WAKE, TOGGLE: the node; REQUEST: asker, asked;
    DELIVER: sender, receiver; EVALUATE: its index), ``payload`` the row of ``payloads`` a message
    carries (-1: none). Identical payloads (equal bytes) are stored once.
    """
    count = len(queue)
    times = np.empty(count, dtype=np.float64)
    seqs = np.empty(count, dtype=np.int64)
    kinds = np.empty(count, dtype=np.int64)
    first = np.full(count, -1, dtype=np.int64)
    second = np.full(count, -1, dtype=np.int64)
    payload = np.full(count, -1, dtype=np.int64)
    rows: list[torch.Tensor] = []
    seen: dict[bytes, int] = {}
    for i, (t, seq, kind, data) in enumerate(queue):
        times[i], seqs[i], kinds[i], first[i] = t, seq, kind, data[0]
        if len(data) > 1:
            second[i] = data[1]
        if kind == DELIVER:
            model = data[2].detach().cpu().contiguous()
            key = hashlib.blake2b(model.numpy().tobytes(), digest_size=20).digest()
            if key not in seen or not torch.equal(rows[seen[key]], model):
                seen[key] = len(rows)
                rows.append(model)
            payload[i] = seen[key]
    payloads = torch.stack(rows) if rows else params.new_zeros((0, params.shape[1]))
    return {
        "times": times,
        "seqs": seqs,
        "kinds": kinds,
        "first": first,
        "second": second,
        "payload": payload,
        "payloads": payloads,
    }


def unpack_queue(packed: dict[str, Any]) -> list:
    """The heap :func:`pack_queue` stored: the same entries in the same list order."""
    payloads = packed["payloads"]
    queue = []
    columns = zip(
        packed["times"].tolist(),
        packed["seqs"].tolist(),
        packed["kinds"].tolist(),
        packed["first"].tolist(),
        packed["second"].tolist(),
        packed["payload"].tolist(),
        strict=True,
    )
    for t, seq, kind, first, second, row in columns:
        if kind == DELIVER:
            data: tuple = (first, second, payloads[row].clone())
        elif second >= 0:
            data = (first, second)
        else:
            data = (first,)
        queue.append((t, seq, kind, data))
    return queue
