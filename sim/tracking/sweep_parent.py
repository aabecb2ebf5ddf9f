"""Hydra callback (configs/logger/mlflow.yaml): close a sweep's MLflow parent run when the sweep ends.

No job knows it is the last one, so the parent is closed by the launching process, after Hydra's
sweeper returns: FINISHED, or KILLED when a signal stopped the sweep (:mod:`sim.sweep_stop`). A
sweep resumed with ``resume=true`` continues in the same folder, so its jobs find the same parent,
mark it RUNNING again, and this callback closes it once more at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CloseSweepParent(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sim.sweep_stop import sweep_stopped

        from .mlflow import close_sweep_parent

        launch = Path(str(config.hydra.runtime.get("cwd") or Path.cwd()))
        sweep_dir = str((launch / str(config.hydra.sweep.dir)).resolve())
        close_sweep_parent(config.logger, sweep_dir, launch, "KILLED" if sweep_stopped() else "FINISHED")
