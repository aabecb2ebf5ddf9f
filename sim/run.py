"""One run from a resolved config to its result files.

Kept apart from Hydra so tests and other programs can call :func:`run_experiment` with any config
and output folder. Config errors surface before the output folder gets any file; a run that fails
later (NaN from a client) keeps its complete metrics so far and says ``"status": "failed"`` in
summary.json.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .errors import GossipsoupError
from .experiment import build_experiment, resolved_config
from .federated import run_federated
from .gossip import run_gossip
from .results import MetricsLog, plot_accuracy, write_json
from .threads import configure_for_experiment, configure_threads

log = logging.getLogger("sim")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("gossipsoup", "torch", "numpy", "hydra-core", "flwr-datasets", "scikit-learn"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    evals = [r for r in rows if not math.isnan(r.get("test_accuracy", math.nan))]
    if not evals:
        return {}
    top = max(evals, key=lambda r: r["test_accuracy"])
    return {"test_accuracy": top["test_accuracy"], "round": top["round"]}


def run_experiment(cfg: DictConfig, out_dir: str | Path, progress: bool | None = None) -> dict[str, Any]:
    """Build, run and record one experiment; returns the summary written to summary.json."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    # torch's threads (sim/threads.py): one while the data and model are built, then the run's own count
    configure_threads(cfg.get("backend", {}).get("num_threads"), 1, 1)
    exp = build_experiment(cfg)  # raises ConfigError before any result file exists
    threads = configure_for_experiment(exp)
    setup_s = time.perf_counter() - t0
    show = bool(cfg.get("progress", True)) if progress is None else progress
    label = f"{exp.strategy.name} seed={cfg.seed}"
    gossip = exp.gossip is not None
    bar_total = int(cfg.rounds)
    if gossip and exp.gossip.schedule == "async":
        bar_total = int(cfg.rounds * exp.gossip.wake_interval / exp.gossip.eval_interval + 1e-9)
    metrics = MetricsLog(out / "metrics.csv")
    summary: dict[str, Any] = {
        "status": "running",
        "strategy": exp.strategy.name,
        "seed": int(cfg.seed),
        "num_parameters": exp.layout.size,
        "backend": exp.backend.name,
        "threads": threads.as_dict(),
        "config": resolved_config(cfg),
        "versions": package_versions(),
    }
    if gossip:
        summary["topology"] = exp.topology.summary()
    bar = tqdm(total=bar_total, desc=label, disable=not show, leave=True, dynamic_ncols=True)

    def on_round(row: dict[str, Any]) -> None:
        bar.update(1)
        if "test_accuracy" in row:
            bar.set_postfix(acc=f"{row['test_accuracy']:.4f}")
            metrics.flush()

    exp.backend.setup(exp.setup)
    chosen = getattr(exp.backend, "chosen", None)  # backend=auto says which backend it picked
    if chosen is not None:
        summary["backend"] = f"auto: {chosen.name}"
    actor_threads = getattr(exp.backend, "actor_threads", None)  # backend=ray: torch threads in each actor
    if actor_threads is not None:
        summary["threads"]["actor"] = actor_threads
    try:
        if gossip:
            node_params = run_gossip(exp, metrics, on_round)
            final_params = node_params.mean(0)  # the nodes' average model is what gets saved
        else:
            final_params = run_federated(exp, metrics, on_round)
    except GossipsoupError as exc:
        metrics.flush()
        summary.update(status="failed", error=str(exc), wall_s=time.perf_counter() - t0)
        write_json(out / "summary.json", summary)
        raise
    finally:
        bar.close()
        exp.backend.close()
    metrics.flush()
    last = metrics.rows[-1]
    summary.update(
        status="completed",
        final={
            k: last[k]
            for k in (
                "round",
                "time",
                "test_accuracy",
                "test_loss",
                "val_accuracy",
                "train_loss",
                "test_accuracy_min",
                "test_accuracy_max",
                "consensus_distance",
            )
            if k in last
        },
        best=_best(metrics.rows),
        wall_s=time.perf_counter() - t0,
        setup_s=setup_s,
        loop_s=last["wall_s"],
    )
    if cfg.save_model:
        save_checkpoint(
            out / "model.safetensors",
            exp.layout,
            final_params,
            {
                "strategy": exp.strategy.name,
                "seed": str(cfg.seed),
                "round": str(last["round"]),
                "model": "average of the node models" if gossip else "global model",
            },
        )
    where = f"{exp.topology.name} gossip ({exp.gossip.schedule})" if gossip else "FL"
    plot_accuracy(
        out / "accuracy.png",
        metrics.rows,
        f"{exp.strategy.name}, {where}, {exp.data.name}, {exp.data.num_clients} clients, seed {cfg.seed}",
    )
    write_json(out / "summary.json", summary)
    log.info(
        "final test accuracy %.4f after %d rounds in %.1f s; results in %s",
        last["test_accuracy"],
        last["round"],
        summary["wall_s"],
        out,
    )
    return summary
