"""``logger=mlflow``: every run an MLflow run; a sweep's jobs the children of one parent run.

Parameters are the resolved config flattened (``strategy.server_lr``), metrics every metrics.csv
column per step, artifacts the run folder's result files. The parent of a sweep is found by a tag
holding a hash of the sweep folder; the launcher process closes it when the sweep ends
(:func:`close_sweep_parent`: FINISHED, or KILLED when interrupted), and a resumed sweep's jobs reopen it.
The MLflow run id is kept in the run folder's ``tracking.json``, so a resumed run continues the same
MLflow run (see :mod:`sim.tracking.common`).

The default store is ``mlflow.db`` (SQLite, MLflow 3's own default) in the folder the command ran in,
with the runs' files in ``mlartifacts/`` beside it. Opening a new SQLite store migrates its schema,
which breaks when two processes do it at once, so every process opens the store, finds the
experiment and the sweep's parent under one lock file beside the store (a server: in the sweep folder).
A folder or ``file:`` URI is MLflow's file store, which MLflow 3 refuses unless
``MLFLOW_ALLOW_FILE_STORE`` is set; it is set for such URIs.
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
from .uris import artifact_root, check_mlflow_uri, lock_file

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
def _locked(path: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created with its folder; no lock when None)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _client(uri: str):
    """MlflowClient for ``uri``; creating it opens the store (and migrates a new SQLite schema): hold the lock."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _store_lock(uri: str, sweep_dir: str | None) -> Path | None:
    local = lock_file(uri)
    return local if local is not None else (Path(sweep_dir) / ".mlflow.lock" if sweep_dir else None)


def sweep_key(sweep_dir: str) -> str:
    return hashlib.sha256(str(sweep_dir).encode()).hexdigest()[:32]


def close_sweep_parent(logger_cfg: DictConfig, sweep_dir: str, launch: Path, status: str) -> str | None:
    """Mark the sweep's parent run ``status`` (FINISHED, KILLED); its run id, or None if no job created it."""
    uri = check_mlflow_uri("logger.tracking_uri", logger_cfg.tracking_uri, launch)
    with _locked(_store_lock(uri, sweep_dir)):
        client = _client(uri)
        found = client.get_experiment_by_name(str(logger_cfg.experiment))
        if found is None:
            return None
        key = sweep_key(sweep_dir)
        runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{key}'", max_results=1)
        if not runs:
            return None
        client.set_terminated(runs[0].info.run_id, status=status)
        return runs[0].info.run_id


class MlflowTracker(BaseTracker):
    logger_name = "mlflow"

    def __init__(self, cfg: DictConfig, out_dir: Path):
        super().__init__(out_dir, eval_interval(cfg))
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        ctx = run_context(self.out_dir)
        uri = check_mlflow_uri("logger.tracking_uri", cfg.logger.tracking_uri, ctx.launch_dir)
        self.log_artifacts = bool(cfg.logger.log_artifacts)
        with _locked(_store_lock(uri, ctx.sweep_dir)):
            self.client = _client(uri)
            experiment_id = self._experiment_id(str(cfg.logger.experiment), uri)
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

    def _experiment_id(self, name: str, uri: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=artifact_root(uri))

    def _parent_run(self, experiment_id: str, ctx: RunContext) -> str:
        key = sweep_key(str(ctx.sweep_dir))
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{key}'", max_results=1)
        if found:
            if found[0].info.status != "RUNNING":  # a resumed sweep: its parent runs again until the sweep ends
                self.client.update_run(found[0].info.run_id, status="RUNNING")
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
