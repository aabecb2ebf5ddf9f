"""What an asynchronous FL run carries past a row, as data a checkpoint can hold.

A checkpoint is taken right after a row (one every ``eval_every`` server updates, counted by
``checkpoint.every`` in rows), between two events. The rest of the run reads exactly this, which
:func:`capture` takes and :func:`restore` puts back:

- ``time``, ``version`` (server updates applied) and ``evaluation`` (the row's index);
- the event queue: every pending task end and the retry of a slot waiting for a client (times,
  sequence numbers, kinds, task ids), ``next_seq`` and ``next_task``, and ``retry_at``;
- the tasks in flight: client, task count, start version, whether it fails, and the start model of
  each version in use (stored once per version); tasks already trained keep their trained model,
  loss and sample count, so that the resumed run trains the others in the same batches as the
  uninterrupted one;
- FedBuff's buffer (clients, deltas, start versions, sample counts);
- ``rng``: the generator state of the client draws; ``trained``: every client's task count;
- the strategy's state, and the accumulators of the next row (reset by the row, kept for exactness).

The global model travels as the checkpoint's ``params``. ``busy`` is not stored: it is the set of
the tasks' clients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def fresh_accumulators() -> dict[str, Any]:
    """The counts behind a row, zero: updates, staleness, losses, bytes, failed tasks, training calls, backend stats."""
    return {
        "updates": 0,
        "staleness_sum": 0,
        "staleness_max": 0,
        "failed": 0,
        "train_calls": 0,
        "bytes_up": 0,
        "bytes_down": 0,
        "loss_sum": 0.0,
        "loss_weight": 0,
        "stats": {},
    }


def capture(run, evaluation: int) -> dict[str, Any]:
    """The run's state after row ``evaluation`` (the global model excepted)."""
    tasks = list(run.tasks.items())
    versions = sorted({task.version for _, task in tasks})
    starts = {v: next(task.start for _, task in tasks if task.version == v) for v in versions}
    width = run.params.shape[0]
    trained = [task for _, task in tasks if task.params is not None]
    return {
        "time": float(run.time),
        "version": int(run.version),
        "evaluation": int(evaluation),
        "next_seq": int(run.next_seq),
        "next_task": int(run.next_task),
        "retry_at": -1.0 if run.retry_at is None else float(run.retry_at),
        "queue": {
            "times": np.array([e[0] for e in run.queue], dtype=np.float64),
            "seqs": np.array([e[1] for e in run.queue], dtype=np.int64),
            "kinds": np.array([e[2] for e in run.queue], dtype=np.int64),
            "tasks": np.array([e[3] for e in run.queue], dtype=np.int64),
        },
        "tasks": {
            "ids": np.array([k for k, _ in tasks], dtype=np.int64),
            "client": np.array([t.client for _, t in tasks], dtype=np.int64),
            "count": np.array([t.count for _, t in tasks], dtype=np.int64),
            "version": np.array([t.version for _, t in tasks], dtype=np.int64),
            "failed": np.array([t.failed for _, t in tasks], dtype=bool),
            "trained": np.array([t.params is not None for _, t in tasks], dtype=bool),
            "loss": np.array([t.loss for t in trained], dtype=np.float64),
            "samples": np.array([t.samples for t in trained], dtype=np.int64),
            "params": torch.stack([t.params for t in trained]) if trained else run.params.new_zeros((0, width)),
            "versions": np.array(versions, dtype=np.int64),
            "starts": torch.stack([starts[v] for v in versions]) if versions else run.params.new_zeros((0, width)),
        },
        "buffer": {
            "client": np.array([b[0] for b in run.buffer], dtype=np.int64),
            "deltas": torch.stack([b[1] for b in run.buffer]) if run.buffer else run.params.new_zeros((0, width)),
            "version": np.array([b[2] for b in run.buffer], dtype=np.int64),
            "samples": np.array([b[3] for b in run.buffer], dtype=np.int64),
        },
        "rng": run.rng.bit_generator.state,
        "trained": run.trained.copy(),
        "strategy": run.state,
        "acc": {k: (dict(v) if isinstance(v, dict) else v) for k, v in run.acc.items()},
    }


def restore(run, state: dict[str, Any], params: torch.Tensor) -> None:
    """Put a :func:`capture` back into a freshly built run, whose global model becomes ``params``."""
    from .engine import Task

    run.params = params.detach().cpu().clone()
    run.time = float(state["time"])
    run.version = int(state["version"])
    run.next_seq, run.next_task = int(state["next_seq"]), int(state["next_task"])
    run.retry_at = None if state["retry_at"] < 0 else float(state["retry_at"])
    q = state["queue"]
    columns = zip(q["times"].tolist(), q["seqs"].tolist(), q["kinds"].tolist(), q["tasks"].tolist(), strict=True)
    run.queue = [(t, s, k, j) for t, s, k, j in columns]  # stored in heap order, so the heap invariant holds
    tasks = state["tasks"]
    starts = {int(v): tasks["starts"][i] for i, v in enumerate(tasks["versions"].tolist())}
    if run.version in starts:  # the current model is the start of the tasks given out since the last update
        starts[run.version] = run.params
    run.tasks = {}
    done = 0
    for i, task_id in enumerate(tasks["ids"].tolist()):
        version = int(tasks["version"][i])
        task = Task(int(tasks["client"][i]), int(tasks["count"][i]), version, starts[version], bool(tasks["failed"][i]))
        if tasks["trained"][i]:
            task.params = tasks["params"][done]
            task.loss = float(tasks["loss"][done])
            task.samples = int(tasks["samples"][done])
            done += 1
        run.tasks[task_id] = task
    run.busy[:] = False
    run.busy[[task.client for task in run.tasks.values()]] = True
    b = state["buffer"]
    run.buffer = [
        (int(c), b["deltas"][i], int(v), int(s))
        for i, (c, v, s) in enumerate(
            zip(b["client"].tolist(), b["version"].tolist(), b["samples"].tolist(), strict=True)
        )
    ]
    run.rng.bit_generator.state = state["rng"]
    run.trained = np.asarray(state["trained"], dtype=np.int64).copy()
    run.state = state["strategy"]
    run.acc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in state["acc"].items()}
