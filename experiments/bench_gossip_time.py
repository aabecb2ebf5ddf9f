"""What simulated time costs synchronous gossip: W2's loop with ``system=none`` against a system model.

Issue 25 asks the clock to cost little: with a system model the gossip loop within 10% of ``system=none``.
Each setting runs W2 (experiments/workloads.py: 1000 nodes, random 4-regular graph, MLP 60-32-10, gossip
averaging) in this process, in turn, ``--repeats`` times (interleaved, so a load change on a shared machine
hits every setting alike); the table gives each setting's median training-loop seconds (the last row's
``wall_s``), its ratio to ``system=none``, and the seconds spent in the round clock alone
(``RoundClock.round_time`` on the same rounds, timed apart from the loop) as a share of the ``none`` loop: on a
loaded machine the loop ratio is noise, the clock's own share is the cost. ``--time-varying`` redraws the
graph every round, so every round asks the system model for every edge's link time.

    OMP_NUM_THREADS=1 python experiments/bench_gossip_time.py [--rounds 10] [--repeats 3] [--time-varying]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from workloads import W2  # noqa: E402

from sim.experiment import build_experiment  # noqa: E402
from sim.gossip.sync import round_messages  # noqa: E402
from sim.gossip.timing import RoundClock  # noqa: E402
from sim.run import run_experiment  # noqa: E402

SETTINGS = {"none": ("system=none",), "constant": ("system=constant",), "lognormal": ("system=lognormal",)}


def config(extra: tuple[str, ...]):
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose(config_name="config", overrides=[*W2, "checkpoint.every=null", *extra])


def loop_seconds(extra: tuple[str, ...]) -> float:
    with tempfile.TemporaryDirectory() as out:
        summary = run_experiment(config(extra), Path(out))
    return float(summary["loop_s"])


def clock_seconds(extra: tuple[str, ...], rounds: int) -> float:
    """The round clock alone on the run's rounds (mixing matrices and losses drawn as the loop draws them)."""
    exp = build_experiment(config(extra))
    clock = RoundClock(exp, exp.gossip.order)
    message_bytes = exp.layout.size * exp.initial_params.element_size()
    messages = [round_messages(exp.topology, r, exp.gossip.drop_prob, int(exp.cfg.seed)) for r in range(1, rounds + 1)]
    t0 = time.perf_counter()
    for r, (w, lost) in enumerate(messages, start=1):
        clock.round_time(r, w, lost, message_bytes)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-varying", action="store_true", help="redraw the graph every round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = (f"rounds={args.rounds}", "eval_every=1000", "topology.time_varying=" + str(args.time_varying).lower())
    loops: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):
        for name, extra in SETTINGS.items():
            loops[name].append(loop_seconds((*common, *extra)))
    base = statistics.median(loops["none"])
    graph = "time-varying" if args.time_varying else "static"
    print(f"W2 sync gossip, {args.rounds} rounds, {graph} graph, median of {args.repeats}, OMP_NUM_THREADS=1")
    print(f"{'system':<10} {'loop s':>8} {'/ none':>7} {'clock s':>8} {'clock/loop':>10}  loop s of each repeat")
    for name, extra in SETTINGS.items():
        loop = statistics.median(loops[name])
        clock = clock_seconds((*common, *extra), args.rounds)
        each = " ".join(f"{s:.2f}" for s in loops[name])
        print(f"{name:<10} {loop:8.2f} {loop / base:7.3f} {clock:8.4f} {clock / base:10.2%}  {each}")


if __name__ == "__main__":
    main()
