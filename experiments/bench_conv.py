"""Conv nets: sequential against the vectorized backend's vmap variants (``backend.vmap``), one table.

One process, one invocation; every variant trains the same rounds of the same clients from the same data, the
variants taking turns round by round (a change of load on a shared machine then hits all of them alike):

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


class Run:
    """One variant's experiment, trained round by round (variants alternate rounds, so load changes hit all)."""

    def __init__(self, workload: str, variant: str, data: Path, args: argparse.Namespace):
        from sim.experiment import build_experiment

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
        self.device = args.device
        self.exp = build_experiment(cfg)
        self.exp.backend.setup(self.exp.setup)
        self.start = self.exp.initial_params
        self.times: list[float] = []
        self.first = 0.0
        self.round1 = torch.zeros(0)

    def round(self, r: int) -> None:
        """Train round ``r`` (its clients drawn by the run's own participation) and average (FedAvg)."""
        assert self.exp.participation is not None
        ids = torch.as_tensor(self.exp.participation.sample(r))
        sync(self.device)
        t0 = time.perf_counter()
        batch = self.exp.backend.train(ids, self.start, r)
        sync(self.device)
        dt = time.perf_counter() - t0
        if r == 1:
            self.first, self.round1 = dt, batch.params.detach().cpu()
        else:
            self.times.append(dt)
        w = batch.num_samples.to(torch.float32)
        self.start = (batch.params.cpu() * (w / w.sum()).unsqueeze(1)).sum(0)

    def result(self) -> dict:
        from sim.training import evaluate

        self.exp.backend.close()
        exp = self.exp
        acc = evaluate(copy.deepcopy(exp.model), exp.layout, self.start, exp.data.x_test, exp.data.y_test)[0]
        s = sum(self.times) / len(self.times)
        return {"s": s, "first": self.first, "round1": self.round1, "acc": acc, "params": exp.layout.size}


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
            runs = {variant: Run(workload, variant, data, args) for variant in args.variants}
            for r in range(1, args.rounds + 2):
                for run in runs.values():
                    run.round(r)
            results = {variant: run.result() for variant, run in runs.items()}
            ref = results["sequential"]
            for variant, out in results.items():
                diff = ((out["round1"] - ref["round1"]).abs().max() / ref["round1"].abs().max()).item()
                lines.append(
                    f"| {workload} | {variant} | {out['params']:,} | {out['s']:.3f} | {ref['s'] / out['s']:.2f}x | "
                    f"{out['first']:.2f} | {diff:.1e} | {out['acc']:.3f} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
