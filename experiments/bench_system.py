"""What the clock costs: W1's loop time with ``system=none`` against a lognormal system model.

W1 (``workloads.py``): FedAvg on Synthetic(1,1), 1,000 clients, 50 per round, MLP 60-64-10, 50 rounds.
Rows: ``system=none`` (the unit clock), ``system=lognormal`` (draws per client, a task time per
participant per round), and ``system=lognormal`` with ``over_selection=1.3`` (65 clients train, the
first 50 are kept: more training, so its loop time is not the clock's cost alone). Runs alternate in
this process, ``--repeats`` times; the median and the fastest ``loop_s`` of summary.json (the rounds only)
are shown. On a shared machine the loop times vary several-fold, so the clock's own cost is also timed
apart: one round's timing of 50 W1 participants (``fl_round_timing``), in microseconds.

    OMP_NUM_THREADS=1 python experiments/bench_system.py [--repeats 3] [--rounds 50] [--smoke]
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

ROWS = {
    "none": ("system=none",),
    "lognormal": ("system=lognormal",),
    "lognormal + over-selection 1.3": ("system=lognormal", "system.over_selection=1.3"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="2 rounds, 1 repeat: checks the script runs")
    args = parser.parse_args()
    repeats, rounds = (1, 2) if args.smoke else (args.repeats, args.rounds)
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for name, overrides in ROWS.items():
                cfg = workloads.compose_workload(workloads.W1, f"rounds={rounds}", "backend=vectorized", *overrides)
                out = Path(tmp) / f"{r}_{name.replace(' ', '_')}"
                times[name].append(float(run_experiment(cfg, out)["loop_s"]))
    base, best = statistics.median(times["none"]), min(times["none"])
    print(f"W1, {rounds} rounds, vectorized backend, {repeats} run(s) each")
    print("| system | loop s (median) | loop s (fastest) | runs | median / none | fastest / none |")
    print("|---|---|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {med:.2f} | {min(values):.2f} | {runs} | {med / base:.3f} | {min(values) / best:.3f} |")
    per_round = clock_cost_us()
    print(
        f"clock alone: {per_round:.0f} us a round (fl_round_timing, 50 participants), "
        f"{100 * per_round * 1e-6 * rounds / best:.2f}% of the fastest system=none loop"
    )


def clock_cost_us(calls: int = 2000) -> float:
    """Microseconds of one round's timing: 50 participants' task times, the sort, the kept mask."""
    import time

    import numpy as np

    from sim.system import build_system
    from sim.system.fl_round import fl_round_timing

    cfg = workloads.compose_workload(workloads.W1, "system=lognormal")
    system = build_system(cfg, 1000)
    rng = np.random.default_rng(0)
    clients = np.sort(rng.choice(1000, 50, replace=False))
    samples, up = rng.integers(10, 300, 50).astype(np.float64), np.full(50, 18_000.0)
    start = time.perf_counter()
    for _ in range(calls):
        fl_round_timing(system, 0.0, clients, samples, 18_000.0, up)
    return (time.perf_counter() - start) / calls * 1e6


if __name__ == "__main__":
    main()
