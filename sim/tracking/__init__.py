"""Experiment trackers (``logger=...``): where a run's parameters, per-round metrics and files also go.

The run folder stays the source of truth; a tracker mirrors it into the tool the user already has.
Each tracker module offers ``validate(logger_cfg)`` (run by the config check on every job of a sweep
before any starts) and ``open_tracker(cfg, out_dir) -> Tracker``.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from sim.errors import ConfigError

#: logger name -> module that implements it (imported only when chosen: each library is heavy)
TRACKERS: dict[str, str] = {
    "mlflow": "sim.tracking.mlflow",
    "tensorboard": "sim.tracking.tensorboard",
    "wandb": "sim.tracking.wandb",
}
#: logger name -> the pip extra that installs its library (proposed ``[tracking]`` extra of pyproject.toml)
PACKAGES: dict[str, str] = {"mlflow": "mlflow-skinny", "tensorboard": "tensorboard", "wandb": "wandb"}


class Tracker(Protocol):
    def log_row(self, row: dict[str, Any]) -> None: ...

    def finish(self, summary: dict[str, Any], out_dir: Path) -> None: ...


class NoTracker:
    """``logger=none``: results live in the run folder only."""

    def log_row(self, row: dict[str, Any]) -> None:
        return None

    def finish(self, summary: dict[str, Any], out_dir: Path) -> None:
        return None


def _module(logger_cfg: DictConfig | None):
    name = "none" if logger_cfg is None else logger_cfg.get("name", "none")
    if name == "none":
        return None
    if name not in TRACKERS:
        raise ConfigError("logger.name", name, f"one of {['none', *sorted(TRACKERS)]}")
    library = name  # each library's import name is the logger's name
    if importlib.util.find_spec(library) is None:  # checked without importing it (seconds for some)
        raise ConfigError(
            "logger",
            name,
            "a logger whose library is installed",
            f"Python cannot import {library}. Install it with: pip install 'gossipsoup[tracking]' "
            f"(or pip install {PACKAGES[name]}).",
        )
    return importlib.import_module(TRACKERS[name])


def validate_tracker_config(logger_cfg: DictConfig | None) -> None:
    module = _module(logger_cfg)
    if module is not None:
        module.validate(logger_cfg)


def open_tracker(cfg: DictConfig, out_dir: Path) -> Tracker:
    module = _module(cfg.get("logger"))
    return NoTracker() if module is None else module.open_tracker(cfg, out_dir)
