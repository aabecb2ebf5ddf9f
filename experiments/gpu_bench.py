"""Sequential against vectorized on one GPU, each checked against the CPU reference (run by gpu_bench.sh).

For every workload two kinds of run, all in this process through ``sim.run.run_experiment``:

* **check**: the workload shrunk (a few clients, one round) on ``backend=sequential`` with
  ``backend.device=cpu`` (the reference), then on sequential and vectorized with ``backend.device=DEVICE``:
  round 1's train loss and test loss must match the reference's to a relative tolerance (1e-3; 2e-2 for conv
  nets, whose cuDNN convolutions use TF32 by default). Only round 1: conv and recurrent nets drift apart over
  a run under any change of summation order (docs/backends.md), so later rounds are no check of correctness;
* **time**: the full workload on the device, seconds per round from metrics.csv's ``wall_s`` over the rounds
  after the first (which pays for allocation and kernel selection), sequential and vectorized side by side.

Workloads (``--tiny``: a few clients and rows, for a CPU dry run):

* ``w1_10k``: W1 (FedAvg, Synthetic(1,1), MLP 60-64-10) with 10,000 clients, 1,000 a round;
* ``resnet8``: ResNet-8 (GroupNorm) on CIFAR-shaped uint8 images (50,000 rows), 100 clients, all 100 a round;
* ``lenet``: LeNet-5 on 28x28 images (60,000 rows), 1,000 clients, 100 a round;
* ``charlstm``: the 2-layer CharLSTM (256 units) on generated Shakespeare-format LEAF text, 100 users, 20 a round;
* ``gossip_10k``: W2's synchronous gossip on 10,000 nodes (random 4-regular graph, MLP 60-32-10).

Exit code 1 when any check misses its tolerance (the table says which), 0 otherwise.

    python experiments/gpu_bench.py --device cuda [--rounds 3] [--workloads w1_10k resnet8 ...]
    python experiments/gpu_bench.py --device cpu --tiny          # the dry run: same code, seconds on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402
from bench_byo import write_images  # noqa: E402

CONV_TOL, TOL = 2e-2, 1e-3
FL_IMAGE = ("partition=dirichlet", "partition.alpha=0.5", "train.epochs=1", "train.batch_size=32", "train.lr=0.05")


def write_shakespeare(path: Path, users: int, rows: int, seed: int = 0) -> None:
    """LEAF Shakespeare-format JSON: ``users`` users of ``rows`` 80-character lines and their next characters.

    Lines are cut from one generated text of words over a small vocabulary, so that there is something
    to learn; the work per step is that of the real data set (80 characters in, one out).
    """
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(2, 8))) for _ in range(200)]
    text = " ".join(rng.choice(words, size=users * rows * 3))
    user_data, starts = {}, rng.integers(0, len(text) - 81, size=(users, rows))
    for u in range(users):
        lines = [text[s : s + 81] for s in starts[u].tolist()]
        user_data[f"u{u:05d}"] = {"x": [line[:80] for line in lines], "y": [line[80] for line in lines]}
    names = list(user_data)
    path.write_text(json.dumps({"users": names, "num_samples": [rows] * users, "user_data": user_data}))


def workload_overrides(name: str, data: Path, tiny: bool) -> tuple[list[str], list[str], float]:
    """(full overrides, shrunk overrides of the check, tolerance) of one workload; writes its data file."""
    if name == "w1_10k":
        base = [*workloads.W1, "num_clients=10000", "participation.clients_per_round=1000"]
        check = ["num_clients=200", "participation.clients_per_round=8"]
        if tiny:
            base += check
        return base, check, TOL
    if name == "gossip_10k":
        base = list(workloads.gossip_scale(40 if tiny else 10_000, 3))
        return base, ["num_clients=40"], TOL
    if name in ("resnet8", "lenet"):
        shape, rows = ((32, 32, 3), 50_000) if name == "resnet8" else ((28, 28, 1), 60_000)
        write_images(data, shape, 400 if tiny else rows, test_rows=100 if tiny else 10_000)
        model = ["model=resnet", "model.depth=8"] if name == "resnet8" else ["model=lenet"]
        clients = ["num_clients=100", "participation.clients_per_round=100"]
        if name == "lenet":
            clients = ["num_clients=1000", "participation.clients_per_round=100"]
        small = ["num_clients=8", "participation.clients_per_round=4"]
        base = [*FL_IMAGE, *model, "dataset=npz", f"dataset.path={data}", "dataset.layout=nhwc", "progress=false"]
        return [*base, *(small if tiny else clients)], small, CONV_TOL
    if name == "charlstm":
        users, rows = (6, 20) if tiny else (100, 200)
        write_shakespeare(data.with_suffix(".json"), users, rows)
        base = ["progress=false", "dataset=leaf", f"dataset.path={data.with_suffix('.json')}", "model=charlstm"]
        base += ["train.epochs=1", "train.batch_size=10", "train.lr=0.8", f"num_clients={users}"]
        base += ["participation.clients_per_round=" + ("3" if tiny else "20")]
        if tiny:
            base += ["model.hidden=16", "model.layers=1"]
        return base, ["participation.clients_per_round=3"], TOL
    raise ValueError(name)


WORKLOADS = ("w1_10k", "resnet8", "lenet", "charlstm", "gossip_10k")


def run(overrides: list[str], out: Path) -> tuple[dict, list[dict]]:
    """One run of the project's own entry point; (summary, metrics rows)."""
    import pandas as pd

    from sim.run import run_experiment

    cfg = workloads.compose_workload(tuple(overrides))
    summary = run_experiment(cfg, out)
    if summary.get("status") != "completed":
        raise SystemExit(f"gpu_bench: a run did not complete ({summary.get('error')}): {' '.join(overrides)}")
    return summary, pd.read_csv(out / "metrics.csv").to_dict("records")


def round_one(rows: list[dict]) -> tuple[float, float]:
    """(train loss, test loss) of round 1's row (gossip: over the evaluated nodes, as the run writes them).

    NaN when the run wrote no such row: a NaN never passes the check.
    """
    first = next((r for r in rows if int(r.get("round", 0)) == 1), {})
    return float(first.get("train_loss", float("nan"))), float(first.get("test_loss", float("nan")))


def relative(a: float, b: float) -> float:
    """``|a - b| / |b|``; NaN (a failed check) when either is NaN."""
    return abs(a - b) / max(abs(b), 1e-12)


def check(got: tuple[float, ...], ref: tuple[float, ...], tol: float) -> tuple[bool, float]:
    """(every value within ``tol`` relative of the reference's, the largest relative difference); NaN fails."""
    diffs = [relative(g, r) for g, r in zip(got, ref, strict=True)]
    ok = all(d <= tol for d in diffs)  # False for a NaN
    return ok, math.nan if any(math.isnan(d) for d in diffs) else max(diffs)


def per_round_s(rows: list[dict]) -> float:
    """Seconds per round after the first, from the cumulative ``wall_s`` of metrics.csv."""
    walls = [float(r["wall_s"]) for r in rows if "wall_s" in r and not math.isnan(float(r["wall_s"]))]
    if len(walls) < 2:
        return walls[0] if walls else float("nan")
    return (walls[-1] - walls[0]) / (len(walls) - 1)


def bench_workload(name: str, device: str, rounds: int, tiny: bool, tmp: Path) -> tuple[list[str], bool]:
    data = tmp / f"{name}.npz"
    full, small, tol = workload_overrides(name, data, tiny)
    dev = f"backend.device={device}"
    # check: the shrunk workload, round 1, against the CPU sequential reference
    shrunk = [*full, *small, "rounds=1", "eval_every=1"]
    _, ref_rows = run([*shrunk, "backend=sequential", "backend.device=cpu"], tmp / f"{name}_ref")
    ref = round_one(ref_rows)
    lines, ok_all = [], True
    times: dict[str, float] = {}
    for backend in ("sequential", "vectorized"):
        _, rows = run([*shrunk, f"backend={backend}", dev], tmp / f"{name}_{backend}_check")
        got = round_one(rows)
        ok, diff = check(got, ref, tol)
        ok_all &= ok
        t0 = time.perf_counter()
        summary, rows = run([*full, f"rounds={rounds}", f"eval_every={rounds}", f"backend={backend}", dev], tmp / name)
        times[backend] = per_round_s(rows)
        whole = time.perf_counter() - t0
        ratio = times["sequential"] / times[backend] if times[backend] > 0 else float("nan")
        lines.append(
            f"| {name} | {backend} | {summary.get('device', device)} | {times[backend]:.3f} | {ratio:.2f}x | "
            f"{whole:.1f} | {got[0]:.5f} | {ref[0]:.5f} | {diff:.1e} | {'ok' if ok else f'MISMATCH (tol {tol:g})'} |"
        )
        print(lines[-1], flush=True)
    return lines, ok_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="backend.device of the timed and checked runs (cpu: dry run)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each timed run (the first is warm-up)")
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--tiny", action="store_true", help="a few clients and rows (the CPU dry run)")
    args = ap.parse_args()
    import torch

    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    header = [
        f"gpu_bench: torch {torch.__version__}, device {args.device} ({card}), {args.rounds} rounds timed"
        + (", tiny" if args.tiny else ""),
        "| workload | backend | device | s / round | vs sequential | run s | round-1 train loss | CPU reference "
        "| rel. diff | check |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    print("\n".join(header), flush=True)
    table, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            lines, good = bench_workload(name, args.device, args.rounds, args.tiny, Path(tmp))
            table += lines
            ok &= good
    print("\n" + "\n".join(header[1:] + table))
    if not ok:
        sys.exit("gpu_bench: a run does not match the CPU reference (see the check column)")


if __name__ == "__main__":
    main()
