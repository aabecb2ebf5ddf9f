"""The one data file per workload that every peer reads: training rows with their client ids, and a test set.

Format (a plain ``numpy.savez``, also gossipsoup's ``dataset=npz`` format): ``x_train`` (float features or
uint8 images ``[N, C, H, W]``), ``y_train``, ``client_train`` (client id 0..K-1 of each row: the partition),
``x_test``, ``y_test``, and two keys gossipsoup ignores, ``input_shape`` and ``num_classes``.

``w1`` and ``digits`` are written from gossipsoup's own data builder (the rows and partition a
``python -m sim`` run of that workload trains on, so needs this project installed); ``cifar`` is generated
here from a seed with numpy only: CIFAR-shaped uint8 images whose class is a smooth random pattern with a colour cast,
shifted by up to 4 pixels and covered in noise, partitioned over clients by Dirichlet(alpha) label skew.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: part of every data file's name: bump it when a generator changes, so no stale file is reused
VERSION = 3


def dirichlet_partition(labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Client id of each row: each class's rows are split over clients in Dirichlet(alpha) proportions.

    Drawn again until every client has at least 2 rows (gossipsoup's ``min_partition_size`` default).
    """
    while True:
        owner = np.empty(len(labels), dtype=np.int64)
        for c in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha)))[:-1] * len(rows)).astype(np.int64)
            for k, part in enumerate(np.split(rows, cuts)):
                owner[part] = k
        if np.bincount(owner, minlength=clients).min() >= 2:
            return owner


def cifar_like(
    train: int,
    test: int,
    clients: int,
    seed: int,
    alpha: float = 0.5,
    classes: int = 10,
    signal: float = 60.0,
    noise: float = 40.0,
) -> dict[str, np.ndarray]:
    """CIFAR-shaped synthetic images (uint8 [N, 3, 32, 32]) with a Dirichlet(alpha) client partition."""
    rng = np.random.default_rng(seed)
    # one smooth pattern per class: 3x8x8 noise blown up to 32x32
    protos = rng.normal(0.0, 1.0, size=(classes, 3, 8, 8)).astype(np.float32).repeat(4, axis=2).repeat(4, axis=3)
    protos += rng.normal(0.0, 0.5, size=(classes, 3, 1, 1)).astype(np.float32)  # and a colour cast per class

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, size=n)
        shift = rng.integers(-4, 5, size=(n, 2))
        # a shifted copy of each row's class pattern: gather with wrapped (row, column) indices
        rows = (np.arange(32)[None, :] - shift[:, :1]) % 32
        cols = (np.arange(32)[None, :] - shift[:, 1:]) % 32
        x = protos[
            y[:, None, None, None], np.arange(3)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]
        ]
        x = 128.0 + signal * x + noise * rng.standard_normal(size=x.shape, dtype=np.float32)
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = draw(train)
    x_test, y_test = draw(test)
    owner = dirichlet_partition(y_train, clients, alpha, rng)
    return {
        "x_train": x_train,
        "y_train": y_train,
        "client_train": owner,
        "x_test": x_test,
        "y_test": y_test,
        "input_shape": np.array([3, 32, 32]),
        "num_classes": np.array(classes),
    }


def from_gossipsoup(overrides: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The rows, partition and test set gossipsoup builds for these overrides (its validation split left out)."""
    for folder in (str(ROOT), str(HERE.parent)):  # the project (when not pip-installed); experiments/: `workloads`
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import workloads

    from sim.data.federated import load_federated_data

    cfg = workloads.compose_workload(overrides)
    data = load_federated_data(cfg.dataset, cfg.partition, int(cfg.num_clients), int(cfg.seed))
    sizes = data.client_sizes.numpy()
    return {
        "x_train": data.x.numpy(),
        "y_train": data.y.numpy(),
        "client_train": np.repeat(np.arange(len(sizes)), sizes),
        "x_test": data.x_test.numpy(),
        "y_test": data.y_test.numpy(),
        "input_shape": np.array(data.input_shape),
        "num_classes": np.array(data.num_classes),
    }


def w1_arrays(seed: int) -> dict[str, np.ndarray]:
    sys.path.insert(0, str(HERE.parent))
    import workloads

    return from_gossipsoup((*workloads.W1, f"seed={seed}"))


def digits_arrays(seed: int) -> dict[str, np.ndarray]:
    return from_gossipsoup(("progress=false", f"seed={seed}"))


def cifar_arrays(seed: int) -> dict[str, np.ndarray]:
    return cifar_like(train=5_000, test=1_000, clients=50, seed=seed)


BUILDERS = {"w1": w1_arrays, "digits": digits_arrays, "cifar": cifar_arrays}


def write(workload: str, seed: int, folder: Path) -> Path:
    """The workload's data file for this seed (written once; an existing file of the same name is reused)."""
    path = folder / f"{workload}_seed{seed}_v{VERSION}.npz"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, allow_pickle=False, **BUILDERS[workload](seed))
        tmp.replace(path)
    return path
