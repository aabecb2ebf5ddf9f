"""The part of a tracker that is the same for every library: steps, resume skipping, finishing once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import StepCounter, numeric_items, read_metrics_csv


class BaseTracker:
    """Subclasses write one step's metrics (``_log``) and close the run (``_close``)."""

    logger_name = "base"

    def __init__(self, out_dir: Path, eval_interval: float = 1.0):
        self.out_dir = Path(out_dir)
        self.steps = StepCounter(self.out_dir, self.logger_name, eval_interval)
        self._finished = False

    def log_row(self, row: dict[str, Any]) -> None:
        step = self.steps.step(row)
        if self.steps.done(step):  # logged by an earlier attempt of this run (resume)
            return
        self._log(numeric_items(row), step)
        self.steps.logged(step)

    def finish(self, summary: dict[str, Any], out_dir: Path) -> None:
        if self._finished:
            return
        self._finished = True
        out_dir = Path(out_dir)
        for row in read_metrics_csv(out_dir / "metrics.csv"):  # rows that never passed through log_row
            self.log_row(row)
        self._close(summary, out_dir)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _close(self, summary: dict[str, Any], out_dir: Path) -> None:
        raise NotImplementedError
