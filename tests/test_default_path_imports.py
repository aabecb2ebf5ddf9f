"""The default run's data without scikit-learn, Hugging Face datasets or flwr-datasets, and the same numbers.

``python -m sim`` (digits, Dirichlet labels) imported those three libraries (about a second of a two-second start)
for a CSV file and a label split. A fresh interpreter running the default command must not import them now; the
digits arrays must equal scikit-learn's, and partition=dirichlet's NumPy transcription (sim/data/dirichlet.py) must
give exactly flwr-datasets' partitions.

Each case runs flwr-datasets' ``DirichletPartitioner`` the way gossipsoup ran it before (``run_flwr_partitioner``) and
the transcription on the same labels and seed: every client's rows must be equal, in order. Awkward inputs included:
labels that are not 0..C-1, one class far larger than the rest, self-balancing, draws that are retried because a client
was left too small, a min size that is never met, more clients than rows.
"""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flwr_datasets")

from flwr_datasets.partitioner import DirichletPartitioner  # noqa: E402

from sim.data.dirichlet import dirichlet_partition  # noqa: E402
from sim.data.flwr_run import run_flwr_partitioner  # noqa: E402


def flwr_rows(labels, clients, alpha, min_size, balancing, seed):
    partitioner = DirichletPartitioner(
        num_partitions=clients,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_size,
        self_balancing=balancing,
        seed=seed,
    )
    return run_flwr_partitioner(partitioner, labels, clients)


def labels_of(kind: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "uniform":
        return rng.integers(0, 10, size=600)
    if kind == "sparse_ids":  # labels 3, 17, 40 (sorted numerically, not as text)
        return rng.choice(np.array([40, 3, 17]), size=300)
    if kind == "one_big_class":
        return np.concatenate([np.zeros(500, dtype=np.int64), rng.integers(1, 5, size=40)])
    if kind == "one_row_class":  # class 9 has a single row, class 0 most of them
        return rng.permutation(np.concatenate([np.zeros(60, dtype=np.int64), rng.integers(1, 9, size=20), [9]]))
    if kind == "few_rows":  # 12 rows for 10 partitions: most clients get zero or one row
        return rng.integers(0, 3, size=12)
    raise AssertionError(kind)


CASES = [
    ("uniform", 20, 0.5, 2, False, 0),
    ("uniform", 20, 0.5, 2, True, 1),
    ("uniform", 7, 5.0, 10, False, 2),
    ("uniform", 50, 0.1, 1, True, 3),  # many small clients, strong skew
    ("sparse_ids", 6, 0.3, 5, False, 4),
    ("one_big_class", 8, 0.5, 3, True, 5),
    ("one_row_class", 5, 0.5, 0, True, 6),
    ("one_row_class", 9, 1.0, 0, False, 7),
    ("few_rows", 10, 0.5, 0, True, 8),  # nearly as many partitions as rows, empty clients allowed
    ("few_rows", 10, 0.5, 0, False, 9),
    ("uniform", 30, 0.5, 8, False, 0),  # retried draws (some client below 8 rows at first)
]


@pytest.mark.parametrize("kind,clients,alpha,min_size,balancing,seed", CASES)
def test_the_transcription_gives_flwr_datasets_rows(kind, clients, alpha, min_size, balancing, seed):
    labels = labels_of(kind)
    expected = flwr_rows(labels, clients, alpha, min_size, balancing, seed)
    got = dirichlet_partition(labels, clients, alpha, min_size, balancing, seed)
    assert len(got) == len(expected) == clients
    for k, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.dtype == np.int64 and a.tolist() == b.tolist(), k


def test_a_case_that_needs_retries_is_among_the_cases(monkeypatch):
    # the retry path is exercised: the last case's first three draws leave a client below 8 rows, so with at most
    # two retries it fails, and with three it gives flwr-datasets' rows (above); the limit is a count of retries
    import sim.data.dirichlet

    kind, clients, alpha, min_size, balancing, seed = CASES[-1]
    monkeypatch.setattr(sim.data.dirichlet, "MAX_RETRIES", 2)
    with pytest.raises(ValueError, match="attempts"):
        dirichlet_partition(labels_of(kind), clients, alpha, min_size, balancing, seed)
    monkeypatch.setattr(sim.data.dirichlet, "MAX_RETRIES", 3)
    dirichlet_partition(labels_of(kind), clients, alpha, min_size, balancing, seed)


@pytest.mark.parametrize(
    "labels,clients,min_size,says",
    [
        (np.arange(50) % 10, 40, 10, "The max number of attempts (10) was reached"),
        (np.arange(5) % 2, 8, 0, "The number of partitions needs to be smaller than the number of samples"),
    ],
)
def test_failures_raise_flwr_datasets_message(labels, clients, min_size, says):
    with pytest.raises(ValueError) as theirs:
        flwr_rows(labels, clients, 0.5, min_size, False, 0)
    with pytest.raises(ValueError) as ours:
        dirichlet_partition(labels, clients, 0.5, min_size, False, 0)
    assert says in str(ours.value) and str(ours.value) == " ".join(str(theirs.value).split())


def test_digits_arrays_equal_scikit_learns():
    from sklearn.datasets import load_digits

    from sim.data.digits_csv import digits_arrays

    data, target = digits_arrays()
    bunch = load_digits()
    assert data.dtype == bunch.data.dtype and target.dtype == bunch.target.dtype
    assert np.array_equal(data, bunch.data) and np.array_equal(target, bunch.target)


def test_digits_fall_back_to_scikit_learn_where_the_file_is_elsewhere(monkeypatch):
    import importlib.util

    from sklearn.datasets import load_digits

    from sim.data.digits_csv import digits_arrays

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    data, target = digits_arrays()
    assert np.array_equal(data, load_digits().data) and np.array_equal(target, load_digits().target)


#: a one-round default run in a fresh interpreter (what a user starts), then the heavy libraries it imported
_DEFAULT_RUN = """
import runpy, sys
sys.argv = ["sim", "rounds=1", "progress=false", "hydra.run.dir=run"]
try:
    runpy.run_module("sim", run_name="__main__")
finally:
    print("IMPORTED", sorted(m for m in ("sklearn", "datasets", "flwr_datasets", "pyarrow") if m in sys.modules))
"""


def test_the_default_run_imports_no_data_library(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _DEFAULT_RUN], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORTED []" in proc.stdout, proc.stdout[-2000:]
    assert (tmp_path / "run" / "metrics.csv").is_file() and (tmp_path / "run" / "accuracy.png").is_file()
