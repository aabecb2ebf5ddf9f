"""When each client is online: FedScale's availability trace (``active``/``inactive`` lists, ``finish_time``).

FedScale's ``ClientMetadata.is_active`` (fedscale/cloud/internal/client_metadata.py) folds the time
into the trace's period, ``t mod finish_time``, and calls the client online when
``active[i] <= t <= inactive[i]`` for some interval i; the trace thus repeats every ``finish_time``
seconds. FedScale keeps a cursor ``behavior_index`` that moves forward one interval per call, so its
answer depends on the history of queries, and it does not go back to the first interval when a period
restarts (from the second period on it reports the early intervals as offline). Here the interval is
found by binary search: FedScale's answer within the first period for queries in increasing time, the
trace repeated every ``finish_time`` after it, and the same answer whatever the order of queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClientTrace:
    """One client's online intervals ``[active[i], inactive[i]]`` within a period of ``finish_time`` seconds."""

    active: np.ndarray
    inactive: np.ndarray
    finish_time: float

    def _find(self, t: float) -> tuple[float, int]:
        """(start of t's period, index of the last interval starting at or before t's phase; -1: none)."""
        period = math.floor(t / self.finish_time)
        phase = t - period * self.finish_time
        return period * self.finish_time, int(np.searchsorted(self.active, phase, side="right")) - 1

    def available(self, t: float) -> bool:
        base, i = self._find(t)
        return i >= 0 and t - base <= self.inactive[i]

    def online_until(self, t: float) -> float:
        """The end of the online stretch that contains ``t`` (``t`` offline: -inf), across period wraps."""
        base, i = self._find(t)
        if i < 0 or t - base > self.inactive[i]:
            return -math.inf
        end = base + float(self.inactive[i])
        wraps = i == len(self.active) - 1 and self.inactive[i] >= self.finish_time and self.active[0] <= 0
        if not wraps:
            return end
        if len(self.active) == 1:  # online through the whole period: always online
            return math.inf
        return base + self.finish_time + float(self.inactive[0])

    def next_available(self, t: float) -> float:
        if self.available(t):
            return t
        base, i = self._find(t)
        if i + 1 < len(self.active):
            return base + float(self.active[i + 1])
        return base + self.finish_time + float(self.active[0])


class Availability:
    """Every client's trace; client k uses ``traces[k]``."""

    def __init__(self, traces: list[ClientTrace]):
        self.traces = traces

    def available(self, client: int, t: float) -> bool:
        return self.traces[client].available(t)

    def available_through(self, client: int, start: float, end: float) -> bool:
        return self.traces[client].online_until(start) >= end

    def next_available(self, client: int, t: float) -> float:
        return self.traces[client].next_available(t)
