"""Image models on image-sized data: sequential against vectorized, seconds per round and peak memory.

Two workloads, each run by both backends in its own process (so peak memory is that run's own):

* **resnet8**: CIFAR-shaped data (3x32x32 uint8, 10 classes, 50,000 training rows, generated: no
  download here), 100 clients with Dirichlet(0.5) labels, 10 per round, ResNet-8 with GroupNorm,
  1 local epoch of batch 32;
* **lenet**: 28x28 grayscale data (60,000 rows, generated), 1,000 clients with Dirichlet(0.5)
  labels, 100 per round, LeNet-5, 1 local epoch of batch 32.

The data are written once as an ``.npz`` of uint8 images in ``[N, H, W, C]`` layout and read through
``dataset=npz`` exactly as a user's file would be; rows are random class-dependent patterns (a mean
image per class plus noise), so the work per step is that of the real data set. Each process builds
the experiment, trains one warm-up round, then times ``--rounds`` rounds of the FL loop's training
call (the same clients for both backends: the run's own sampling) and reports seconds per round and
its peak resident memory (``VmHWM``). Every process uses ``--threads`` torch threads (default 1,
so that the ratio compares backends, not thread settings).

    python experiments/bench_byo.py [--rounds 2] [--threads 1] [--workloads resnet8 lenet]

``--smoke`` (tiny data, 8 clients; a test that the script runs) forks each run from this process after it imported
torch and the simulator once, instead of starting a fresh interpreter: its peak memory then includes what the parent
holds, and its figures are for nothing but the check that every row is made.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS = {
    "resnet8": {
        "shape": (32, 32, 3),
        "rows": 50_000,
        "overrides": ("num_clients=100", "participation.clients_per_round=10", "model=resnet", "model.depth=8"),
    },
    "lenet": {
        "shape": (28, 28, 1),
        "rows": 60_000,
        "overrides": ("num_clients=1000", "participation.clients_per_round=100", "model=lenet"),
    },
}
COMMON = ("partition=dirichlet", "partition.alpha=0.5", "train.epochs=1", "train.batch_size=32", "train.lr=0.05")


def write_images(path: Path, shape: tuple[int, int, int], rows: int, seed: int = 0, test_rows: int = 10_000) -> None:
    """uint8 images, one mean pattern per class plus noise, and a test set of ``test_rows``."""
    rng = np.random.default_rng(seed)
    means = rng.integers(40, 216, size=(10, *shape))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, size=n)
        x = np.empty((n, *shape), dtype=np.uint8)
        for lo in range(0, n, 5000):  # in slices: the float noise of all rows at once would take GBs
            hi = min(n, lo + 5000)
            x[lo:hi] = np.clip(means[y[lo:hi]] + rng.normal(0, 40, size=(hi - lo, *shape)), 0, 255)
        return x, y

    x, y = draw(rows)
    x_test, y_test = draw(test_rows)
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y_test)


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which belongs to the process's own address space.

    ``getrusage``'s ``ru_maxrss`` would be wrong here: Linux carries the parent's high-water mark
    into a child started by fork and exec, so every child would report at least the parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def one_run(workload: str, backend: str, data: str, rounds: int, threads: int, smoke: bool = False) -> dict:
    """Build the run, train a warm-up round, then time ``rounds`` rounds of training (this process)."""
    import torch
    from hydra import compose, initialize_config_module

    from sim.experiment import build_experiment
    from sim.threads import configure_threads

    overrides = [
        *COMMON,
        *WORKLOADS[workload]["overrides"],
        "dataset=npz",
        f"dataset.path={data}",
        "dataset.layout=nhwc",
        f"backend={backend}",
        f"backend.num_threads={threads}",
        "progress=false",
        *(("num_clients=8", "participation.clients_per_round=4") if smoke else ()),
    ]
    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    exp = build_experiment(cfg)
    configure_threads(threads, exp.layout.size, exp.train.batch_size)
    exp.backend.setup(exp.setup)
    assert exp.participation is not None
    start = exp.initial_params
    times = []
    for r in range(1, rounds + 2):
        ids = torch.as_tensor(exp.participation.sample(r), dtype=torch.long)
        t0 = time.perf_counter()
        batch = exp.backend.train(ids, start, r)
        if r > 1:  # round 1 warms up (allocations, vmap tracing)
            times.append(time.perf_counter() - t0)
        start = batch.params.mean(0)
    exp.backend.close()
    return {
        "workload": workload,
        "backend": backend,
        "chosen": getattr(getattr(exp.backend, "chosen", None), "name", backend),
        "params": exp.layout.size,
        "s_per_round": sum(times) / len(times),
        "peak_mb": peak_rss_mb(),
    }


def _forked_run(*args) -> dict:
    """``one_run(*args)`` in a child forked from this process (``--smoke``): no interpreter start and imports."""
    import importlib
    import multiprocessing

    # what every run imports on its way (the data's partitioner, vmap's torch._dynamo), once before the fork, as
    # tests/cli_server.py does; none of them starts a thread
    for module in ("sim.experiment", "flwr_datasets.partitioner", "datasets", "torch._dynamo"):
        importlib.import_module(module)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        return pool.apply(one_run, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--smoke", action="store_true", help="tiny data and clients (a test that the script runs)")
    ap.add_argument("--one", nargs=3, metavar=("WORKLOAD", "BACKEND", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(*args.one, args.rounds, args.threads, args.smoke)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads:
            spec = WORKLOADS[workload]
            data = Path(tmp) / f"{workload}.npz"
            write_images(
                data, spec["shape"], 400 if args.smoke else spec["rows"], test_rows=100 if args.smoke else 10_000
            )
            for backend in ("sequential", "vectorized"):
                if args.smoke:
                    rows.append(_forked_run(workload, backend, str(data), args.rounds, args.threads, True))
                    continue
                cmd = [sys.executable, __file__, "--one", workload, backend, str(data)]
                cmd += ["--rounds", str(args.rounds), "--threads", str(args.threads)] + (
                    ["--smoke"] if args.smoke else []
                )
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if out.returncode:
                    sys.exit(f"{workload}/{backend} failed:\n{out.stderr[-3000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"| workload | backend | params | s / round | vs sequential | peak MB | ({args.threads} thread(s))")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        base = next(b for b in rows if b["workload"] == r["workload"] and b["backend"] == "sequential")
        ratio = base["s_per_round"] / r["s_per_round"]
        print(
            f"| {r['workload']} | {r['backend']} | {r['params']:,} | {r['s_per_round']:.2f} | "
            f"{ratio:.2f}x | {r['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
