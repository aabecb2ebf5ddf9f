"""backend=auto against both of its choices: seconds per round of sequential, vectorized and auto, side by side.

Five FL workloads, each run by the three backends, every run in its own process (one warm-up round,
then ``--rounds`` timed rounds of the training call, the same clients for all: the run's own sampling):

* **mlp**: W1 (experiments/workloads.py): Synthetic(1,1), 1000 clients, 50 per round, MLP 60-64-10;
* **logreg**: W1 with logistic regression;
* **lenet** and **resnet8**: the image workloads of experiments/bench_byo.py (generated uint8 images
  read through ``dataset=npz``; LeNet-5 on 28x28 grey, 1000 clients, 100 per round; ResNet-8 with
  GroupNorm on 32x32 RGB, 100 clients, 10 per round; batch 32);
* **charlstm**: LEAF Shakespeare-shaped data (generated: 80-character lines of random text, 50 users of
  40 rows), 10 users per round, the zoo's 2-layer LSTM (hidden 256), batch 10.

auto must never be slower than the slower of the two (it runs one of them; the table shows which and
how its time compares with both). Threads: ``--threads`` (default 1) in every run.

    OMP_NUM_THREADS=1 nice python experiments/bench_auto.py [--rounds 2] [--workloads mlp lenet ...]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_byo  # noqa: E402
import workloads  # noqa: E402

ROOT = HERE.parent
BACKENDS = ("sequential", "vectorized", "auto")
W1_BODY = tuple(a for a in workloads.W1 if not a.startswith(("rounds=", "progress=")))


def image_overrides(name: str, data: Path) -> tuple[str, ...]:
    return (
        *bench_byo.COMMON,
        *bench_byo.WORKLOADS[name]["overrides"],
        "dataset=npz",
        f"dataset.path={data}",
        "dataset.layout=nhwc",
    )


def write_shakespeare(path: Path, users: int = 50, rows: int = 40, seed: int = 0) -> None:
    """A LEAF Shakespeare .json: each user's rows are 80 characters of random text and the next character."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz ,.;:'!?ABCDEFGHIJ"
    data = {}
    for u in range(users):
        text = "".join(rng.choice(letters) for _ in range(rows + 80))
        data[f"u{u:03d}"] = {"x": [text[i : i + 80] for i in range(rows)], "y": [text[i + 80] for i in range(rows)]}
    names = sorted(data)
    content = {"users": names, "num_samples": [rows] * users, "user_data": data}
    path.write_text(json.dumps(content))


def overrides_of(name: str, tmp: Path, smoke: bool) -> tuple[str, ...]:
    """The workload's overrides, writing its data file into ``tmp`` first where it has one."""
    if name in ("mlp", "logreg"):
        small = ("num_clients=40", "participation.clients_per_round=8") if smoke else ()
        logreg = (*(a for a in W1_BODY if not a.startswith("model")), "model=logreg")
        body = logreg if name == "logreg" else W1_BODY
        return (*body, *small)
    if name == "charlstm":
        path = tmp / "shakespeare.json"
        write_shakespeare(path, users=6 if smoke else 50, rows=8 if smoke else 40)
        small = ("model.hidden=8", "model.layers=1", "num_clients=6") if smoke else ("num_clients=50",)
        return (
            "dataset=leaf",
            f"dataset.path={path}",
            "dataset.task=shakespeare",
            "dataset.val_fraction=0",
            "model=charlstm",
            "participation.clients_per_round=4" if smoke else "participation.clients_per_round=10",
            "train.epochs=1",
            "train.batch_size=10",
            "train.lr=0.5",
            *small,
        )
    spec = bench_byo.WORKLOADS[name]
    path = tmp / f"{name}.npz"
    bench_byo.write_images(path, spec["shape"], 400 if smoke else spec["rows"], test_rows=100 if smoke else 10_000)
    small = ("num_clients=8", "participation.clients_per_round=4") if smoke else ()
    return (*image_overrides(name, path), *small)


def one_run(overrides: list[str], backend: str, rounds: int, threads: int) -> dict:
    """Build the run, train a warm-up round, then time ``rounds`` rounds of training (this process)."""
    import torch
    from hydra import compose, initialize_config_module

    from sim.experiment import build_experiment
    from sim.threads import configure_threads

    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[*overrides, f"backend={backend}", f"backend.num_threads={threads}", "progress=false"],
        )
    exp = build_experiment(cfg)
    configure_threads(threads, exp.layout.size, exp.train.batch_size)
    t0 = time.perf_counter()
    exp.backend.setup(exp.setup)
    setup_s = time.perf_counter() - t0
    assert exp.participation is not None
    start = exp.initial_params
    times = []
    for r in range(1, rounds + 2):
        ids = torch.as_tensor(exp.participation.sample(r), dtype=torch.long)
        t = time.perf_counter()
        batch = exp.backend.train(ids, start, r)
        if r > 1:  # round 1 warms up (allocations, vmap tracing)
            times.append(time.perf_counter() - t)
        start = batch.params.mean(0)
    exp.backend.close()
    chosen = getattr(exp.backend, "chosen", None)
    return {
        "backend": backend,
        "chosen": chosen.name if chosen is not None else backend,
        "reason": getattr(exp.backend, "reason", ""),
        "params": exp.layout.size,
        "setup_s": setup_s,
        "s_per_round": sum(times) / len(times),
        "peak_mb": bench_byo.peak_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    names = ["mlp", "logreg", "lenet", "resnet8", "charlstm"]
    ap.add_argument("--workloads", nargs="+", default=names, choices=names)
    ap.add_argument("--smoke", action="store_true", help="tiny data and clients (a test that the script runs)")
    ap.add_argument("--one", nargs=2, metavar=("BACKEND", "OVERRIDES_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(json.loads(args.one[1]), args.one[0], args.rounds, args.threads)))
        return
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            overrides = overrides_of(name, Path(tmp), args.smoke)
            runs = {}
            for backend in BACKENDS:
                cmd = [sys.executable, __file__, "--one", backend, json.dumps(list(overrides))]
                cmd += ["--rounds", str(args.rounds), "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if out.returncode:
                    sys.exit(f"{name}/{backend} failed:\n{out.stderr[-3000:]}")
                runs[backend] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{name} {backend}: {runs[backend]['s_per_round']:.3f} s/round", file=sys.stderr, flush=True)
            table.append((name, runs))
    print(
        f"| workload | params | sequential s/round | vectorized s/round | vectorized vs sequential | auto picks | "
        f"auto s/round | auto vs the slower | ({args.threads} thread(s), {args.rounds} timed rounds)"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    worst = 0.0
    for name, runs in table:
        seq, vec, auto = (runs[b]["s_per_round"] for b in BACKENDS)
        slower = max(seq, vec)
        worst = max(worst, auto / slower)
        print(
            f"| {name} | {runs['auto']['params']:,} | {seq:.3f} | {vec:.3f} | {seq / vec:.2f}x | "
            f"{runs['auto']['chosen']} | {auto:.3f} | {slower / auto:.2f}x |"
        )
    for name, runs in table:
        print(f"{name}: {runs['auto']['reason']}")
    print(f"auto's time over the slower choice's, worst row: {worst:.2f} (at most 1 plus timing noise)")


if __name__ == "__main__":
    main()
