"""What checkpoints cost: loop time with and without them, in one run of this script, and their size.

Three workloads from ``workloads.py``:

* **W1**: FedAvg on Synthetic(1,1), 1,000 clients, 50 per round, MLP 60-64-10, 50 rounds;
* **gossip10k**: synchronous gossip on 10,000 nodes (W2's random 4-regular graph, MLP 60-32-10),
  a checkpoint holding every node's model (``[10000, P]``);
* **async1k**: asynchronous gossip on W2's 1,000 nodes, push_pull with uniform delays in [0.1, 0.8],
  10% message loss, on/off sessions; ``checkpoint.every`` counts evaluations (one per time unit),
  and a checkpoint adds the event queue with the models in flight to every node's model.

For each, the run without checkpoints and with ``checkpoint.every`` in ``--every`` (each one run
after the other, in this process, alternating, ``--repeats`` times; the median loop time counts),
and the size of ``checkpoint.safetensors``. The loop time is ``loop_s`` of summary.json (the rounds
only, not the data and model setup).

    python experiments/bench_checkpoint.py [--every 10 1] [--repeats 3] [--gossip-rounds 10] [--async] [--smoke]

``--async`` adds the asynchronous row (also to ``--smoke``, at 50 nodes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import workloads` wherever this is run from

import workloads  # noqa: E402

from sim.run import run_experiment  # noqa: E402


def async_gossip(nodes: int, rounds: int) -> tuple[str, ...]:
    """W2's graph and model, asynchronous: push_pull, delays, losses and churn keep messages in flight."""
    return (
        *workloads.gossip_scale(nodes, rounds),
        "gossip.schedule=async",
        "gossip.protocol=push_pull",
        "gossip.delay=uniform",
        "gossip.delay_low=0.1",
        "gossip.delay_value=0.8",
        "gossip.drop_prob=0.1",
        "gossip.churn=sessions",
    )


def loop_seconds(workload: tuple[str, ...], out: Path, *overrides: str) -> tuple[float, float]:
    """(loop seconds, checkpoint MB) of one run into ``out``."""
    cfg = workloads.compose_workload(workload, *overrides)
    summary = run_experiment(cfg, out, progress=False)
    checkpoint = out / "checkpoint.safetensors"
    return float(summary["loop_s"]), checkpoint.stat().st_size / 1e6 if checkpoint.exists() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", nargs="+", type=int, default=[10, 1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gossip-rounds", type=int, default=10)
    ap.add_argument("--async", dest="asynchronous", action="store_true", help="add the asynchronous gossip row")
    ap.add_argument("--async-rounds", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: a test that the script runs")
    args = ap.parse_args()
    if args.smoke:
        runs = {
            "W1 (smoke)": (*workloads.W1, "num_clients=50", "participation.clients_per_round=10", "rounds=4"),
            "gossip (smoke)": workloads.gossip_scale(50, 4),
        }
        if args.asynchronous:
            runs["async (smoke)"] = async_gossip(50, 4)
    else:
        runs = {"W1": workloads.W1, "gossip10k": workloads.gossip_scale(10_000, args.gossip_rounds)}
        if args.asynchronous:
            runs["async1k"] = async_gossip(1_000, args.async_rounds)
    print("| workload | checkpoint.every | loop s (median) | vs none | checkpoint MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, workload in runs.items():
            settings = ["null", *map(str, args.every)]
            times: dict[str, list[float]] = {s: [] for s in settings}
            sizes: dict[str, float] = {}
            for r in range(args.repeats):
                for s in settings:
                    out = Path(tmp) / f"{name}-{s}-{r}".replace(" ", "_")
                    seconds, sizes[s] = loop_seconds(workload, out, f"checkpoint.every={s}")
                    times[s].append(seconds)
            base = statistics.median(times["null"])
            for s in settings:
                t = statistics.median(times[s])
                print(f"| {name} | {s} | {t:.2f} | {100 * (t / base - 1):+.1f}% | {sizes[s]:.2f} |")


if __name__ == "__main__":
    main()
