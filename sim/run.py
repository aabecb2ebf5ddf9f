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

from .async_fl import checkpoint_writer, is_async_fl, row_count, run_async_fl
from .checkpoint import save_checkpoint
from .errors import GossipsoupError, RunInterrupted
from .experiment import build_experiment, resolved_config
from .federated import Resume, run_federated
from .gossip import evaluation_count, run_gossip, uses_partitions
from .results import ClientLog, MetricsLog, plot_accuracy, write_json
from .resume import check_length, checkpoint_settings, run_state, stop_on_signals, write_checkpoint
from .system.flops import run_model_flops
from .threads import configure_for_experiment, configure_threads
from .tracking import open_tracker

log = logging.getLogger("sim")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("gossipsoup", "torch", "numpy", "hydra-core", "flwr-datasets", "scikit-learn"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def _readable(rounds: float) -> Any:
    """Simulated time in rounds as a person reads it: 3 rather than 3.0, 2.5 rather than 2.5000000000000004."""
    value = round(float(rounds), 6)
    return int(value) if value.is_integer() else value


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    evals = [r for r in rows if not math.isnan(r.get("test_accuracy", math.nan))]
    if not evals:
        return {}
    top = max(evals, key=lambda r: r["test_accuracy"])
    return {"test_accuracy": top["test_accuracy"], "round": top["round"]}


#: per-client train sizes are listed in summary.json up to this many clients (min/median/max beyond)
LIST_CLIENTS = 10_000


def given_data(exp) -> dict[str, Any]:
    """What the run was given: split sizes, classes, each client's train rows, and the Byzantine clients' ids.

    A reader of summary.json can then tell two runs' data apart (a partition that left a client empty, a
    validation split that took rows from training) without rebuilding the experiment.
    """
    data = exp.data
    sizes = [int(v) for v in data.client_sizes.tolist()]
    block: dict[str, Any] = {
        "name": data.name,
        "train": int(data.y.numel()),
        "val": int(data.y_val.numel()),
        "test": int(data.y_test.numel()),
        "num_classes": int(data.num_classes),
        "num_clients": data.num_clients,
    }
    if len(sizes) <= LIST_CLIENTS:
        block["client_train_sizes"] = sizes
    else:
        ordered = sorted(sizes)
        block["client_train_sizes_min_median_max"] = [ordered[0], ordered[len(ordered) // 2], ordered[-1]]
    ids = [] if exp.attack is None else [int(i) for i in exp.attack.ids.tolist()]
    return {"data": block, "byzantine_ids": ids}


def data_line(block: dict[str, Any], byzantine: list[int]) -> str:
    """The log's line about the data: sizes of the splits, classes, clients' train rows (listed for up to 20)."""
    sizes = block.get("client_train_sizes")
    if sizes is not None and len(sizes) <= 20:
        per_client = f"client train sizes {sizes}"
    else:
        ordered = sorted(sizes) if sizes is not None else block["client_train_sizes_min_median_max"]
        per_client = f"client train sizes min {ordered[0]}, median {ordered[len(ordered) // 2]}, max {ordered[-1]}"
    line = (
        f"data {block['name']}: {block['train']} train, {block['val']} val, {block['test']} test rows, "
        f"{block['num_classes']} classes, {block['num_clients']} clients; {per_client}"
    )
    return line + (f"; Byzantine clients {byzantine}" if byzantine else "")


def accuracy_title(exp, cfg: DictConfig) -> str:
    """accuracy.png's title: the rule, FL or which gossip, the model, the data, the clients and the seed."""
    where = f"{exp.topology.name} gossip ({exp.gossip.schedule})" if exp.gossip is not None else "FL"
    model = cfg.get("model", {})
    name = model.get("target") or model.get("name") or type(exp.model).__name__  # a custom model: its class path
    return f"{exp.strategy.name}, {where}, {name}, {exp.data.name}, {exp.data.num_clients} clients, seed {cfg.seed}"


def run_experiment(
    cfg: DictConfig, out_dir: str | Path, progress: bool | None = None, resume_state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build, run and record one experiment; returns the summary written to summary.json.

    ``resume_state`` (from :func:`sim.resume.read_checkpoint`) continues a run after its last
    checkpointed round (asynchronous gossip: evaluation); ``cfg`` is then the saved config (``rounds``
    may have grown).
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    every, keep_every = checkpoint_settings(cfg)
    if resume_state is not None:
        check_length(resume_state, int(cfg.rounds))
    # torch's threads (sim/threads.py): one while the data and model are built, then the run's own count
    configure_threads(cfg.get("backend", {}).get("num_threads"), 1, 1)
    exp = build_experiment(cfg)  # raises ConfigError before any result file exists
    threads = configure_for_experiment(exp)
    setup_s = time.perf_counter() - t0
    show = bool(cfg.get("progress", True)) if progress is None else progress
    label = f"{exp.strategy.name} seed={cfg.seed}"
    gossip = exp.gossip is not None
    asynchronous = gossip and exp.gossip.schedule == "async"
    bar_total = evaluation_count(int(cfg.rounds), exp.gossip) if asynchronous else int(cfg.rounds)
    if is_async_fl(cfg):  # asynchronous FL: a row every eval_every server updates (sim/async_fl)
        bar_total = row_count(int(cfg.rounds), int(cfg.eval_every))
    metrics = MetricsLog(out / "metrics.csv")
    for saved_row in (resume_state or {}).get("rows", []):
        metrics.append(saved_row)
    if resume_state is not None and "clients" in resume_state:  # eval.clients: clients.csv so far, byte for byte
        metrics.clients = ClientLog.restore(out / "clients.csv", resume_state["clients"])
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
    summary.update(given_data(exp))
    if (flops := run_model_flops(exp)) is not None:  # system.model_flops: auto, measured (sim/system/flops.py)
        summary["model_flops"] = flops
    log.info("%s", data_line(summary["data"], summary["byzantine_ids"]))
    if gossip:
        summary["topology"] = exp.topology.summary()
    if (dp := getattr(exp.strategy, "accounting", None)) is not None:  # strategies/dp: noise found, assumptions
        summary["dp"] = dp.describe()
    tracker = open_tracker(cfg, out)
    bar = tqdm(total=bar_total, desc=label, disable=not show, leave=True, dynamic_ncols=True)
    if resume_state is not None:
        bar.update(int(resume_state.get("evaluation", resume_state["round"])))

    def on_round(row: dict[str, Any]) -> None:
        tracker.log_row(row)
        bar.update(1)
        if "test_accuracy" in row:
            bar.set_postfix(acc=f"{row['test_accuracy']:.4f}")
            metrics.flush()

    if gossip and uses_partitions(exp):  # the partition actors replace the ray backend's training pool
        exp.backend.defer_pool = True  # type: ignore[attr-defined]
    exp.backend.setup(exp.setup)
    if (mover := getattr(exp.backend, "mover", None)) is not None:  # backend.device: the start model goes there once
        exp.initial_params = mover.to_device(exp.initial_params)
    chosen = getattr(exp.backend, "chosen", None)  # backend=auto says which backend it picked
    if chosen is not None:
        summary["backend"] = f"auto: {chosen.name}"
        summary["backend_reason"] = exp.backend.reason  # type: ignore[attr-defined]
    actor_threads = getattr(exp.backend, "actor_threads", None)  # backend=ray: torch threads in each actor
    if actor_threads is not None:
        summary["threads"]["actor"] = actor_threads
    rounds = int(cfg.rounds)
    resume = None
    if resume_state is not None:
        resume = Resume(int(resume_state["round"]), resume_state["params"], resume_state["strategy"])
    # SIGINT / SIGTERM are noted from here until the summary is written: a signal that stops the run at a round
    # boundary may come twice (a sweep's launcher passes it on to its workers), and a second copy must not cut
    # the writing of the checkpoint or summary short (sim/resume.py: stop_on_signals)
    with stop_on_signals() as stop:
        try:

            def round_end(round_: int, params, state) -> None:
                due = every is not None and (round_ % every == 0 or round_ == rounds)
                if due or stop:
                    metrics.flush()
                    keep = keep_every is not None and round_ % keep_every == 0
                    if callable(params):  # partitioned gossip gathers the models from its actors only when due
                        params, state = params(), state()
                    saved = run_state(round_, params, state, metrics.rows, summary["config"], clients=metrics.clients)
                    write_checkpoint(out, saved, keep)
                if stop and round_ < rounds:
                    raise RunInterrupted(str(stop.signal_name), round_, str(out))

            def evaluation_end(evaluation: int, params, carried) -> None:
                """Asynchronous gossip: checkpoints every ``every`` evaluations, after the last, on a signal."""
                due = every is not None and (evaluation % every == 0 or evaluation == bar_total)
                if due or stop:
                    metrics.flush()
                    state = carried()
                    at = state["time"] / exp.gossip.wake_interval
                    keep = keep_every is not None and evaluation % keep_every == 0
                    saved = run_state(at, params, state, metrics.rows, summary["config"], evaluation, metrics.clients)
                    write_checkpoint(out, saved, keep)
                    if stop and evaluation < bar_total:
                        raise RunInterrupted(str(stop.signal_name), _readable(at), str(out))

            if gossip:
                node_params = run_gossip(
                    exp, metrics, on_round, resume=resume, round_end=round_end, eval_end=evaluation_end
                )
                final_params = node_params.mean(0)  # the nodes' average model is what gets saved
            elif is_async_fl(cfg):
                writer = checkpoint_writer(out, every, keep_every, stop, metrics, summary["config"], bar_total)
                final_params = run_async_fl(exp, metrics, on_round, resume=resume, row_end=writer)
            else:
                final_params = run_federated(exp, metrics, on_round, resume=resume, round_end=round_end)
        except GossipsoupError as exc:
            metrics.flush()
            status = "interrupted" if isinstance(exc, RunInterrupted) else "failed"
            summary.update(status=status, error=str(exc), wall_s=time.perf_counter() - t0)
            write_json(out / "summary.json", summary)
            tracker.finish(summary, out)
            raise
        finally:
            bar.close()
            exp.backend.close()
        metrics.flush()
        if mover is not None:  # in-process backends: where they trained and what crossed between host and device
            summary.update(device=str(mover.device), host_device_bytes=mover.host_device_bytes)
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
                    "dp_epsilon",
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
        plot_accuracy(out / "accuracy.png", metrics.rows, accuracy_title(exp, cfg))
        write_json(out / "summary.json", summary)
        tracker.finish(summary, out)
        log.info(
            "final test accuracy %.4f after %d rounds in %.1f s; results in %s",
            last["test_accuracy"],
            last["round"],
            summary["wall_s"],
            out,
        )
        return summary
