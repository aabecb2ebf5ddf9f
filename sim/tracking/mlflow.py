"""``logger=mlflow``: every run an MLflow run; a sweep's jobs the children of one parent run.

Parameters are the resolved config flattened (``strategy.server_lr``), metrics every metrics.csv
column per step, artifacts the run folder's result files. The parent of a sweep is found by a tag
holding a hash of the sweep folder, and created under a lock file in that folder, so parallel jobs
(joblib, Ray on one machine) agree on one parent. The MLflow run id is kept in the run folder's
``tracking.json``, so a resumed run continues the same MLflow run (see :mod:`sim.tracking.common`).

The default store is a ``mlruns/`` folder (MLflow's file store). MLflow 3 refuses that store unless
``MLFLOW_ALLOW_FILE_STORE`` is set; it is set for file: URIs because a database store costs seconds
per process for its schema check, and parallel jobs writing one SQLite file contend for its lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sim.schema import config_dict
from sim.validation import boolean

from .base import BaseTracker
from .common import (
    RunContext,
    artifact_paths,
    eval_interval,
    flatten,
    launch_dir,
    optional_text,
    required_text,
    run_context,
    summary_metrics,
)
from .uris import check_mlflow_uri, local_store

SWEEP_TAG = "gossipsoup.sweep_key"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


def validate(logger_cfg: DictConfig) -> None:
    uri = optional_text("logger.tracking_uri", logger_cfg.tracking_uri)
    check_mlflow_uri("logger.tracking_uri", uri, launch_dir())
    required_text("logger.experiment", logger_cfg.experiment)
    boolean("logger.log_artifacts", logger_cfg.log_artifacts)


def open_tracker(cfg: DictConfig, out_dir: Path) -> MlflowTracker:
    return MlflowTracker(cfg, Path(out_dir))


@contextmanager
def _locked(folder: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.mlflow.lock`` (no lock when there is no folder)."""
    if folder is None or not folder.is_dir():
        yield
        return
    with open(folder / ".mlflow.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class MlflowTracker(BaseTracker):
    logger_name = "mlflow"

    def __init__(self, cfg: DictConfig, out_dir: Path):
        super().__init__(out_dir, eval_interval(cfg))
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        ctx = run_context(self.out_dir)
        uri = check_mlflow_uri("logger.tracking_uri", cfg.logger.tracking_uri, ctx.launch_dir)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.log_artifacts = bool(cfg.logger.log_artifacts)
        store = local_store(uri)
        lock_dir = Path(ctx.sweep_dir) if ctx.sweep_dir else (store if store is not None and store.is_dir() else None)
        with _locked(lock_dir):
            experiment_id = self._experiment_id(str(cfg.logger.experiment))
            parent = self._parent_run(experiment_id, ctx) if ctx.sweep_dir else None
        if self.steps.run_id is None:
            tags = {"gossipsoup.run_dir": str(self.out_dir.resolve())}
            if parent is not None:
                tags["mlflow.parentRunId"] = parent
            run = self.client.create_run(experiment_id, run_name=ctx.name, tags=tags)
            self.run_id = run.info.run_id
            self.steps.run_id = self.run_id
            self.steps.save()
            self._log_params(config_dict(cfg))
        else:  # a resumed run: same MLflow run, reopened
            self.run_id = self.steps.run_id
            self.client.update_run(self.run_id, status="RUNNING")

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else self.client.create_experiment(name)

    def _parent_run(self, experiment_id: str, ctx: RunContext) -> str:
        key = hashlib.sha256(str(ctx.sweep_dir).encode()).hexdigest()[:32]
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{key}'", max_results=1)
        if found:
            return found[0].info.run_id
        tags = {SWEEP_TAG: key, "gossipsoup.sweep_dir": str(ctx.sweep_dir)}
        run = self.client.create_run(experiment_id, run_name=f"sweep {Path(str(ctx.sweep_dir)).name}", tags=tags)
        return run.info.run_id

    def _log_params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(flatten(config).items())]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[start : start + 100], synchronous=True)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def _close(self, summary: dict[str, Any], out_dir: Path) -> None:
        from mlflow.entities import Metric

        step = max(self.steps.last_step, 0)
        now = int(time.time() * 1000)
        final = [Metric(key, value, now, step) for key, value in summary_metrics(summary).items()]
        if final:
            self.client.log_batch(self.run_id, metrics=final, synchronous=True)
        self.client.set_tag(self.run_id, "gossipsoup.status", str(summary.get("status", "unknown")))
        if self.log_artifacts:
            for path in artifact_paths(out_dir):
                self.client.log_artifact(self.run_id, str(path))
        status = {"completed": "FINISHED", "interrupted": "KILLED"}.get(str(summary.get("status")), "FAILED")
        self.client.set_terminated(self.run_id, status=status)
