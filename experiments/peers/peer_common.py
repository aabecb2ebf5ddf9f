"""What every peer shares: the workloads' hyperparameters, the models, reading the data file, the result line.

Imported by the peer scripts inside their own environments, so it needs torch and numpy only (no gossipsoup):
the models here are layer-for-layer the ones gossipsoup builds (``sim/models/tabular.py`` MLP,
``sim/models/vision.py`` LeNet-5) and the inputs are what gossipsoup feeds them from the same ``.npz``
(uint8 images scaled by 1/255, channels first; float features as stored).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Workload:
    """One benchmark job: the same numbers are handed to every peer."""

    name: str
    model: str  # mlp | lenet
    hidden: tuple[int, ...]  # the MLP's hidden widths (unused by lenet)
    rounds: int
    clients_per_round: int
    epochs: int  # local epochs; each is a fresh shuffle cut into batches, the last one may be smaller
    batch_size: int
    lr: float  # local SGD, no momentum, no weight decay; the server averages weighted by client rows


#: W1 (experiments/workloads.py): FedAvg, Synthetic(1,1), 1000 clients, 50 a round, MLP 60-64-10, 1 epoch of
#: batch 10, lr 0.05, 50 rounds. digits: gossipsoup's default job (`python -m sim`): scikit-learn digits,
#: 20 clients Dirichlet(0.5), 10 a round, MLP 64-64-10, 2 epochs of batch 10, lr 0.1, 50 rounds.
#: cifar: CIFAR-shaped synthetic images (uint8 3x32x32, 10 classes), 50 clients Dirichlet(0.5), 10 a round,
#: LeNet-5, 1 epoch of batch 10, lr 0.1, 20 rounds.
WORKLOADS = {
    "w1": Workload("w1", "mlp", (64,), rounds=50, clients_per_round=50, epochs=1, batch_size=10, lr=0.05),
    "digits": Workload("digits", "mlp", (64,), rounds=50, clients_per_round=10, epochs=2, batch_size=10, lr=0.1),
    "cifar": Workload("cifar", "lenet", (), rounds=20, clients_per_round=10, epochs=1, batch_size=10, lr=0.1),
}


def to_inputs(x: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Stored rows -> model inputs as gossipsoup makes them: uint8 scaled by 1/255, then the natural shape."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float32)
    return t.reshape(len(x), *shape)


@dataclass
class Data:
    """The data file, read into tensors: one (x, y) pair per client (ids 0..N-1) and the test set."""

    clients: list[tuple[torch.Tensor, torch.Tensor]]
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int


def load(path: str) -> Data:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    shape = tuple(int(d) for d in arrays["input_shape"])
    x, y, owner = arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["client_train"]
    order = np.argsort(owner, kind="stable")
    x, y, owner = x[order], y[order], owner[order]
    bounds = np.searchsorted(owner, np.arange(int(owner.max()) + 2))
    xs = to_inputs(x, shape)
    ys = torch.from_numpy(y)
    clients = [(xs[lo:hi], ys[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    x_test, y_test = to_inputs(arrays["x_test"], shape), torch.from_numpy(arrays["y_test"].astype(np.int64))
    return Data(clients, x_test, y_test, shape, int(arrays["num_classes"]))


_LOADED: dict[str, Data] = {}


def cached_load(path: str) -> Data:
    """:func:`load`, once per process: each of Flower's Ray actors reads the file once.

    It lives here, in an importable module, because a cache in a peer script (``__main__``) would be pickled by
    value with the ClientApp that uses it, sending the loaded data (and every client's tensor views of it)
    along with each actor's copy of the app.
    """
    if path not in _LOADED:
        _LOADED[path] = load(path)
    return _LOADED[path]


class MLP(nn.Module):
    """gossipsoup's ``mlp``: flatten, Linear+ReLU per hidden width, Linear to the classes."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...]):
        super().__init__()
        width = int(np.prod(input_shape))
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class LeNet5(nn.Module):
    """gossipsoup's ``lenet`` on 32x32 inputs: conv5(6) pool conv5(16) pool fc120 fc84 fc(classes), ReLU."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        c, h, w = input_shape
        pad = 2 if min(h, w) < 32 else 0
        fh, fw = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * fh * fw, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(work: Workload, data: Data) -> nn.Module:
    if work.model == "mlp":
        return MLP(data.input_shape, data.num_classes, work.hidden)
    return LeNet5(data.input_shape, data.num_classes)


def local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, work: Workload, gen: torch.Generator) -> None:
    """The plain PyTorch client: ``epochs`` shuffled passes of minibatch SGD (the last batch may be smaller)."""
    opt = torch.optim.SGD(model.parameters(), lr=work.lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(work.epochs):
        for idx in torch.randperm(len(y), generator=gen).split(work.batch_size):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    right = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch))
    model.train()
    return right / len(y)


class LoopClock:
    """Loop time as every peer reports it: from just before round 1 to the end of the last round's evaluation."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None

    def begin(self) -> None:
        self.start = time.perf_counter()

    def stop(self) -> None:
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        assert self.start is not None and self.end is not None
        return self.end - self.start


RESULT_TAG = "PEER_RESULT "


def report(work: Workload, loop_s: float, accuracy_: float, **extra) -> None:
    """The one line the harness reads back from a peer's output."""
    print(RESULT_TAG + json.dumps({"workload": asdict(work), "loop_s": loop_s, "accuracy": accuracy_, **extra}))
