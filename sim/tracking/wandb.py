"""``logger=wandb``: a Weights & Biases run, offline by default (nothing leaves the machine).

Offline runs are written under ``DIR/wandb/offline-run-*`` (DIR: the run folder unless
``logger.dir`` is set) and uploaded only if the user runs ``wandb sync`` on them, or sets
``logger.mode=online``. A sweep's jobs share a W&B group (the sweep folder's name), W&B's parent of
runs. The config goes in as W&B's nested config, metrics per step, the result files as run files.
wandb's banners, console capture, system metrics and git/code snapshots are all switched off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sim.schema import config_dict
from sim.validation import choice

from .base import BaseTracker
from .common import (
    artifact_paths,
    check_writable_dir,
    eval_interval,
    launch_dir,
    numeric_items,
    optional_text,
    read_metrics_csv,
    required_text,
    run_context,
    summary_metrics,
)

MODES = ("offline", "online")


def validate(logger_cfg: DictConfig) -> None:
    choice("logger.mode", logger_cfg.mode, MODES, "(offline: nothing leaves the machine; `wandb sync` uploads later.)")
    required_text("logger.project", logger_cfg.project)
    optional_text("logger.entity", logger_cfg.entity)
    optional_text("logger.group", logger_cfg.group)
    folder = optional_text("logger.dir", logger_cfg.dir)
    if folder is not None:
        check_writable_dir("logger.dir", folder, launch_dir() / Path(folder).expanduser())


def open_tracker(cfg: DictConfig, out_dir: Path) -> WandbTracker:
    return WandbTracker(cfg, Path(out_dir))


class WandbTracker(BaseTracker):
    logger_name = "wandb"

    def __init__(self, cfg: DictConfig, out_dir: Path):
        super().__init__(out_dir, eval_interval(cfg))
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        ctx = run_context(self.out_dir)
        lcfg = cfg.logger
        folder = self.out_dir if lcfg.dir is None else ctx.launch_dir / Path(str(lcfg.dir)).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        group = lcfg.group if lcfg.group is not None else (Path(ctx.sweep_dir).name if ctx.sweep_dir else None)
        settings = wandb.Settings(
            silent=True,
            console="off",
            x_disable_stats=True,
            x_disable_meta=True,
            save_code=False,
            disable_git=True,
            x_save_requirements=False,
        )
        resumed = self.steps.run_id is not None
        self.run = wandb.init(
            mode="online" if lcfg.mode == "online" else "offline",
            project=str(lcfg.project),
            entity=lcfg.entity,
            group=group,
            name=ctx.name,
            dir=str(folder),
            config=config_dict(cfg),
            id=self.steps.run_id,
            resume="allow" if resumed else None,
            settings=settings,
            reinit="create_new",
        )
        # x axis: the row's round, not W&B's own step counter, which only grows: rows caught up at
        # finish (round 0) would otherwise be dropped as out of order
        self.run.define_metric("round")
        self.run.define_metric("*", step_metric="round")
        if not resumed:
            self.steps.run_id = self.run.id
            self.steps.save()

    @property
    def run_dir(self) -> Path:
        """The offline run's folder (``.../wandb/offline-run-*``), where its ``.wandb`` file is."""
        return Path(self.run.dir).parent

    def _log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics)

    def _close(self, summary: dict[str, Any], out_dir: Path) -> None:
        rows = read_metrics_csv(out_dir / "metrics.csv")
        last = numeric_items(rows[-1]) if rows else {}  # W&B's summary is the last value logged: round 0 came last
        self.run.summary.update({**last, **summary_metrics(summary), "status": str(summary.get("status", "unknown"))})
        for path in artifact_paths(out_dir):
            self.run.save(str(path), base_path=str(out_dir), policy="now")
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
        _flush_service()


def _flush_service() -> None:
    """Shut wandb's service down when no other run of this process is open, so the log is complete.

    ``run.finish`` only *informs* wandb-core that the run is over; the stream that owns the
    ``.wandb`` file is closed (and its buffer written) later, by the service, on its own schedule.
    Under load a reader (``wandb sync``, ``sim.tracking.wandb_records``, a test) could find a log
    without its last records. Tearing the service down waits for every stream to close. A user's own
    run left open in the same process keeps the service alive; the next ``wandb.init`` starts a new one.
    """
    import wandb

    if wandb.run is None:
        wandb.teardown()
