"""Accuracy against simulated time under device heterogeneity (issue 25): three reproductions.

1. FedBuff (Nguyen et al. 2022) against synchronous FedAvg and FedAsync (Xie et al. 2019): simulated time to a
   target accuracy, with equal devices (system=constant) and lognormal compute speeds (sigma 1 and 2).
2. Synchronous FedAvg waiting for all, with a round deadline (two values) and with over-selection (1.3):
   accuracy against time, and whose updates are lost: kept share per speed tertile, lost training samples, and
   how far the kept updates' label mix drifts from the selected clients' (fast-device bias).
3. FL (FedAvg, 10 of 30 clients a round) against synchronous and asynchronous gossip on the same lognormal
   devices and links, the server's link unlimited, 1 MB/s, 300 kB/s and 100 kB/s.

Digits, an MLP, 30 clients with Dirichlet(0.5) labels, 400 client updates per FL run, seeds 0 1 2 by default:

    OMP_NUM_THREADS=1 nice -n 10 python experiments/system_heterogeneity.py [--seeds 0 1 2] [--runs DIR]

Each run is a real ``sim`` run (in this process, one after the other) whose folder under ``--runs`` (default: a
folder in the system's temp dir) is reused when it is already complete, so an interrupted sweep resumes.
Results: experiments/system_heterogeneity.csv (one row per run), system_heterogeneity_curves.csv (accuracy
against time_s and bytes), system_heterogeneity_clients.csv (FL clients: speed, kept share), the report
system_heterogeneity.md (its "## Findings" section, written by a person, is kept) and the figures
system_heterogeneity_*.png (system_heterogeneity_report.py). ``--report-only`` redraws them from the CSVs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository, wherever this runs from
sys.path.insert(0, str(HERE))

from system_heterogeneity_report import write_report  # noqa: E402

TARGET = 0.85
COMMON = ["dataset=digits", "model=mlp", "num_clients=30", "progress=false", "checkpoint.every=null"]
LOGNORMAL = ["system=lognormal"]
SIGMA2 = ["system=lognormal", "system.compute_s.sigma=2.0"]
FEDAVG = ["participation.clients_per_round=10", "rounds=40"]
ASYNC = ["federated.schedule=async", "async_fl.concurrency=10"]
FEDBUFF = [*ASYNC, "async_fl.algorithm=fedbuff", "async_fl.buffer_size=5", "rounds=80", "eval_every=2"]
FEDASYNC = [*ASYNC, "async_fl.algorithm=fedasync", "rounds=400", "eval_every=10"]
GOSSIP = ["mode=gossip", "rounds=40"]
# asynchronous gossip runs rounds x wake_interval simulated seconds: 80 s, about what 40 synchronous rounds take
ASYNC_GOSSIP = [
    "mode=gossip",
    "gossip.schedule=async",
    "gossip.wake_interval=0.5",
    "rounds=160",
    "gossip.eval_interval=2",
]


@dataclass(frozen=True)
class Spec:
    part: str  # fedbuff | deadline | gossip
    setting: str  # the condition the lines of a panel share
    method: str  # a line
    overrides: tuple[str, ...]


def specs() -> list[Spec]:
    out = []
    systems = (("constant", ["system=constant"]), ("lognormal σ=1", LOGNORMAL), ("lognormal σ=2", SIGMA2))
    for setting, system in systems:
        for method, algo in (("FedAvg", FEDAVG), ("FedBuff", FEDBUFF), ("FedAsync", FEDASYNC)):
            out.append(Spec("fedbuff", setting, method, (*system, *algo)))
    for method, extra in (
        ("wait for all", []),
        ("deadline 0.5 s", ["system.deadline_s=0.5"]),
        ("deadline 0.3 s", ["system.deadline_s=0.3"]),
        ("over-selection 1.3", ["system.over_selection=1.3"]),
    ):
        out.append(Spec("deadline", "lognormal σ=1", method, (*LOGNORMAL, *FEDAVG, *extra)))
    for setting, bandwidth in (
        ("server unlimited", "null"),
        ("server 1 MB/s", "1e6"),
        ("server 300 kB/s", "3e5"),
        ("server 100 kB/s", "1e5"),
    ):
        server = [] if bandwidth == "null" else [f"system.server_bandwidth={bandwidth}"]  # null: the FedAvg σ=1 run
        out.append(Spec("gossip", setting, "FL", (*LOGNORMAL, *FEDAVG, *server)))
        out.append(Spec("gossip", setting, "sync gossip", (*LOGNORMAL, *GOSSIP)))
        out.append(Spec("gossip", setting, "async gossip", (*LOGNORMAL, *ASYNC_GOSSIP)))
    return out


def run_dir(root: Path, overrides: tuple[str, ...], seed: int) -> Path:
    """One folder per distinct run: the same overrides in two parts (wait for all = FedAvg σ=1) run once."""
    key = hashlib.sha1(" ".join(sorted(overrides)).encode()).hexdigest()[:10]
    return root / f"{key}-seed{seed}"


@contextmanager
def recording_kept(log: dict) -> Iterator[None]:
    """Synchronous FL: which selected clients' updates arrived each round, and each client's speed and labels."""
    from sim.system.fl_clock import FLClock, upload_bytes
    from sim.training import steps_per_client

    original = FLClock.settle

    def settle(self, batch, row):
        kept = original(self, batch, row)
        log.setdefault("selected", []).append(batch.client_ids.tolist())
        log.setdefault("kept", []).append(kept.client_ids.tolist())
        if "task_s" not in log:
            data, system = self.exp.data, self.system
            samples = (steps_per_client(data.client_sizes, self.exp.train) * self.exp.train.batch_size).numpy()
            b = float(self.bytes_per_model)
            up = float(upload_bytes(batch, self.bytes_per_model)[0]) if len(batch.client_ids) else b
            log["task_s"] = [system.task_time(k, b, up, float(samples[k])) for k in range(data.num_clients)]
            log["compute_s"] = [float(v) for v in system.compute_s]
            log["sizes"] = data.client_sizes.tolist()
            labels = [data.y[int(lo) : int(hi)] for lo, hi in zip(data.offsets[:-1], data.offsets[1:], strict=True)]
            log["labels"] = [np.bincount(y.numpy(), minlength=data.num_classes).tolist() for y in labels]
        return kept

    FLClock.settle = settle  # type: ignore[method-assign]
    try:
        yield
    finally:
        FLClock.settle = original  # type: ignore[method-assign]


def run_all(todo: list[tuple[Spec, int]], root: Path) -> None:
    from hydra import compose, initialize_config_module

    import sim.run

    drawn = sim.run.plot_accuracy
    sim.run.plot_accuracy = lambda *_, **__: None  # each run's own accuracy.png: not needed here
    try:  # put back afterwards: a caller in the same process (the smoke test) keeps its figures
        with initialize_config_module(config_module="configs", version_base="1.3"):
            done: set[Path] = set()
            for i, (spec, seed) in enumerate(todo):
                folder = run_dir(root, spec.overrides, seed)
                summary = folder / "summary.json"
                finished = summary.exists() and json.loads(summary.read_text()).get("status") == "completed"
                if folder in done or finished:
                    done.add(folder)
                    continue
                cfg = compose("config", overrides=[*COMMON, *spec.overrides, f"seed={seed}"])
                start, log = time.perf_counter(), {}
                with recording_kept(log):
                    sim.run.run_experiment(cfg, folder, progress=False)
                (folder / "kept.json").write_text(json.dumps(log))
                done.add(folder)
                print(
                    f"[{i + 1}/{len(todo)}] {spec.part}: {spec.setting}, {spec.method}, seed {seed}: "
                    f"{time.perf_counter() - start:.1f} s",
                    flush=True,
                )
    finally:
        sim.run.plot_accuracy = drawn


def collect(todo: list[tuple[Spec, int]], root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, curves, clients) tables from the run folders, through sim.report's own readers."""
    from sim.reporting.communication import cumulative
    from sim.reporting.runs import load_runs
    from sim.reporting.to_target import to_target

    runs, curves, clients = [], [], []
    for spec, seed in todo:
        folder = run_dir(root, spec.overrides, seed)
        (run,), _ = load_runs([folder])
        m = run.metrics
        hit = to_target(run, "test_accuracy", TARGET)
        acc = pd.to_numeric(m["test_accuracy"], errors="coerce")
        total = cumulative(run, "bytes")
        ident = {"part": spec.part, "setting": spec.setting, "method": spec.method, "seed": seed}
        evaluated = acc.notna()
        runs.append(
            {
                **ident,
                "final_acc": float(acc[evaluated].iloc[-1]),
                "time_to_target": hit.time_s,
                "rounds_to_target": hit.rounds,
                "bytes_to_target": hit.bytes,
                "final_time_s": float(pd.to_numeric(m["time_s"]).max()),
                "bytes_total": float(total.iloc[-1]) if total is not None else np.nan,
                "dropped": float(pd.to_numeric(m.get("dropped", pd.Series(dtype=float))).sum()),
                "loop_s": float(run.summary.get("loop_s", np.nan)),
                "overrides": " ".join(spec.overrides),
            }
        )
        curves.append(
            pd.DataFrame(
                {
                    **ident,
                    "time_s": pd.to_numeric(m["time_s"])[evaluated],
                    "test_accuracy": acc[evaluated],
                    "bytes": total[evaluated] if total is not None else np.nan,
                }
            )
        )
        log = json.loads((folder / "kept.json").read_text())
        if spec.part == "deadline" and "task_s" in log:
            selected = np.bincount(np.concatenate(log["selected"]).astype(int), minlength=len(log["task_s"]))
            kept = np.bincount(np.concatenate(log["kept"]).astype(int), minlength=len(log["task_s"]))
            for k, (sel, kep) in enumerate(zip(selected, kept, strict=True)):
                clients.append(
                    {
                        **ident,
                        "client": k,
                        "task_s": log["task_s"][k],
                        "compute_s": log["compute_s"][k],
                        "samples": log["sizes"][k],
                        "selected": int(sel),
                        "kept": int(kep),
                        "labels": " ".join(map(str, log["labels"][k])),
                    }
                )
    return pd.DataFrame(runs), pd.concat(curves, ignore_index=True), pd.DataFrame(clients)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "system_heterogeneity_runs")
    p.add_argument("--out", type=Path, default=HERE, help="folder of the CSVs, the report and the figures")
    p.add_argument("--parts", default="fedbuff,deadline,gossip", help="comma-separated subset of the three parts")
    p.add_argument("--report-only", action="store_true", help="redraw the report and figures from the CSVs")
    args = p.parse_args(argv)
    out = args.out
    names = {
        n: out / f"system_heterogeneity{s}.csv"
        for n, s in (("runs", ""), ("curves", "_curves"), ("clients", "_clients"))
    }
    parts = set(args.parts.split(","))
    command = "OMP_NUM_THREADS=1 nice -n 10 python experiments/system_heterogeneity.py"
    if args.seeds != [0, 1, 2]:
        command += " --seeds " + " ".join(map(str, args.seeds))
    if not args.report_only:
        todo = [(s, seed) for s in specs() if s.part in parts for seed in args.seeds]
        start = time.perf_counter()
        run_all(todo, args.runs)
        tables = collect(todo, args.runs)
        out.mkdir(parents=True, exist_ok=True)
        for path, table in zip(names.values(), tables, strict=True):
            table.to_csv(path, index=False, float_format="%.6g")
        print(f"{len(todo)} runs in {(time.perf_counter() - start) / 60:.1f} min; tables in {out}")
    runs, curves, clients = (pd.read_csv(path) for path in names.values())
    write_report(runs, curves, clients, out, TARGET, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
