"""Bad input: one clear paragraph, exit code 2, no traceback, no result files (one test per case)."""

import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return f"dataset.path={path}"


def _arrays(n=40, d=5):
    rng = np.random.default_rng(0)
    return {"x_train": rng.normal(size=(n, d)), "y_train": rng.integers(0, 3, n),
            "x_test": rng.normal(size=(10, d)), "y_test": rng.integers(0, 3, 10)}


CASES = {
    "unknown strategy": (["strategy=fedavx"], "strategy"),
    "unknown dataset": (["dataset=mnist"], "dataset"),
    "unknown model": (["model=resnet"], "model"),
    "unknown partition": (["partition=zipf"], "partition"),
    "rounds zero": (["rounds=0"], "rounds"),
    "rounds negative": (["rounds=-3"], "rounds"),
    "num_clients zero": (["num_clients=0"], "num_clients"),
    "lr zero": (["train.lr=0"], "train.lr"),
    "lr negative": (["train.lr=-0.1"], "train.lr"),
    "batch size zero": (["train.batch_size=0"], "train.batch_size"),
    "clients per round above num_clients": (["participation.clients_per_round=50"], "participation.clients_per_round"),
    "dirichlet alpha zero": (["partition.alpha=0"], "partition.alpha"),
    "more clients than training samples": (["num_clients=5000", "participation.clients_per_round=5"], "num_clients"),
    "unknown config key": (["learning_rate=0.1"], "learning_rate"),
    "a sweep with one bad value": (["--multirun", "strategy=fedavg,fedavx"], "strategy"),
    "participation probability above 1": (["participation=bernoulli", "participation.probability=constant",
                                           "participation.p=1.5"], "participation.p"),
    "participation probability zero": (["participation=markov", "participation.probability=constant",
                                        "participation.p=0"], "participation.p"),
    "participation floor zero": (["participation=bernoulli", "participation.floor=0"], "participation.floor"),
    "a constant pattern without p": (["participation=cyclic", "participation.probability=constant"],
                                     "participation.p"),
    "fedau cutoff below 1": (["strategy=fedau", "strategy.cutoff=0"], "strategy.cutoff"),
    "cyclic period below 1": (["participation=cyclic", "participation.period=0"], "participation.period"),
    "unknown participation": (["participation=poisson"], "participation"),
    "degree at least num_clients": (["mode=gossip", "topology=random_regular", "topology.degree=20"],
                                    "topology.degree"),
    "drop probability above 1": (["mode=gossip", "topology=ring", "gossip.drop_prob=1.5"], "gossip.drop_prob"),
    "negative delay": (["mode=gossip", "topology=ring", "gossip.schedule=async", "gossip.delay_value=-1"],
                       "gossip.delay_value"),
    "unknown topology": (["mode=gossip", "topology=hypercube"], "topology"),
    "federated mode on a ring": (["topology=ring"], "topology.name"),
    "greedy soup without a validation split": (["strategy=greedy_soup", "dataset.val_fraction=0"],
                                               "dataset.val_fraction"),
    "interpolation alpha above 1": (["strategy=interpolate", "strategy.alpha=1.5"], "strategy.alpha"),
    "init checkpoint missing": (["model.init_checkpoint=/nonexistent/model.safetensors"], "model.init_checkpoint"),
    "unknown backend": (["backend=gpu"], "backend"),
    "unknown vectorized kernel": (["backend.kernel=fast"], "backend.kernel"),
    "dense kernel for a cnn": (["model=cnn", "backend=vectorized", "backend.kernel=dense"], "backend.kernel"),
    "eval_nodes zero": (["mode=gossip", "topology=ring", "gossip.eval_nodes=0"], "gossip.eval_nodes"),
    "batch_exchanges not a boolean": (["mode=gossip", "topology=ring", "gossip.schedule=async",
                                       "gossip.batch_exchanges=maybe"], "gossip.batch_exchanges"),
    "npz path missing": (["dataset=npz", "dataset.path=/nonexistent/data.npz", "partition=iid"], "dataset.path"),
}


def _check_clean_failure(proc, field, tmp_path):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: ") and field in proc.stderr
    written = [p.name for p in tmp_path.rglob("*") if p.name in ("metrics.csv", "summary.json", "accuracy.png")]
    assert written == []


def _run(tmp_path, args):
    return subprocess.run([sys.executable, "-m", "sim", *sorted(args, key=lambda a: not a.startswith("-")), "progress=false"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_value(case, tmp_path):
    args, field = CASES[case]
    _check_clean_failure(_run(tmp_path, args), field, tmp_path)


@pytest.mark.parametrize("case", ["keys missing", "mismatched lengths"])
def test_bad_npz_file(case, tmp_path):
    arrays = _arrays()
    if case == "keys missing":
        del arrays["y_train"]
        expect = "y_train"
    else:
        arrays["y_train"] = arrays["y_train"][:-5]
        expect = "x_train"
    args = ["dataset=npz", _npz(tmp_path, **arrays), "partition=iid", "num_clients=4",
            "participation.clients_per_round=2", "model=logreg"]
    proc = _run(tmp_path, args)
    _check_clean_failure(proc, "dataset", tmp_path)
    assert expect in proc.stderr


@pytest.mark.parametrize("case", ["disconnected", "node count"])
def test_bad_graph_file(case, tmp_path):
    edges = tmp_path / "graph.txt"
    if case == "disconnected":  # two triangles: 6 nodes, 2 components
        edges.write_text("0 1\n1 2\n2 0\n3 4\n4 5\n5 3\n")
    else:  # a ring of 5 nodes for 6 clients
        edges.write_text("0 1\n1 2\n2 3\n3 4\n4 0\n")
    args = ["mode=gossip", "topology=file", f"topology.path={edges}", "num_clients=6", "model=logreg"]
    proc = _run(tmp_path, args)
    _check_clean_failure(proc, "topology", tmp_path)
    assert ("component" in proc.stderr) if case == "disconnected" else ("5" in proc.stderr and "6" in proc.stderr)
    if case == "disconnected":
        ok = _run(tmp_path, args + ["topology.allow_disconnected=true", "rounds=1", "hydra.run.dir=run"])
        assert ok.returncode == 0, ok.stderr


def test_good_npz_file_runs(tmp_path):
    args = ["dataset=npz", _npz(tmp_path, **_arrays()), "partition=iid", "num_clients=4",
            "participation.clients_per_round=2", "model=logreg", "rounds=2", "hydra.run.dir=run"]
    proc = _run(tmp_path, args)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "summary.json").exists()


def test_nan_from_a_client_exits_3_without_traceback(tmp_path):
    proc = _run(tmp_path, ["num_clients=6", "participation.clients_per_round=3", "rounds=4", "strategy=fedadam",
                           "strategy.server_lr=1e30", "hydra.run.dir=run"])
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: round ") and "NaN or Inf" in proc.stderr
    assert '"status": "failed"' in (tmp_path / "run" / "summary.json").read_text()
