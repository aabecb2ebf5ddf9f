"""Asynchronous FL (``mode=federated federated.schedule=async``): FedAsync and FedBuff on an event clock.

:func:`run_async_fl` runs the loop of :mod:`.engine` with the run's system model (``system=``, the
durations of every task); :func:`checkpoint_writer` is the hook that writes a checkpoint after a row
(``checkpoint.every`` counts rows here, as it counts evaluations in asynchronous gossip). See
docs/async_fl.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim.errors import RunInterrupted
from sim.resume import run_state, write_checkpoint

from .config import AsyncFLConfig, check_async_fl_run, check_async_fl_strategy, is_async_fl
from .engine import AsyncFL, RowEnd, row_count


def run_async_fl(exp, log, on_row, resume=None, row_end: RowEnd | None = None):
    """Run asynchronous FL to ``rounds`` server updates; returns the final global model."""
    from sim.system import build_run_system

    conf = AsyncFLConfig.from_config(exp.cfg.get("async_fl"), exp.data.num_clients)
    system = build_run_system(exp)
    return AsyncFL(exp, conf, system).run(log, on_row, resume=resume, row_end=row_end)


def checkpoint_writer(out: Path, every: int | None, keep_every: int | None, stop, metrics, config: dict, total: int):
    """The ``row_end`` of :func:`run_async_fl`: a checkpoint every ``every`` rows, after the last, and on a signal."""

    def row_end(evaluation: int, version: int, params, carried) -> None:
        due = every is not None and (evaluation % every == 0 or evaluation == total)
        if not (due or stop):
            return
        metrics.flush()
        keep = keep_every is not None and evaluation % keep_every == 0
        state: dict[str, Any] = carried()
        saved = run_state(version, params, state, metrics.rows, config, evaluation, metrics.clients)
        write_checkpoint(out, saved, keep)
        if stop and evaluation < total:
            raise RunInterrupted(str(stop.signal_name), version, str(out))

    return row_end


__all__ = [
    "AsyncFL",
    "AsyncFLConfig",
    "check_async_fl_run",
    "check_async_fl_strategy",
    "checkpoint_writer",
    "is_async_fl",
    "row_count",
    "run_async_fl",
]
