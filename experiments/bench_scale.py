"""How far one process goes: the vectorized backend against the sequential reference and Flower.

Prints one table per part; every speed figure is a ratio between runs made by this script in one
invocation, each run in its own child process (so its import, setup and peak memory are its own).

- ``w1``: FedAvg, Synthetic(1,1), 1000 clients, 50 per round, MLP 60-64-10, 50 rounds
  (experiments/workloads.py). sequential vs vectorized, and Flower's ``run_simulation`` on the same
  data and model where flwr is installed (experiments/flower_w1.py). ``loop`` is the simulation's
  round loop, ``process`` the whole command from start to exit.
- ``w2``: synchronous gossip, 1000 nodes, random 4-regular graph, MLP 60-32-10, 30 rounds.
- ``scale``: the same gossip on 1,000 and 10,000 nodes (MLP 60-32-10, 100 rounds) and on 1,000,
  10,000 and 100,000 nodes (logistic regression, 20 rounds): time per round, per node-round, and
  peak memory. Accuracy is tested on 100 sampled nodes at the first and last round.
- ``aggregate``: FedAvg's weighted average of 50 models of 10M parameters against a plain copy of
  the same bytes (``torch.Tensor.copy_``), in GB/s.

    python experiments/bench_scale.py                 # everything (about 15 minutes on 2 cores)
    python experiments/bench_scale.py --parts w1 aggregate
    python experiments/bench_scale.py --smoke         # tiny sizes, to check that it runs

``--smoke`` forks its measurement processes from the script's own (imports paid once), so its figures include
the parent's memory and say nothing; without it every measurement is a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

PARTS = ("w1", "w2", "scale", "aggregate")


# ---- children: one measured run each ----------------------------------------------------------------
def child_sim(args: list[str]) -> dict:
    """One gossipsoup run in this (fresh) process."""
    import torch

    from sim.run import run_experiment

    spec = json.loads(args[0])
    workload = getattr(workloads, spec["workload"]) if isinstance(spec["workload"], str) else tuple(spec["workload"])
    cfg = workloads.compose_workload(workload, *spec["overrides"])
    with tempfile.TemporaryDirectory() as out:
        summary = run_experiment(cfg, out)
    return {
        "loop_s": summary["loop_s"],
        "setup_s": summary["setup_s"],
        "backend": summary["backend"],
        "accuracy": summary["final"]["test_accuracy"],
        "threads": torch.get_num_threads(),
    }


def child_flower(args: list[str]) -> dict:
    import flower_w1

    result = flower_w1.run_flower_w1(int(args[0]))
    return {"loop_s": result["loop_s"], "accuracy": result["final_accuracy"], "inner_process_s": result["process_s"]}


def child_aggregate(args: list[str]) -> dict:
    import torch

    from strategies import AggregationInfo
    from strategies.fedavg import FedAvg

    models, params, repeats = int(args[0]), int(args[1]), int(args[2])
    stacked = torch.randn(models, params)
    samples = torch.randint(10, 300, (models,))
    info = AggregationInfo(
        client_ids=torch.arange(models),
        num_samples=samples,
        round=1,
        num_clients=models,
        layout=None,
        reference=stacked[0],
    )
    strategy = FedAvg()
    state = strategy.init_state(stacked[0], models)
    copy_dst = torch.empty_like(stacked)
    nbytes = stacked.numel() * stacked.element_size()

    def best_of(fn) -> float:
        fn()  # warm up: first touch of the output pages
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_avg = best_of(lambda: strategy.aggregate(stacked, info, state))
    t_copy = best_of(lambda: copy_dst.copy_(stacked))
    return {"bytes": nbytes, "aggregate_s": t_avg, "copy_s": t_copy, "threads": torch.get_num_threads()}


CHILDREN = {"sim": child_sim, "flower": child_flower, "aggregate": child_aggregate}


#: --smoke: measurements run in processes forked from this one (tiny sizes: the figures only show that it runs)
FORK_CHILDREN = False


def _child(kind: str, args: list[str]) -> dict:
    result = CHILDREN[kind](args)
    result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def _forked_child(kind: str, args: list[str]) -> dict:
    """``_child`` in a process forked from this one, after the imports every child makes (none starts a thread)."""
    import importlib
    import multiprocessing

    for module in ("sim.experiment", "sim.run", "torch._dynamo"):
        importlib.import_module(module)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(_child, (kind, args))


def run_child(kind: str, *args: str) -> dict:
    """Run one measurement in a fresh process; adds its whole wall time and peak memory."""
    start = time.perf_counter()
    if FORK_CHILDREN:
        result = _forked_child(kind, list(args))
        result["process_s"] = time.perf_counter() - start
        return result
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {kind} {args} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    return result


def sim_run(workload, *overrides: str) -> dict:
    return run_child("sim", json.dumps({"workload": workload, "overrides": list(overrides)}))


# ---- parts ------------------------------------------------------------------------------------------
def part_w1(rounds: int) -> None:
    rows = [
        ("sequential", sim_run("W1", f"rounds={rounds}", "backend=sequential")),
        ("vectorized", sim_run("W1", f"rounds={rounds}", "backend=vectorized")),
    ]
    try:
        import flower_w1  # noqa: F401
        import flwr  # noqa: F401

        rows.append(("flower run_simulation", run_child("flower", str(rounds))))
    except ImportError as exc:
        print(f"(Flower row skipped: {exc})")
    base = rows[0][1]
    print(f"\nW1: FedAvg, Synthetic(1,1), 1000 clients, 50 per round, MLP 60-64-10, {rounds} rounds (seed 0)")
    print(
        f"{'engine':<24}{'loop s':>9}{'s/round':>9}{'process s':>11}"
        f"{'loop vs seq':>13}{'process vs seq':>16}{'accuracy':>10}"
    )
    for name, r in rows:
        print(
            f"{name:<24}{r['loop_s']:>9.2f}{r['loop_s'] / rounds:>9.4f}{r['process_s']:>11.2f}"
            f"{base['loop_s'] / r['loop_s']:>12.2f}x{base['process_s'] / r['process_s']:>15.2f}x"
            f"{r['accuracy']:>10.4f}"
        )
    if len(rows) == 3:
        vec, flw = rows[1][1], rows[2][1]
        print(
            f"vectorized against Flower: loop {flw['loop_s'] / vec['loop_s']:.1f}x faster, "
            f"whole process {flw['process_s'] / vec['process_s']:.1f}x faster"
        )


def part_w2(rounds: int, nodes: int = 1000) -> None:
    # testing all 1000 nodes on the pooled test set costs ~80x a round of their training, and the
    # same for both backends; measure the simulation, with 100 sampled nodes tested at start and end
    # (--smoke: 100 nodes, so that the test of this script does not spend seconds on a sequential round)
    size = () if nodes == 1000 else (f"num_clients={nodes}",)
    rows = [
        (b, sim_run("W2", *size, f"rounds={rounds}", f"backend={b}", f"eval_every={rounds}", "gossip.eval_nodes=100"))
        for b in ("sequential", "vectorized")
    ]
    base = rows[0][1]
    print(
        f"\nW2: synchronous gossip, {nodes} nodes, random 4-regular, MLP 60-32-10, {rounds} rounds (seed 0); "
        "accuracy: mean over 100 sampled nodes"
    )
    print(f"{'backend':<14}{'loop s':>9}{'s/round':>9}{'speedup':>9}{'mean node accuracy':>20}")
    for name, r in rows:
        print(
            f"{name:<14}{r['loop_s']:>9.2f}{r['loop_s'] / rounds:>9.3f}{base['loop_s'] / r['loop_s']:>8.2f}x"
            f"{r['accuracy']:>20.4f}"
        )


def part_scale(sizes: list[tuple[int, int, str]]) -> None:
    print("\nScale: synchronous gossip on random 4-regular graphs, vectorized backend, accuracy of 100 sampled nodes")
    print(
        f"{'nodes':>8}{'model':>8}{'rounds':>8}{'loop s':>9}{'process s':>11}{'s/round':>9}"
        f"{'us/node-round':>15}{'peak GB':>9}{'accuracy':>10}"
    )
    for nodes, rounds, model in sizes:
        r = sim_run(list(workloads.gossip_scale(nodes, rounds, model)), "backend=vectorized")
        per_round = r["loop_s"] / rounds
        print(
            f"{nodes:>8}{model:>8}{rounds:>8}{r['loop_s']:>9.1f}{r['process_s']:>11.1f}{per_round:>9.3f}"
            f"{1e6 * per_round / nodes:>15.1f}{r['peak_gb']:>9.2f}{r['accuracy']:>10.4f}"
        )


def part_aggregate(models: int, params: int) -> None:
    r = run_child("aggregate", str(models), str(params), "5")
    gb = r["bytes"] / 1e9
    print(
        f"\nAggregation: FedAvg weighted average of {models} models x {params / 1e6:.0f}M float32 parameters "
        f"({gb:.2f} GB read), best of 5, {r['threads']} threads"
    )
    print(f"{'operation':<28}{'seconds':>9}{'GB/s':>8}{'vs copy':>9}")
    print(
        f"{'weighted average':<28}{r['aggregate_s']:>9.3f}{gb / r['aggregate_s']:>8.2f}"
        f"{r['copy_s'] / r['aggregate_s']:>8.0%}"
    )
    print(f"{'memory copy (same bytes)':<28}{r['copy_s']:>9.3f}{gb / r['copy_s']:>8.2f}{1:>8.0%}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3:])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every part runs")
    args = ap.parse_args()
    smoke = args.smoke
    global FORK_CHILDREN
    FORK_CHILDREN = smoke
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    if "w1" in args.parts:
        part_w1(2 if smoke else 50)
    if "w2" in args.parts:
        part_w2(*((1, 100) if smoke else (30, 1000)))
    if "scale" in args.parts:
        part_scale(
            [(200, 2, "mlp"), (400, 2, "logreg")]
            if smoke
            else [
                (1000, 100, "mlp"),
                (10_000, 100, "mlp"),
                (1000, 20, "logreg"),
                (10_000, 20, "logreg"),
                (100_000, 20, "logreg"),
            ]
        )
    if "aggregate" in args.parts:
        part_aggregate(*((5, 100_000) if smoke else (50, 10_000_000)))


if __name__ == "__main__":
    main()
