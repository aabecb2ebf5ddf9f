"""One synchronous FL round in simulated time: who is kept, who is dropped or failed, how long it lasts.

Rules (docs/system.md), for the clients the participation model selected, each with its task time
``T_k = download + compute + upload`` (sim/system/model.py; a round's transfers split the server's link):

* failed: the client is not online during the whole of ``[start, start + T_k]`` (availability trace);
  its update never arrives.
* the others finish in order of ``T_k`` (ties: lower client id first). Under a deadline those with
  ``T_k > deadline_s`` are dropped; under over-selection only the first ``K`` are kept (the rest are
  dropped: Bonawitz et al. 2019, as FedScale's ``tictak_client_tasks`` keeps the top-k completions).
* the round lasts until the server has what it waits for: the K-th finisher under over-selection,
  else ``deadline_s`` when a deadline is set and someone did not deliver, else the slowest kept client
  (failed clients excluded, as in FedScale's simulation mode). A round in which nobody delivers lasts
  ``deadline_s``, or without a deadline as long as its slowest task would have taken.

With ``system=none`` every selected client is kept and the round lasts 1.0 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import SystemModel


@dataclass
class RoundTiming:
    keep: np.ndarray  # [K] bool, in the order of the clients given
    duration: float
    dropped: int
    failed: int
    times: np.ndarray  # [K] each client's task time


def fl_round_timing(
    system: SystemModel,
    start: float,
    clients: np.ndarray,
    samples: np.ndarray,
    bytes_down: float,
    bytes_up: np.ndarray,
    target: int | None = None,
) -> RoundTiming:
    """``target``: under over-selection, the K clients to keep (None: keep every client that delivers)."""
    count = len(clients)
    if not system.enabled:
        return RoundTiming(np.ones(count, dtype=bool), 1.0, 0, 0, np.ones(count))
    if count == 0:
        return RoundTiming(np.ones(0, dtype=bool), system.deadline_s or 0.0, 0, 0, np.zeros(0))
    times = system.task_times(
        clients, bytes_down, np.asarray(bytes_up, np.float64), np.asarray(samples, np.float64), count
    )
    if system.availability is None:
        ok = np.ones(count, dtype=bool)
    else:
        ok = np.array([system.available_through(int(c), start, start + t) for c, t in zip(clients, times, strict=True)])
    order = np.lexsort((clients, times))  # by time, ties by client id
    order = order[ok[order]]
    deadline = system.deadline_s
    if deadline is not None:
        order = order[times[order] <= deadline]
    reached = target is not None and len(order) >= target
    if target is not None:
        order = order[:target]
    keep = np.zeros(count, dtype=bool)
    keep[order] = True
    failed = int((~ok).sum())
    dropped = int(ok.sum()) - len(order)
    if reached and len(order):
        duration = float(times[order[-1]])
    elif deadline is not None and (dropped or failed):
        duration = float(deadline)
    elif len(order):
        duration = float(times[order].max())
    else:
        duration = float(times.max())
    return RoundTiming(keep, duration, dropped, failed, times)
