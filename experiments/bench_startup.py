"""W1 as a user runs it: the whole ``python -m sim`` process, beside Flower's ``run_simulation`` of W1.

The issue-26 figure: the command from start to exit (imports, config, data, the 50 rounds, result
files), not the training loop alone. Each gossipsoup run is a fresh process; the best of ``--repeats``
is reported (start-up is what other processes on the machine slow down most) with its CPU seconds.
Flower runs once (``experiments/flower_w1.py``: its own FedAvg on the same data and model).
``--before DIR`` also times the same command in another checkout (e.g. a git worktree of an older
commit), so a before/after pair comes from one invocation.

``--default`` also times the default command (``python -m sim``: digits, 20 clients, 50 rounds) in each checkout.

    OMP_NUM_THREADS=1 python experiments/bench_startup.py [--repeats 3] [--before DIR] [--no-flower] [--default]
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

ROOT = HERE.parent


def timed(cmd: list[str], cwd: Path) -> dict:
    """Wall seconds and CPU seconds (user + system) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "stdout": proc.stdout}


def sim_runs(checkout: Path, repeats: int, args: tuple[str, ...] = workloads.W1) -> list[dict]:
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            r = timed([sys.executable, "-m", "sim", *args, f"hydra.run.dir={out}"], checkout)
            summary = json.loads((Path(out) / "summary.json").read_text())
        r.update(loop_s=summary["loop_s"], accuracy=summary["final"]["test_accuracy"], backend=summary["backend"])
        runs.append(r)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", type=Path, help="another checkout to time the same command in")
    ap.add_argument("--no-flower", action="store_true")
    ap.add_argument("--default", action="store_true", help="also time the default command (digits) in each checkout")
    args = ap.parse_args()
    rows = []
    if args.before:
        rows.append((f"gossipsoup before ({args.before.name})", sim_runs(args.before, args.repeats)))
    rows.append(("gossipsoup `python -m sim`", sim_runs(ROOT, args.repeats)))
    default = []
    if args.default:  # the digits run of configs/config.yaml, no Flower counterpart
        if args.before:
            default.append((f"default run before ({args.before.name})", sim_runs(args.before, args.repeats, ())))
        default.append(("default run `python -m sim`", sim_runs(ROOT, args.repeats, ())))
    if not args.no_flower:
        r = timed([sys.executable, str(HERE / "flower_w1.py"), "--rounds", "50"], ROOT)
        result = json.loads(r["stdout"].strip().splitlines()[-1])
        r.update(loop_s=result["loop_s"], accuracy=result["final_accuracy"], backend="flower run_simulation")
        rows.append(("Flower `run_simulation`", [r]))
    best = {name: min(runs, key=lambda r: r["wall_s"]) for name, runs in rows}
    flower = best.get("Flower `run_simulation`")
    load = os.getloadavg()[0]
    print(f"W1, 50 rounds, seed 0; whole process, best of {args.repeats} for gossipsoup (load average {load:.1f})")
    print("| engine | backend | whole process s | CPU s | loop s | accuracy | Flower's whole process / this |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in best.items():
        ratio = f"{flower['wall_s'] / r['wall_s']:.1f}x" if flower else "-"
        print(
            f"| {name} | {r['backend']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['loop_s']:.2f} | "
            f"{r['accuracy']:.4f} | {ratio} |"
        )
    for name, runs in default:
        r = min(runs, key=lambda r: r["wall_s"])
        cells = f"{r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['loop_s']:.2f} | {r['accuracy']:.4f}"
        print(f"| {name} | {r['backend']} | {cells} | - |")
    for name, runs in [*rows, *default]:
        print(f"{name}: every run's wall s {[round(r['wall_s'], 2) for r in runs]}")


if __name__ == "__main__":
    main()
