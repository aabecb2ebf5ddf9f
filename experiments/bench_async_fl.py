"""Asynchronous FL at scale: 10,000 clients, 100 training at once, 20,000 client updates of an MLP.

Data and model of W1 (``workloads.py``: Synthetic(1,1), W1's client sizes, MLP 60-64-10, 1 local epoch of
batch 10) with ``num_clients=10000``; ``federated.schedule=async async_fl.concurrency=100``. Rows:
FedAsync (20,000 server updates, one per client update) and FedBuff (buffer 10: 2,000 server updates of
10 client updates each), with ``system=none`` (every task 1.0 s: waves of 100 tasks start at one instant
and train as one vectorized batch) and ``system=lognormal`` (every task its own length: tasks are
trained in the batches collected between two results the server needs). 10 evaluations a run.
``loop_s`` of summary.json (the event loop with its training, evaluations included; data set-up and
model build excluded) and the mean number of tasks per backend call are reported.

    OMP_NUM_THREADS=1 nice -n 10 python experiments/bench_async_fl.py [--updates 20000] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import workloads` wherever this is run from

import pandas as pd  # noqa: E402
import workloads  # noqa: E402

from sim.run import run_experiment  # noqa: E402

ALGORITHMS = {
    "fedasync": ("async_fl.algorithm=fedasync",),
    "fedbuff K=10": ("async_fl.algorithm=fedbuff", "async_fl.buffer_size=10"),
}
SYSTEMS = {"none": ("system=none",), "lognormal": ("system=lognormal",)}


def overrides(updates: int, clients: int, concurrency: int, algorithm: str, system: str) -> list[str]:
    per_update = 10 if algorithm.startswith("fedbuff") else 1  # client updates per server update
    rounds = updates // per_update
    return [
        *(o for o in workloads.W1 if not o.startswith(("num_clients=", "rounds=", "participation"))),
        f"num_clients={clients}",
        f"rounds={rounds}",
        f"eval_every={max(1, rounds // 10)}",
        "backend=vectorized",
        "checkpoint.every=null",
        "federated.schedule=async",
        f"async_fl.concurrency={concurrency}",
        *ALGORITHMS[algorithm],
        *SYSTEMS[system],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=20_000, help="client updates the server takes")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="200 clients, 10 at once, 200 updates")
    args = parser.parse_args()
    if args.smoke:
        args.updates, args.clients, args.concurrency = 200, 200, 10
    load = os.getloadavg()[0]
    print(
        f"async FL: {args.clients} clients, concurrency {args.concurrency}, {args.updates} client updates, "
        f"MLP 60-64-10, vectorized backend, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"load average at start {load:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        "| algorithm | system | server updates | loop s | total s | updates per call | final accuracy | simulated s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in ALGORITHMS:
            for system in SYSTEMS:
                cfg = workloads.compose_workload(
                    tuple(overrides(args.updates, args.clients, args.concurrency, algorithm, system))
                )
                out = Path(tmp) / f"{algorithm.split()[0]}_{system}"
                t0 = time.perf_counter()
                summary = run_experiment(cfg, out)
                total = time.perf_counter() - t0
                last = summary["final"]
                frame = pd.read_csv(out / "metrics.csv")
                per_call = frame["num_participants"].sum() / frame["train_calls"].sum()
                print(
                    f"| {algorithm} | {system} | {last['round']} | {summary['loop_s']:.1f} | {total:.1f} | "
                    f"{per_call:.1f} | {last['test_accuracy']:.3f} | {frame['time_s'].iloc[-1]:.1f} |"
                )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
