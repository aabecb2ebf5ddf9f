"""How many threads torch uses in a gossipsoup process: decided here, and only here.

torch's default is one intra-op thread per core, and its OpenMP threads spin while they wait for
each other. The models simulated here are small (the default MLP has 4,810 parameters and trains
on batches of 10), so one step is far too little work to split: a second thread only adds
synchronisation, and on a machine where other jobs hold the cores the spinning threads fight them.
On this project's 2-core machine with other jobs running, the default run's training loop took 53 s
with torch's two threads and 1.1 s with one (``experiments/bench_threads.py``). So the rule is:

* ``backend.num_threads`` set (an integer >= 1): exactly that many threads;
* ``null`` (the default): one thread while a training step is small, that is while
  ``parameters x batch_size`` (the multiply-adds of one forward pass over a batch) is below
  :data:`WORK_PER_THREAD`; above it, one thread per ``WORK_PER_THREAD`` of that work, at most the
  usable cores. Usable cores are the CPUs this process may run on (its affinity mask, a cgroup CPU
  quota), capped by ``OMP_NUM_THREADS`` when that is set: the usual way a scheduler or a user says
  how many threads a process should use. A Ray actor's cores are the CPUs it reserves
  (``backend.num_cpus``).

Inter-op threads (torch's pool for ``torch.jit.fork`` and friends) are set to one: gossipsoup runs no
inter-op parallel work, and an idle pool of one thread per core is only more threads to schedule.

Every entry point calls :func:`configure_threads` once at its start: ``python -m sim`` and any
caller of :func:`sim.run.run_experiment`, ``python -m sim.merge``, each Ray actor, and the Flower
client helper :func:`sim.flower_client.cached_experiment`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .validation import optional_integer

#: multiply-adds per training step (parameters x batch size) that justify one more thread; below it,
#: a thread's share of a step is shorter than what waking and joining threads costs
WORK_PER_THREAD = 1 << 24


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`configure_threads` chose, and why (recorded in summary.json)."""

    threads: int
    interop_threads: int
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return {"torch": self.threads, "interop": self.interop_threads, "rule": self.rule}


def check_num_threads(value: Any, field: str = "backend.num_threads") -> int | None:
    """``value`` as a thread count (None: the automatic rule); ConfigError for anything else."""
    return optional_integer(field, value, 1, "one thread for small models, more for large ones; docs/design.md")


def _cgroup_quota() -> int | None:
    """The CPUs a cgroup v2 (or v1) CPU quota allows this process, rounded up; None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask and any cgroup quota (not the host's total)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _omp_cap() -> int | None:
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value >= 1 else None


def auto_threads(num_parameters: int, batch_size: int, cores: int | None = None) -> int:
    """The automatic rule: one thread per :data:`WORK_PER_THREAD` of a step's work, 1 to ``cores``."""
    cores = usable_cores() if cores is None else max(1, int(cores))
    cap = _omp_cap()
    if cap is not None:
        cores = min(cores, cap)
    work = max(1, int(num_parameters)) * max(1, int(batch_size))
    return max(1, min(cores, work // WORK_PER_THREAD))


def choose_threads(setting: Any, num_parameters: int, batch_size: int, cores: int | None = None) -> tuple[int, str]:
    """(threads, why) for a ``backend.num_threads`` setting and a model; nothing is applied."""
    fixed = check_num_threads(setting)
    if fixed is not None:
        return fixed, "backend.num_threads"
    n = auto_threads(num_parameters, batch_size, cores)
    return n, f"auto: {num_parameters} parameters x batch {batch_size}"


def _set_interop(n: int) -> int:
    """Inter-op threads can be set once per process, before any inter-op work; later calls keep the first."""
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # already set (an earlier run in this process) or the pool has started
            pass
    return torch.get_num_interop_threads()


def configure_threads(setting: Any, num_parameters: int, batch_size: int, cores: int | None = None) -> ThreadChoice:
    """Choose and apply torch's thread counts for this process; call once at the start of a run."""
    n, rule = choose_threads(setting, num_parameters, batch_size, cores)
    torch.set_num_threads(n)
    return ThreadChoice(threads=torch.get_num_threads(), interop_threads=_set_interop(1), rule=rule)


def configure_for_experiment(exp: Any, cores: int | None = None) -> ThreadChoice:
    """:func:`configure_threads` for a built :class:`sim.experiment.Experiment` (its backend's setting)."""
    setting = exp.cfg.get("backend", {}).get("num_threads") if exp.cfg is not None else None
    return configure_threads(setting, exp.layout.size, exp.train.batch_size, cores)


__all__ = [
    "WORK_PER_THREAD",
    "ThreadChoice",
    "auto_threads",
    "check_num_threads",
    "choose_threads",
    "configure_for_experiment",
    "configure_threads",
    "usable_cores",
]
