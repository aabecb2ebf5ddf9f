"""Conv nets: sequential against the vectorized backend's vmap variants (``backend.vmap``), one table.

One process, one invocation; every variant trains the same rounds of the same clients from the same data:

* ``sequential``: the reference, one client after another;
* ``vmap``: the vectorized backend's plain step (vmap's grouped convolution);
* ``im2col``: ``backend.vmap.conv=im2col`` (unfold + batched matmul);
* ``bf16``: ``backend.vmap.precision=bf16`` (bfloat16 autocast of the forward pass);
* ``compile``: ``backend.vmap.compile=true`` (``torch.compile`` of the vmapped step; not in the default list).

Columns: seconds per round over the rounds after the first, the ratio to sequential (above 1: faster), the
first round's seconds (allocation, kernel selection, compilation), the relative difference of round 1's
trained models from sequential's (``max |a - b| / max |b|``), and the test accuracy of the FedAvg model after
all rounds. The data are bench_byo's CIFAR-shaped (32x32x3) or 28x28 class-pattern images.

    OMP_NUM_THREADS=1 python experiments/bench_conv.py [--device cpu] [--workloads resnet8 lenet]
        [--num-clients 100] [--clients-per-round 100] [--rows 50000] [--rounds 2] [--variants ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402
from bench_byo import write_images  # noqa: E402

MODELS = {"resnet8": (("model=resnet", "model.depth=8"), (32, 32, 3)), "lenet": (("model=lenet",), (28, 28, 1))}
VARIANTS = {
    "sequential": ("backend=sequential",),
    "vmap": ("backend=vectorized", "backend.kernel=vmap"),
    "im2col": ("backend=vectorized", "backend.kernel=vmap", "backend.vmap.conv=im2col"),
    "bf16": ("backend=vectorized", "backend.kernel=vmap", "backend.vmap.precision=bf16"),
    "compile": ("backend=vectorized", "backend.kernel=vmap", "backend.vmap.compile=true"),
}


def one(workload: str, variant: str, data: Path, args: argparse.Namespace) -> dict:
    """Train ``args.rounds + 1`` FedAvg rounds of ``variant``; times, round 1's models and the final accuracy."""
    from sim.experiment import build_experiment
    from sim.training import evaluate

    cfg = workloads.compose_workload(
        (
            "progress=false",
            *MODELS[workload][0],
            "dataset=npz",
            f"dataset.path={data}",
            "dataset.layout=nhwc",
            f"num_clients={args.num_clients}",
            f"participation.clients_per_round={args.clients_per_round}",
            "partition=dirichlet",
            "partition.alpha=0.5",
            "train.epochs=1",
            "train.batch_size=32",
            "train.lr=0.05",
            *VARIANTS[variant],
            f"backend.device={args.device}",
        )
    )
    exp = build_experiment(cfg)
    exp.backend.setup(exp.setup)
    assert exp.participation is not None
    start = exp.initial_params
    times, first, round1 = [], 0.0, None
    for r in range(1, args.rounds + 2):
        ids = torch.as_tensor(exp.participation.sample(r))
        sync(args.device)
        t0 = time.perf_counter()
        batch = exp.backend.train(ids, start, r)
        sync(args.device)
        dt = time.perf_counter() - t0
        if r == 1:
            first, round1 = dt, batch.params.detach().cpu()
        else:
            times.append(dt)
        w = batch.num_samples.to(torch.float32)
        start = (batch.params.cpu() * (w / w.sum()).unsqueeze(1)).sum(0)  # FedAvg
    exp.backend.close()
    acc = evaluate(copy.deepcopy(exp.model), exp.layout, start, exp.data.x_test, exp.data.y_test)[0]
    return {"s": sum(times) / len(times), "first": first, "round1": round1, "acc": acc, "params": exp.layout.size}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workloads", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--variants", nargs="+", default=["sequential", "vmap", "im2col", "bf16"], choices=list(VARIANTS))
    ap.add_argument("--num-clients", type=int, default=100)
    ap.add_argument("--clients-per-round", type=int, default=100)
    ap.add_argument("--rows", type=int, default=50_000, help="training rows in all (split among the clients)")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds, after one warm-up round")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if "sequential" not in args.variants:
        args.variants.insert(0, "sequential")  # the reference of every ratio and difference
    lines = [
        f"bench_conv: torch {torch.__version__}, device {args.device}, {args.threads} thread(s), "
        f"{args.clients_per_round} of {args.num_clients} clients a round, {args.rows} rows, {args.rounds} rounds timed",
        "| workload | variant | params | s / round | vs sequential | first round s | round-1 models vs sequential "
        "| accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads:
            data = Path(tmp) / f"{workload}.npz"
            write_images(data, MODELS[workload][1], args.rows, test_rows=min(2000, args.rows // 5))
            ref = None
            for variant in args.variants:
                out = one(workload, variant, data, args)
                ref = ref or out
                diff = ((out["round1"] - ref["round1"]).abs().max() / ref["round1"].abs().max()).item()
                lines.append(
                    f"| {workload} | {variant} | {out['params']:,} | {out['s']:.3f} | {ref['s'] / out['s']:.2f}x | "
                    f"{out['first']:.2f} | {diff:.1e} | {out['acc']:.3f} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
