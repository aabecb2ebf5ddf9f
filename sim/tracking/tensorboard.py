"""``logger=tensorboard``: metrics as scalars, the config as hyperparameters and text, the plot as an image.

The event files go to ``tensorboard/`` inside the run folder by default, so ``tensorboard --logdir``
on a multirun folder shows the sweep with one run per job (TensorBoard's parent is the folder). With
``logger.log_dir`` set, runs go to ``LOG_DIR/<sweep folder>/<job number>`` or ``LOG_DIR/<run
folder>``. TensorBoard has no artifact store: summary.json becomes a text entry and accuracy.png an
image; the model stays in the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sim.schema import config_dict

from .base import BaseTracker
from .common import check_writable_dir, eval_interval, flatten, launch_dir, optional_text, run_context, summary_metrics

SUBDIR = "tensorboard"


def validate(logger_cfg: DictConfig) -> None:
    log_dir = optional_text("logger.log_dir", logger_cfg.log_dir)
    if log_dir is not None:
        check_writable_dir("logger.log_dir", log_dir, launch_dir() / Path(log_dir).expanduser())


def event_dir(cfg: DictConfig, out_dir: Path) -> Path:
    """Where this run's event files go (see module doc)."""
    ctx = run_context(out_dir)
    if cfg.logger.log_dir is None:
        return out_dir / SUBDIR
    root = ctx.launch_dir / Path(str(cfg.logger.log_dir)).expanduser()
    if ctx.sweep_dir is not None:
        return root / Path(ctx.sweep_dir).name / str(ctx.job_num)
    return root / out_dir.resolve().name


def open_tracker(cfg: DictConfig, out_dir: Path) -> TensorBoardTracker:
    return TensorBoardTracker(cfg, Path(out_dir))


def _hparam_value(value: Any) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


class TensorBoardTracker(BaseTracker):
    logger_name = "tensorboard"

    def __init__(self, cfg: DictConfig, out_dir: Path):
        super().__init__(out_dir, eval_interval(cfg))
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = event_dir(cfg, self.out_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.params = {k: _hparam_value(v) for k, v in flatten(config_dict(cfg)).items()}
        if self.steps.last_step < 0:  # a resumed run wrote these already
            table = "\n".join(f"| {k} | {v} |" for k, v in sorted(self.params.items()))
            self.writer.add_text("config", "| key | value |\n| --- | --- |\n" + table, 0)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def _close(self, summary: dict[str, Any], out_dir: Path) -> None:
        from torch.utils.tensorboard.summary import hparams

        step = max(self.steps.last_step, 0)
        final = summary_metrics(summary)
        for key, value in final.items():
            self.writer.add_scalar(key, value, step)
        experiment, start, end = hparams(self.params, final)
        for entry in (experiment, start, end):
            self.writer._get_file_writer().add_summary(entry)
        if (out_dir / "summary.json").is_file():
            self.writer.add_text("summary", "```json\n" + (out_dir / "summary.json").read_text() + "\n```", step)
        plot = out_dir / "accuracy.png"
        if plot.is_file():
            import matplotlib.image

            self.writer.add_image("accuracy", matplotlib.image.imread(str(plot))[..., :3], step, dataformats="HWC")
        self.writer.close()
