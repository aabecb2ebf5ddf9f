"""The system model the loops ask for durations: per-client compute and access links, gossip links, availability.

Every quantity is a per-client array drawn once per run (sim/system/draws.py) or read from a trace
(sim/system/traces.py), so a duration is a lookup and a multiply: the clock must cost little next to
training. With ``enabled=False`` (``system=none``) it is the unit clock of the shared contract: a task
takes 1.0 s, a transfer 0 s, and every client is always available.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .availability import Availability
from .links import Links


@dataclass
class SystemModel:
    """Durations in simulated seconds; bytes in bytes, bandwidths in bytes/s."""

    enabled: bool
    compute_s: np.ndarray  # [N] seconds of local training per sample
    bandwidth_up: np.ndarray  # [N] bytes/s
    bandwidth_down: np.ndarray  # [N] bytes/s
    latency_s: np.ndarray  # [N] seconds added to every transfer over the client's access link
    server_bandwidth: float | None = None  # bytes/s the server's link shares among a round's transfers; None: unlimited
    deadline_s: float | None = None  # FL: the round closes at this many seconds
    over_selection: float | None = None  # FL: select ceil(c*K), keep the first K to finish
    availability: Availability | None = None  # None: every client always available
    links: Links | None = None  # gossip edges; None: from the two clients' access links
    name: str = "none"
    meta: dict = field(default_factory=dict)

    @classmethod
    def unit(cls, num_clients: int) -> SystemModel:
        """The ``system=none`` clock: a task takes 1.0 s, a transfer 0 s, everyone is always available."""
        ones = np.ones(num_clients)
        return cls(False, ones, ones, ones, np.zeros(num_clients))

    @property
    def num_clients(self) -> int:
        return len(self.compute_s)

    def compute_time(self, client: int, samples: float) -> float:
        """Seconds of local training on ``samples`` samples (steps x batch size)."""
        if not self.enabled:
            return 1.0
        return float(samples * self.compute_s[client])

    def download_time(self, client: int, nbytes: float, share: int = 1) -> float:
        """Latency + nbytes / bandwidth; ``share`` transfers split the server's link equally."""
        if not self.enabled:
            return 0.0
        return float(self.latency_s[client] + nbytes / self._rate(self.bandwidth_down[client], share))

    def upload_time(self, client: int, nbytes: float, share: int = 1) -> float:
        if not self.enabled:
            return 0.0
        return float(self.latency_s[client] + nbytes / self._rate(self.bandwidth_up[client], share))

    def task_time(self, client: int, nbytes_down: float, nbytes_up: float, samples: float, share: int = 1) -> float:
        """Download + local compute + upload (FedScale's completion time, docs/system.md)."""
        if not self.enabled:
            return 1.0
        return (
            self.download_time(client, nbytes_down, share)
            + self.compute_time(client, samples)
            + self.upload_time(client, nbytes_up, share)
        )

    def task_times(
        self, clients: np.ndarray, nbytes_down: float, nbytes_up: np.ndarray, samples: np.ndarray, share: int = 1
    ) -> np.ndarray:
        """:meth:`task_time` of many clients at once (the same operations in the same order: equal floats)."""
        if not self.enabled:
            return np.ones(len(clients))
        lat = self.latency_s[clients]
        down, up = self.bandwidth_down[clients], self.bandwidth_up[clients]
        if self.server_bandwidth is not None:
            cap = self.server_bandwidth / max(share, 1)
            down, up = np.minimum(down, cap), np.minimum(up, cap)
        return (lat + nbytes_down / down) + samples * self.compute_s[clients] + (lat + nbytes_up / up)

    def link_time(self, sender: int, receiver: int, nbytes: float) -> float:
        """A gossip edge: its latency + nbytes / its bandwidth (0 s with system=none)."""
        if not self.enabled:
            return 0.0
        if self.links is not None:
            found = self.links.get(sender, receiver)
            if found is not None:
                bandwidth, latency = found
                return float(latency + nbytes / bandwidth)
        rate = min(self.bandwidth_up[sender], self.bandwidth_down[receiver])
        return float(self.latency_s[sender] + self.latency_s[receiver] + nbytes / rate)

    def available(self, client: int, t: float) -> bool:
        return self.availability is None or self.availability.available(client, t)

    def available_through(self, client: int, start: float, end: float) -> bool:
        """Online during the whole of ``[start, end]`` (a task in that span is not cut off)."""
        return self.availability is None or self.availability.available_through(client, start, end)

    def next_available(self, client: int, t: float) -> float:
        """``t`` when the client is online at ``t``, else the start of its next online interval."""
        return t if self.availability is None else self.availability.next_available(client, t)

    def _rate(self, own: float, share: int) -> float:
        if self.server_bandwidth is None:
            return float(own)
        return float(min(own, self.server_bandwidth / max(share, 1)))
