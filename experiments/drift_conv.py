"""Where sequential and vectorized float paths differ for conv nets, and how far the two runs drift apart.

Three tables, one invocation (``OMP_NUM_THREADS=1``):

* **ops**: one op on one client's batch, ``f(x, w)`` (what the sequential backend computes) against row 0
  of ``vmap(f)`` over 4 identical clients (what the vectorized backend computes), forward and every input
  gradient, as ``max |a - b| / max |b|``. vmap turns a convolution with per-client weights into one grouped
  convolution and GroupNorm/Linear-with-bias into a decomposition: other kernels, other summation orders.
* **steps**: one client trained ``S`` local SGD steps from the same start by ``backend=sequential`` and by
  ``backend=vectorized`` (vmap kernel), relative parameter difference ``max |a - b| / max |a|``; beside it
  the same number for the reference against itself run with 2 torch threads (other kernels' blocking, other
  summation orders) and started from a model perturbed by one rounding (each weight times ``1 + 2^-24``,
  random sign).
* **accuracy**: FedAvg on the default run (scikit-learn's digits; the models that fit 8x8 images), test
  accuracy after ``--rounds`` rounds for each seed: sequential, vectorized, sequential with 2 torch threads, and
  vectorized with ``backend.vmap.precision=bf16``.

    OMP_NUM_THREADS=1 python experiments/drift_conv.py [--models lenet resnet8 ...] [--steps 1 10 100]
        [--seeds 0 1 2] [--rounds 5] [--tables ops steps accuracy] [--smoke]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vjp, vmap

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.bench_byo import write_images  # noqa: E402

MODELS = {
    "mlp": ("model=mlp",),
    "lenet": ("model=lenet",),
    "cnn": ("model=cnn",),  # two 3x3 convolutions and a max-pool
    "resnet8": ("model=resnet", "model.depth=8"),
    "gn_pool": ("model=custom", "model.target=experiments.drift_conv.ConvGroupNormPool"),
    "lenet_smooth": ("model=custom", "model.target=experiments.drift_conv.SmoothLeNet"),  # tanh, average pooling
}


#: the models that fit 8x8 digits (the accuracy table's data set); LeNet-5 needs 12x12 at least
DIGITS_MODELS = ("mlp", "cnn", "gn_pool")


class ConvGroupNormPool(nn.Module):
    """conv3x3(16) GroupNorm(4) ReLU max-pool, conv3x3(32) GroupNorm(4) ReLU max-pool, linear: the issue's shape."""

    def __init__(self, input_shape, num_classes: int):
        super().__init__()
        c, h, w = input_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.GroupNorm(4, 32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(32 * (h // 4) * (w // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


class SmoothLeNet(nn.Module):
    """LeNet-5 with tanh and average pooling (LeCun's original): no kink, no argmax for a rounding to flip."""

    def __init__(self, input_shape, num_classes: int):
        super().__init__()
        c, h, w = input_shape
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        self.net = nn.Sequential(
            nn.Conv2d(c, 6, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * fh * fw, 120),
            nn.Tanh(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---- ops ----------------------------------------------------------------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def op_difference(f, args: tuple[torch.Tensor, ...], clients: int = 4) -> tuple[float, list[float]]:
    """(forward, [gradient of each arg]) relative differences of ``f`` against row 0 of ``vmap(f)``."""
    out, pull = vjp(f, *args)
    batched = [a.unsqueeze(0).expand(clients, *a.shape).clone() for a in args]
    out_v, pull_v = vjp(vmap(f), *batched)
    g = torch.randn_like(out)
    grads, grads_v = pull(g), pull_v(g.unsqueeze(0).expand(clients, *g.shape).clone())
    return _rel(out_v[0], out), [_rel(gv[0], gs) for gs, gv in zip(grads, grads_v, strict=True)]


#: (in, out, kernel, side, stride, padding): LeNet-5's and ResNet-8's convolutions
CONV_CASES = [
    (1, 6, 5, 28, 1, 2),
    (3, 6, 5, 32, 1, 0),
    (6, 16, 5, 14, 1, 0),
    (3, 16, 3, 32, 1, 1),
    (16, 16, 3, 32, 1, 1),
]
CONV_CASES += [(16, 32, 3, 32, 2, 1)]


def ops_table() -> list[str]:
    torch.manual_seed(0)
    rows = ["| op (batch 32) | forward | grad input | grad weight | grad bias |", "| --- | ---: | ---: | ---: | ---: |"]
    cases = []
    for cin, cout, k, h, stride, pad in CONV_CASES:
        x, w, b = torch.randn(32, cin, h, h), torch.randn(cout, cin, k, k) * 0.1, torch.randn(cout)
        cases.append(
            (f"conv2d {cin}->{cout} k{k} s{stride} ({h}x{h})", lambda x, w, b, s=stride, p=pad: F.conv2d(x, w, b, s, p))
        )
        cases[-1] += ((x, w, b),)
    x16 = torch.randn(32, 16, 32, 32)
    cases += [
        (
            "group_norm 16 ch, 1 group",
            lambda x, w, b: F.group_norm(x, 1, w, b),
            (x16, torch.randn(16), torch.randn(16)),
        ),
        (
            "group_norm 16 ch, 4 groups",
            lambda x, w, b: F.group_norm(x, 4, w, b),
            (x16, torch.randn(16), torch.randn(16)),
        ),
        ("linear 400->120", F.linear, (torch.randn(32, 400), torch.randn(120, 400) * 0.05, torch.randn(120))),
        ("max_pool2d 2 (integer ties)", lambda x: F.max_pool2d(x, 2), (x16.round(),)),
        ("relu", F.relu, (x16,)),
    ]
    for name, f, args in cases:
        fwd, grads = op_difference(f, args)
        cells = [f"{g:.1e}" for g in grads] + ["-"] * (3 - len(grads))
        rows.append(f"| {name} | {fwd:.1e} | " + " | ".join(cells) + " |")
    return rows


# ---- steps --------------------------------------------------------------------------------------------
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="configs", version_base=None):
        return hydra_compose(config_name="config", overrides=overrides)


def perturbed(params: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """``params`` with each weight moved by one rounding: times ``1 + 2^-24`` with a random sign."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, params.shape, generator=g).to(params.dtype) * 2 - 1
    return params * (1 + sign * 2.0**-24)


def one_client_params(
    model: str, data: Path, steps: int, backend: str, start_shift: bool = False, threads: int = 1
) -> torch.Tensor:
    """The model after ``steps`` local steps of client 0 (the only client), from the run's initial model."""
    from sim.experiment import build_experiment

    cfg = compose(
        [
            *MODELS[model],
            "dataset=npz",
            f"dataset.path={data}",
            "dataset.layout=nhwc",
            "num_clients=1",
            "participation.clients_per_round=1",
            "partition=iid",
            f"train.local_steps={steps}",
            "train.batch_size=32",
            "train.lr=0.05",
            f"backend={backend}",
            *(("backend.kernel=vmap",) if backend == "vectorized" else ()),
            "progress=false",
        ]
    )
    exp = build_experiment(cfg)
    exp.backend.setup(exp.setup)
    start = perturbed(exp.initial_params) if start_shift else exp.initial_params
    torch.set_num_threads(threads)
    try:
        out = exp.backend.train(torch.tensor([0]), start, 1).params[0].cpu()
    finally:
        torch.set_num_threads(1)
    exp.backend.close()
    return out


def steps_table(models: list[str], steps: list[int], data: Path) -> list[str]:
    rows = [
        "| model | local steps | sequential vs vectorized | sequential: 1 vs 2 torch threads "
        "| sequential vs sequential from a 1-ulp start |"
    ]
    rows.append("| --- | ---: | ---: | ---: | ---: |")
    for model in models:
        for s in steps:
            ref = one_client_params(model, data, s, "sequential")
            vec = one_client_params(model, data, s, "vectorized")
            two = one_client_params(model, data, s, "sequential", threads=2)
            ulp = one_client_params(model, data, s, "sequential", start_shift=True)
            rows.append(f"| {model} | {s} | {_rel(vec, ref):.1e} | {_rel(two, ref):.1e} | {_rel(ulp, ref):.1e} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


# ---- accuracy -----------------------------------------------------------------------------------------
def fl_accuracy(model: str, seed: int, rounds: int, backend: str, threads: int, smoke: bool) -> float:
    """Test accuracy of the global model after ``rounds`` rounds of FedAvg on the default run.

    The default run is scikit-learn's 8x8 digits, 20 clients with Dirichlet(0.5) labels, 10 a round, 2 local
    epochs of batch 10, lr 0.1: it learns within a few rounds, so accuracies are far from chance.
    """
    from sim.experiment import build_experiment
    from sim.training import evaluate

    cfg = compose(
        [
            *MODELS[model],
            f"seed={seed}",
            f"backend={backend.split('+')[0]}",
            *(("backend.kernel=vmap",) if backend.startswith("vectorized") else ()),
            *(("backend.vmap.precision=bf16",) if backend == "vectorized+bf16" else ()),
            *(("num_clients=4", "participation.clients_per_round=2") if smoke else ()),
            "progress=false",
        ]
    )
    exp = build_experiment(cfg)
    exp.backend.setup(exp.setup)
    assert exp.participation is not None
    start = exp.initial_params
    torch.set_num_threads(threads)
    try:
        for r in range(1, rounds + 1):
            batch = exp.backend.train(torch.as_tensor(exp.participation.sample(r)), start, r)
            w = batch.num_samples.to(torch.float32)
            start = (batch.params.cpu() * (w / w.sum()).unsqueeze(1)).sum(0)  # FedAvg
    finally:
        torch.set_num_threads(1)
    exp.backend.close()
    x, y = exp.data.x_test, exp.data.y_test
    return evaluate(copy.deepcopy(exp.model), exp.layout, start, x, y)[0]


def accuracy_table(models: list[str], seeds: list[int], rounds: int, smoke: bool) -> list[str]:
    rows = [
        f"| model ({rounds} rounds FedAvg) | seed | sequential | vectorized | sequential, 2 threads "
        "| vectorized, bf16 autocast |"
    ]
    rows.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for model in models:
        for seed in seeds:
            accs = [
                fl_accuracy(model, seed, rounds, b, threads, smoke)
                for b, threads in (("sequential", 1), ("vectorized", 1), ("sequential", 2), ("vectorized+bf16", 1))
            ]
            rows.append(f"| {model} | {seed} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", nargs="+", type=int, default=[1, 10, 100])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tables", nargs="+", default=["ops", "steps", "accuracy"], choices=["ops", "steps", "accuracy"])
    ap.add_argument("--smoke", action="store_true", help="tiny data (a test that the script runs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cifar_shaped.npz"
        write_images(data, (32, 32, 3), 200 if args.smoke else 4000, test_rows=100 if args.smoke else 1000)
        if "ops" in args.tables:
            out += ops_table() + [""]
        if "steps" in args.tables:
            out += steps_table(args.models, args.steps, data) + [""]
        if "accuracy" in args.tables:
            out += accuracy_table([m for m in args.models if m in DIGITS_MODELS], args.seeds, args.rounds, args.smoke)
    print("\n".join(out))


if __name__ == "__main__":
    main()
