"""torch's thread count on a shared machine: the automatic rule (sim/threads.py) against torch's default.

For each workload, two thread settings:

* ``auto``: ``backend.num_threads=null`` (the default): one thread for these small models;
* ``torch default``: ``backend.num_threads=N`` with N the count torch picks by itself in a fresh process
  (one per core), i.e. what every run used before the rule existed;

and two situations: the run **alone**, and **two runs at once** (two processes started together, as
a user running two seeds side by side, or one run next to another job). Every run is a separate
``python -m sim`` process, started by this script; the children get no OMP_NUM_THREADS /
MKL_NUM_THREADS, like a new user's shell. The table gives each run's training-loop seconds
(``loop_s`` in summary.json) and whole-process seconds, and the ratios: two-at-once over alone, and
torch default over auto.

    python experiments/bench_threads.py [--workloads default async_gossip] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS = {
    # python -m sim as it ships: FedAvg on digits, 20 clients, MLP 64-64-10, 50 rounds
    "default": (),
    # 20-node asynchronous gossip on a ring (push, exponential clocks), 50 rounds' worth of time
    "async_gossip": ("mode=gossip", "topology=ring", "strategy=gossip_avg", "gossip.schedule=async"),
}


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, "HYDRA_FULL_ERROR": "1"}


def torch_default_threads() -> int:
    """The intra-op thread count torch picks in a fresh process with a clean environment."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    )
    return int(out.stdout.strip())


def start(workload: tuple[str, ...], threads: int | None, out: Path, extra: tuple[str, ...]) -> tuple:
    setting = "null" if threads is None else str(threads)
    cmd = [
        sys.executable,
        "-m",
        "sim",
        "progress=false",
        *workload,
        *extra,
        f"backend.num_threads={setting}",
        f"hydra.run.dir={out}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    return proc, out, time.perf_counter()


def finish(started: list[tuple]) -> list[dict]:
    results = []
    for proc, out, t0 in started:
        _, err = proc.communicate()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"a run failed (exit {proc.returncode}):\n{err[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
        results.append(
            {
                "loop_s": summary["loop_s"],
                "process_s": wall,
                "threads": summary["threads"]["torch"],
                "accuracy": summary["final"]["test_accuracy"],
            }
        )
    return results


def measure(
    workload: tuple[str, ...], threads: int | None, at_once: int, repeats: int, tmp: Path, extra: tuple[str, ...]
) -> dict:
    """Mean loop / process seconds over ``repeats`` x ``at_once`` runs, ``at_once`` of them started together."""
    runs = []
    for r in range(repeats):
        started = [start(workload, threads, tmp / f"{threads}-{at_once}-{r}-{i}", extra) for i in range(at_once)]
        runs += finish(started)
    return {
        "loop_s": statistics.mean(x["loop_s"] for x in runs),
        "process_s": statistics.mean(x["process_s"] for x in runs),
        "threads": runs[0]["threads"],
        "accuracy": runs[0]["accuracy"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=1, help="rounds of measurement per cell (means are shown)")
    parser.add_argument("--smoke", action="store_true", help="2 rounds, 4 clients: checks that the script runs")
    args = parser.parse_args(argv)
    extra = ("rounds=2", "num_clients=4", "participation.clients_per_round=2") if args.smoke else ()
    default = torch_default_threads()
    load = os.getloadavg()[0]
    print(
        f"# threads: automatic rule vs torch's default ({default}) on {os.cpu_count()} CPUs "
        f"(load average {load:.2f} at the start)\n"
    )
    print(
        "| workload | setting | torch threads | runs at once | loop s | process s | two-at-once / alone "
        "| torch default / auto |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="bench_threads") as tmp:
        for name in args.workloads:
            cells = {}
            for label, threads in (("auto", None), ("torch default", default)):
                for at_once in (1, 2):
                    cells[label, at_once] = measure(
                        WORKLOADS[name], threads, at_once, args.repeats, Path(tmp) / name, extra
                    )
            for (label, at_once), c in cells.items():
                alone = cells[label, 1]["loop_s"]
                vs_auto = c["loop_s"] / cells["auto", at_once]["loop_s"]
                print(
                    f"| {name} | {label} | {c['threads']} | {at_once} | {c['loop_s']:.2f} | {c['process_s']:.2f} "
                    f"| {c['loop_s'] / alone:.2f}x | {vs_auto:.2f}x |",
                    flush=True,
                )
    print(f"\n(load average {os.getloadavg()[0]:.2f} at the end)")


if __name__ == "__main__":
    main()
