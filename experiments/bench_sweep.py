"""An 8-job sweep of the default run on Hydra's basic launcher and on joblib: wall time of each, and the ratio.

    python experiments/bench_sweep.py            # 8 seeds of the default run (50 rounds), n_jobs = usable cores
    python experiments/bench_sweep.py --smoke    # 2 seeds, 2 rounds: checks that the script works

Each sweep is one ``python -m sim --multirun seed=0,...,7`` process, timed from start to exit, so
the figures include what a user waits for: Python and torch start-up, the config preflight, data
loading, and, for joblib, starting its worker processes. The basic launcher runs the jobs one after
another in one process (start-up paid once); joblib runs ``n_jobs`` at a time in worker processes,
whose torch threads joblib caps at cores // n_jobs (via OMP_NUM_THREADS, which sim/threads.py
reads). Both sweeps must give identical metrics (checked, wall_s aside). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim.threads import usable_cores  # noqa: E402


def sweep(out: Path, seeds: int, extra: list[str]) -> float:
    argv = [sys.executable, "-m", "sim", "--multirun", "seed=" + ",".join(map(str, range(seeds)))]
    argv += ["progress=false", f"hydra.sweep.dir={out}", *extra]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # let each launcher decide
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(argv)}):\n{proc.stderr[-3000:]}")
    return wall


def metrics(out: Path, seeds: int) -> list[pd.DataFrame]:
    return [pd.read_csv(out / str(j) / "metrics.csv").drop(columns=["wall_s"]) for j in range(seeds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2 jobs of 2 rounds")
    parser.add_argument("--jobs", type=int, default=None, help="joblib n_jobs (default: usable cores)")
    args = parser.parse_args()
    seeds, extra = (2, ["rounds=2"]) if args.smoke else (8, [])
    n_jobs = args.jobs or usable_cores()
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"basic": Path(tmp) / "basic", "joblib": Path(tmp) / "joblib"}
        basic = sweep(folders["basic"], seeds, extra)
        parallel = [*extra, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"]
        joblib = sweep(folders["joblib"], seeds, parallel)
        pairs = zip(metrics(folders["basic"], seeds), metrics(folders["joblib"], seeds), strict=True)
        same = all(a.equals(b) for a, b in pairs)
    load = os.getloadavg()[0]
    print(
        f"{seeds}-job sweep of the default run{' (smoke: 2 rounds)' if args.smoke else ''}, "
        f"{usable_cores()} usable cores, load average {load:.1f} at the end\n"
    )
    print("| launcher | jobs at once | wall s | speed-up (basic wall / this wall) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| basic | 1 | {basic:.1f} | 1.00 |")
    print(f"| joblib | {n_jobs} | {joblib:.1f} | {basic / joblib:.2f} |")
    print(f"\nidentical metrics (wall_s aside): {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
