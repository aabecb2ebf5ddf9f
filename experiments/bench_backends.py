"""The ray backend against the sequential reference (and Flower's simulation) on W1; prints tables, no asserts.

Two measurements, every figure also given as a ratio against ``sequential`` measured in this run:

1. **Per-round overhead**: W1's rounds with *no-op training*, evaluation only after the last round,
   so a round's wall time is what the backend itself costs: sampling, splitting the clients into
   chunks, putting the start model into the object store, one task per actor, gathering and
   reassembling ``[K, P]``, aggregation. No-op means each client returns its start model without a
   single SGD step: ``backend.noop_train=true`` for ray (the actors skip ``local_train``; the data,
   the chunks, the object references and the round trips are all real) and the same in-process no-op
   for sequential (:class:`NoopSequential`). ``train.lr=0`` or ``train.local_steps=1`` would still run
   forward and backward passes, which the actors parallelize, so the figure would mix the backend's
   cost with training. A third ray row has 10x as many clients (still 50 per round): its overhead
   should not grow, since every driver-side step is O(clients trained).
2. **End to end**: W1 as defined (50 rounds, evaluation every round) with real training; ``loop_s``
   is the round loop (Ray's start-up and the actors' start are setup, reported apart), and Flower's
   ``run_simulation`` on the same data and model (``experiments/flower_w1.py``) where flwr is installed.

Every process uses one torch thread (the actors too), so the ratios compare backends, not thread
settings. The ray rows share one local Ray, started the way ``backend.address=null`` starts it.

    python experiments/bench_backends.py [--rounds 50] [--overhead-rounds 30] [--no-flower]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import workloads` wherever this is run from

import workloads  # noqa: E402

from sim.backends import ClientBatch, SequentialBackend  # noqa: E402
from sim.experiment import build_experiment  # noqa: E402
from sim.federated import run_federated  # noqa: E402
from sim.results import MetricsLog  # noqa: E402


class NoopSequential(SequentialBackend):
    """The sequential backend with no-op training: each client returns its start model untouched."""

    def train(self, client_ids, start, round_, needs=frozenset()) -> ClientBatch:
        K = len(client_ids)
        params = start.expand(K, -1).clone() if start.dim() == 1 else start.clone()
        return ClientBatch(
            client_ids=client_ids.clone(),
            params=params,
            num_samples=self._setup.data.client_sizes[client_ids],
            train_loss=torch.full((K,), float("nan")),
        )


def run_loop(overrides: tuple[str, ...], backend=None) -> dict:
    """One FL run: setup time, loop time, per-round seconds (from metrics.csv's wall_s) and final accuracy."""
    cfg = workloads.compose_workload(workloads.W1, *overrides)
    t0 = time.perf_counter()
    exp = build_experiment(cfg)
    if backend is not None:
        exp.backend = backend
    exp.backend.setup(exp.setup)
    setup_s = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            log = MetricsLog(Path(tmp) / "metrics.csv")
            t1 = time.perf_counter()
            run_federated(exp, log)
            loop_s = time.perf_counter() - t1
    finally:
        exp.backend.close()
    walls = [r["wall_s"] for r in log.rows]
    per_round = [b - a for a, b in itertools.pairwise(walls)]
    return {
        "setup_s": setup_s,
        "loop_s": loop_s,
        "per_round": per_round,
        "retries": sum(r.get("retries", 0) or 0 for r in log.rows[1:]),
        "final_accuracy": log.rows[-1].get("test_accuracy", float("nan")),
    }


def steady(per_round: list[float]) -> float:
    """Median seconds of a round, leaving out the first (warm-up) and the last (it evaluates)."""
    inner = per_round[1:-1] or per_round
    return statistics.median(inner)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=50, help="rounds of the end-to-end W1 runs")
    ap.add_argument("--overhead-rounds", type=int, default=30, help="rounds of the no-op overhead runs")
    ap.add_argument("--no-flower", action="store_true", help="leave out Flower's run_simulation row")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import ray

    from sim.backends import ray_cluster

    ray_cluster.connect(None, None)  # one local Ray for every ray row, as backend.address=null starts it
    cpus = int(ray.cluster_resources().get("CPU", 0))
    R = args.overhead_rounds
    quiet = (f"rounds={R}", f"eval_every={R}")
    ray_opts = ("backend=ray", "backend.noop_train=true")
    print(
        f"W1: FedAvg, Synthetic(1,1), 1000 clients, 50/round, MLP 60-64-10; torch {torch.__version__}, "
        f"ray {ray.__version__}, {cpus} CPUs, 1 torch thread per process",
        flush=True,
    )

    overhead = [("sequential", run_loop((*quiet, "backend=sequential"), NoopSequential(num_threads=1)))]
    for actors in (1, 2):
        overhead.append(
            (
                f"ray, {actors} actor{'s' if actors > 1 else ''}",
                run_loop((*quiet, *ray_opts, f"backend.num_actors={actors}")),
            )
        )
    overhead.append(
        ("ray, 2 actors, 10,000 clients", run_loop((*quiet, *ray_opts, "backend.num_actors=2", "num_clients=10000")))
    )
    e2e = [("sequential", run_loop((f"rounds={args.rounds}", "backend=sequential", "backend.num_threads=1")))]
    for actors in (1, 2):
        e2e.append(
            (
                f"ray, {actors} actor{'s' if actors > 1 else ''}",
                run_loop((f"rounds={args.rounds}", "backend=ray", f"backend.num_actors={actors}")),
            )
        )
    ray.shutdown()  # Flower starts its own Ray

    flower_note = ""
    if args.no_flower:
        flower_note = "Flower: left out (--no-flower)."
    else:
        try:
            import flwr  # noqa: F401
            from flower_w1 import run_flower_w1
        except ImportError as exc:
            flower_note = f"Flower: row left out ({exc})."
        else:
            import logging

            logging.getLogger("flwr").setLevel(logging.WARNING)  # keep its per-round log out of the tables
            f = run_flower_w1(args.rounds)
            e2e.append(
                (
                    "flower run_simulation",
                    {
                        "setup_s": f["process_s"] - f["loop_s"],
                        "loop_s": f["loop_s"],
                        "per_round": f["per_round_s"],
                        "retries": 0,
                        "final_accuracy": f["final_accuracy"],
                    },
                )
            )
    base = steady(overhead[0][1]["per_round"])
    print(f"\n1. Per-round overhead, no-op training, {R} rounds (median of rounds 2..{R - 1})")
    print(f"{'backend':<32} {'ms/round':>9} {'time vs seq':>14} {'setup_s':>8}")
    for name, r in overhead:
        ms = 1000 * steady(r["per_round"])
        print(f"{name:<32} {ms:>9.2f} {ms / (1000 * base):>13.1f}x {r['setup_s']:>8.1f}")

    seq = e2e[0][1]
    print(f"\n2. End to end, W1, {args.rounds} rounds (loop_s: the round loop; setup_s: data, model, Ray, actors)")
    print(f"{'backend':<32} {'loop_s':>8} {'time vs seq':>14} {'ms/round':>9} {'final_acc':>10} {'setup_s':>8}")
    for name, r in e2e:
        print(
            f"{name:<32} {r['loop_s']:>8.2f} {r['loop_s'] / seq['loop_s']:>13.2f}x "
            f"{1000 * steady(r['per_round']):>9.1f} {r['final_accuracy']:>10.4f} {r['setup_s']:>8.1f}"
        )
    if flower_note:
        print(flower_note)
    else:
        extra = steady(e2e[-1][1]["per_round"]) - steady(seq["per_round"])
        print(
            f"Flower's round costs {1000 * extra:.0f} ms more than sequential's on the same training "
            "(it has no no-op mode; this is its overhead estimate)."
        )


if __name__ == "__main__":
    main()
