"""Bad input: one clear paragraph, exit code 2, no traceback, no result files (one test per case).

Each case is a real ``python -m ...`` process, forked from a server that imported torch & co once (forked_cli.py):
exit code and stderr are the user's, without 2-3 CPU seconds of imports per case.
"""

import numpy as np
import pytest
from forked_cli import run_module

pytestmark = pytest.mark.slow


def _npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return f"dataset.path={path}"


def _arrays(n=40, d=5):
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(n, d)),
        "y_train": rng.integers(0, 3, n),
        "x_test": rng.normal(size=(10, d)),
        "y_test": rng.integers(0, 3, 10),
    }


CASES = {
    "unknown strategy": (["strategy=fedavx"], "strategy"),
    "unknown dataset": (["dataset=mnist"], "dataset"),
    "unknown model": (["model=vgg16"], "model"),
    "checkpoint every zero rounds": (["checkpoint.every=0"], "checkpoint.every"),
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
    "participation probability above 1": (
        ["participation=bernoulli", "participation.probability=constant", "participation.p=1.5"],
        "participation.p",
    ),
    "participation probability zero": (
        ["participation=markov", "participation.probability=constant", "participation.p=0"],
        "participation.p",
    ),
    "participation floor zero": (["participation=bernoulli", "participation.floor=0"], "participation.floor"),
    "a constant pattern without p": (["participation=cyclic", "participation.probability=constant"], "participation.p"),
    "fedau cutoff below 1": (["strategy=fedau", "strategy.cutoff=0"], "strategy.cutoff"),
    "cyclic period below 1": (["participation=cyclic", "participation.period=0"], "participation.period"),
    "unknown participation": (["participation=poisson"], "participation"),
    "degree at least num_clients": (
        ["mode=gossip", "topology=random_regular", "topology.degree=20"],
        "topology.degree",
    ),
    "drop probability above 1": (["mode=gossip", "topology=ring", "gossip.drop_prob=1.5"], "gossip.drop_prob"),
    "negative delay": (
        ["mode=gossip", "topology=ring", "gossip.schedule=async", "gossip.delay_value=-1"],
        "gossip.delay_value",
    ),
    "unknown topology": (["mode=gossip", "topology=hypercube"], "topology"),
    "federated mode on a ring": (["topology=ring"], "topology.name"),
    "greedy soup without a validation split": (
        ["strategy=greedy_soup", "dataset.val_fraction=0"],
        "dataset.val_fraction",
    ),
    "interpolation alpha above 1": (["strategy=interpolate", "strategy.alpha=1.5"], "strategy.alpha"),
    "init checkpoint missing": (["model.init_checkpoint=/nonexistent/model.safetensors"], "model.init_checkpoint"),
    "unknown backend": (["backend=gpu"], "backend"),
    "unknown vectorized kernel": (["backend.kernel=fast"], "backend.kernel"),
    "dense kernel for a cnn": (["model=cnn", "backend=vectorized", "backend.kernel=dense"], "backend.kernel"),
    "eval_nodes zero": (["mode=gossip", "topology=ring", "gossip.eval_nodes=0"], "gossip.eval_nodes"),
    "batch_exchanges not a boolean": (
        ["mode=gossip", "topology=ring", "gossip.schedule=async", "gossip.batch_exchanges=maybe"],
        "gossip.batch_exchanges",
    ),
    "npz path missing": (["dataset=npz", "dataset.path=/nonexistent/data.npz", "partition=iid"], "dataset.path"),
    # every float must be finite (inf passed `v > 0`); one case per module that checks numbers
    "lr infinite": (["train.lr=inf"], "train.lr"),
    "strategy number not a number": (["strategy=fedadam", "strategy.tau=nan"], "strategy.tau"),
    "async wake interval infinite": (
        ["mode=gossip", "topology=ring", "gossip.schedule=async", "gossip.wake_interval=inf"],
        "gossip.wake_interval",
    ),
    "participation alpha infinite": (["participation=bernoulli", "participation.alpha=inf"], "participation.alpha"),
    # keys: the schema is the chosen option's YAML file
    "appended unknown key": (["+train.foo=1"], "train.foo"),
    "misspelt key gets a suggestion": (["train.lrr=0.1"], "Did you mean train.lr?"),
    "gossip block checked in federated mode": (["gossip.drop_prob=2"], "gossip.drop_prob"),
    # values that would make the run meaningless
    "async evaluation after the run ends": (
        ["mode=gossip", "topology=ring", "gossip.schedule=async", "rounds=2", "gossip.eval_interval=5"],
        "gossip.eval_interval",
    ),
    "nobody ever takes part": (
        ["participation=bernoulli", "participation.probability=constant", "participation.p=1e-9", "rounds=2"],
        "participation",
    ),
    "train_classes the data lack": (["dataset.train_classes=[12]"], "dataset.train_classes"),
    # backend keys: integers >= 1, finite numbers, real booleans, an honest message without a GPU
    "negative threads": (["backend.num_threads=-2"], "backend.num_threads"),
    "fractional threads": (["backend=vectorized", "backend.num_threads=1.5"], "backend.num_threads"),
    "zero chunk": (["backend=vectorized", "backend.chunk_size=0"], "backend.chunk_size"),
    "infinite cpus": (["backend=ray", "backend.num_cpus=inf"], "backend.num_cpus"),
    "noop_train not a boolean": (["backend=ray", "backend.noop_train=1"], "backend.noop_train"),
    "a GPU on a machine without one": (["backend=ray", "backend.num_gpus=1"], "CPU(s) and no GPU"),
}


def _check_clean_failure(proc, field, tmp_path):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: ") and field in proc.stderr
    written = [p.name for p in tmp_path.rglob("*") if p.name in ("metrics.csv", "summary.json", "accuracy.png")]
    assert written == []


def _run(tmp_path, args):
    return run_module("sim", [*sorted(args, key=lambda a: not a.startswith("-")), "progress=false"], tmp_path)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_value(case, tmp_path):
    args, field = CASES[case]
    _check_clean_failure(_run(tmp_path, args), field, tmp_path)


@pytest.mark.parametrize("case", ["keys missing", "mismatched lengths", "NaN features", "huge label"])
def test_bad_npz_file(case, tmp_path):
    arrays = _arrays()
    if case == "keys missing":
        del arrays["y_train"]
        expect = "y_train"
    elif case == "NaN features":
        arrays["x_train"][3, 1] = np.nan
        expect = "x_train holds NaN at row 3"
    elif case == "huge label":
        arrays["y_test"][2] = 10**12
        expect = "y_test holds 1000000000000 at row 2"
    else:
        arrays["y_train"] = arrays["y_train"][:-5]
        expect = "x_train"
    args = [
        "dataset=npz",
        _npz(tmp_path, **arrays),
        "partition=iid",
        "num_clients=4",
        "participation.clients_per_round=2",
        "model=logreg",
    ]
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
    args = [
        "dataset=npz",
        _npz(tmp_path, **_arrays()),
        "partition=iid",
        "num_clients=4",
        "participation.clients_per_round=2",
        "model=logreg",
        "rounds=2",
        "hydra.run.dir=run",
    ]
    proc = _run(tmp_path, args)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "summary.json").exists()


def test_nan_from_a_client_exits_3_without_traceback(tmp_path):
    proc = _run(
        tmp_path,
        [
            "num_clients=6",
            "participation.clients_per_round=3",
            "rounds=4",
            "strategy=fedadam",
            "strategy.server_lr=1e30",
            "hydra.run.dir=run",
        ],
    )
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: round ") and "NaN or Inf" in proc.stderr
    assert '"status": "failed"' in (tmp_path / "run" / "summary.json").read_text()


# ---- sim.merge, sim.report and model.init_checkpoint: bad files and options -------------------------------------
# (appended section: checkpoints, run folders and tool options are refused naming the file or option)

_LAYOUT_KEY = "gossipsoup_layout"


def _run_module(tmp_path, module, args):
    return run_module(module, args, tmp_path)


def _check_refused(proc, fragments, tmp_path, before):
    """Exit 2, one ``error:`` paragraph naming ``fragments``, no traceback, nothing new under tmp_path."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: ") and "\n\n" not in proc.stderr.strip(), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    assert set(tmp_path.rglob("*")) == before


@pytest.fixture(scope="module")
def merge_runs(tmp_path_factory):
    """Two run folders (summary.json with the resolved config + model.safetensors), no training."""
    import json

    from hydra import compose, initialize_config_module

    from sim.checkpoint import save_checkpoint
    from sim.experiment import build_experiment, resolved_config

    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["progress=false", "model.hidden=[16]"])
    exp = build_experiment(cfg)
    root = tmp_path_factory.mktemp("merge_runs")
    for i in range(2):
        run = root / f"r{i}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"status": "completed", "config": resolved_config(cfg)}))
        save_checkpoint(run / "model.safetensors", exp.layout, exp.initial_params + 0.01 * i)
    return root, exp.layout, exp.initial_params.clone()


def _checkpoint_bytes(case, layout, params):
    """The bytes of a checkpoint broken in the way ``case`` names, and a fragment the error must name."""
    from safetensors.torch import save

    tensors = {k: v.contiguous().clone() for k, v in layout.to_state_dict(params).items()}
    good = save(tensors, metadata={_LAYOUT_KEY: layout.to_json()})
    if case == "not safetensors":
        return b"PK\x03\x04 a zip file, say", "valid safetensors"
    if case == "truncated":
        return good[: len(good) // 2], "valid safetensors"
    if case == "layout metadata missing":
        return save(tensors, metadata={"note": "from elsewhere"}), _LAYOUT_KEY
    if case == "layout metadata garbled":
        return save(tensors, metadata={_LAYOUT_KEY: layout.to_json()[:-7]}), "garbled"
    if case == "a tensor disagrees with the layout":  # same numel, so a reshape(-1) would not notice
        tensors["net.2.weight"] = tensors["net.2.weight"].T.contiguous()
        return save(tensors, metadata={_LAYOUT_KEY: layout.to_json()}), "net.2.weight has shape [16, 10]"
    tensors["net.2.bias"][3] = float("nan")
    tensors["net.2.bias"][5] = float("inf")
    return save(tensors, metadata={_LAYOUT_KEY: layout.to_json()}), "net.2.bias holds 2 NaN or Inf"


CHECKPOINT_CASES = [
    "not safetensors",
    "truncated",
    "layout metadata missing",
    "layout metadata garbled",
    "a tensor disagrees with the layout",
    "NaN and Inf values",
]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_merge_refuses_a_bad_checkpoint_naming_the_file(case, merge_runs, tmp_path):
    root, layout, params = merge_runs
    data, fragment = _checkpoint_bytes(case, layout, params)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data)
    before = set(tmp_path.rglob("*"))
    proc = _run_module(tmp_path, "sim.merge", [str(root / "r0"), str(bad)])
    _check_refused(proc, ["CHECKPOINT", str(bad), fragment], tmp_path, before)


@pytest.mark.parametrize("case", ["layout metadata garbled", "NaN and Inf values"])
def test_init_checkpoint_refuses_a_bad_checkpoint_naming_the_file(case, merge_runs, tmp_path):
    _, layout, params = merge_runs
    data, fragment = _checkpoint_bytes(case, layout, params)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data)
    proc = _run(tmp_path, ["model.hidden=[16]", f"model.init_checkpoint={bad}", "rounds=1"])
    _check_clean_failure(proc, "model.init_checkpoint", tmp_path)
    assert str(bad) in proc.stderr and fragment in proc.stderr


@pytest.mark.parametrize("case", ["not JSON", "no config", "config not usable"])
def test_merge_refuses_a_garbled_summary_naming_it(case, merge_runs, tmp_path):
    import json
    import shutil

    root, _, _ = merge_runs
    run = tmp_path / "garbled"
    shutil.copytree(root / "r0", run)
    text = {
        "not JSON": '{"status": "completed", "config": {"seed": 0',
        "no config": json.dumps({"status": "completed"}),
        "config not usable": json.dumps({"status": "completed", "config": {"seed": 0, "mode": "federated"}}),
    }
    (run / "summary.json").write_text(text[case])
    before = set(tmp_path.rglob("*"))
    proc = _run_module(tmp_path, "sim.merge", [str(run), str(root / "r1")])
    _check_refused(proc, ["summary.json", str(run / "summary.json")], tmp_path, before)


MERGE_OPTION_CASES = {
    "--set without =": (["--method", "interpolate", "--set", "alpha"], ["--set='alpha'", "alpha, base"]),
    "--set text for a number": (["--method", "interpolate", "--set", "alpha=abc"], ["--set='alpha=abc'", "NUMBER"]),
    "--set an unknown option": (["--method", "interpolate", "--set", "alpah=0.3"], ["--set", "Did you mean 'alpha'"]),
    "--set a class key": (["--set", "_target_=os.system"], ["--set", "uniform_soup options are weighting"]),
    "unknown --method": (["--method", "fisher_merg"], ["--method='fisher_merg'", "Did you mean 'fisher_merge'"]),
    "--out an existing folder": (["--out", "{tmp}"], ["--out", "existing folder"]),
    "--csv an existing folder": (["--csv", "{tmp}"], ["--csv", "existing folder"]),
    "--fisher-rows zero": (["--method", "fisher_merge", "--fisher-rows", "0"], ["--fisher-rows=0", ">= 1"]),
    "--fisher-rows negative": (["--fisher-rows", "-4"], ["--fisher-rows=-4"]),
    "--shift-pixels negative": (["--shift-pixels", "-1"], ["--shift-pixels=-1"]),
    "--shift-noise nan": (["--shift-noise", "nan"], ["--shift-noise=nan", "finite"]),
    "--shift-noise inf": (["--shift-noise", "inf"], ["--shift-noise=inf", "finite"]),
    "--fisher-rows not a number": (["--fisher-rows", "many"], ["--fisher-rows", "invalid int value"]),
}


@pytest.mark.parametrize("case", list(MERGE_OPTION_CASES))
def test_merge_refuses_a_bad_option_before_any_work(case, merge_runs, tmp_path):
    root, _, _ = merge_runs
    args, fragments = MERGE_OPTION_CASES[case]
    args = [a.format(tmp=tmp_path) for a in args]
    before, before_runs = set(tmp_path.rglob("*")), set(root.rglob("*"))
    proc = _run_module(tmp_path, "sim.merge", [str(root / "r0"), str(root / "r1"), *args])
    _check_refused(proc, fragments, tmp_path, before)
    assert set(root.rglob("*")) == before_runs  # no merged_*.safetensors beside r0 either


def _report_run(folder, summary=None, metrics="round,test_accuracy,wall_s\n0,0.1,0.0\n1,0.5,1.0\n"):
    import json

    folder.mkdir(parents=True)
    summary = (
        {"status": "completed", "config": {"seed": 0, "strategy": {"name": "fedavg"}}} if summary is None else summary
    )
    (folder / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    if metrics is not None:
        (folder / "metrics.csv").write_text(metrics)
    return folder


REPORT_CASES = {  # case: (how run 1 of two is broken, file named, fragment)
    "summary not JSON": ({"summary": '{"status": "compl'}, "summary.json", "readable summary.json"),
    "summary a list": ({"summary": "[1, 2]"}, "summary.json", "holds a list"),
    "summary without config": ({"summary": {"status": "completed"}}, "summary.json", "'config'"),
    "metrics header only": ({"metrics": "round,test_accuracy,wall_s\n"}, "metrics.csv", "only the header"),
    "metrics empty file": ({"metrics": ""}, "metrics.csv", "readable metrics.csv"),
    "metrics missing": ({"metrics": None}, "metrics.csv", "missing"),
    "metrics text in a number cell": (
        {"metrics": "round,test_accuracy\n0,0.1\n1,high\n"},
        "metrics.csv",
        "Line 3 has 'high'",
    ),
    "metrics text in the round cell": (
        {"metrics": "round,test_accuracy\n0,0.1\none,0.5\n"},
        "metrics.csv",
        "round cells",
    ),
    "metric never evaluated": ({"metrics": "round,test_accuracy\n0,\n1,\n"}, "metrics.csv", "Every test_accuracy"),
}


@pytest.mark.parametrize("case", [*REPORT_CASES, "empty folder", "folder without runs"])
def test_report_refuses_a_garbled_run_naming_the_file(case, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    if case in REPORT_CASES:
        broken, name, fragment = REPORT_CASES[case]
        _report_run(root / "0")
        _report_run(root / "1", **broken)
        fragments = [f"{name}=", str(root / "1" / name), fragment]
    else:
        if case == "folder without runs":
            (root / "notes.txt").write_text("nothing ran here\n")
        fragments = ["DIR=", "No summary.json"]
    before = set(tmp_path.rglob("*"))
    proc = _run_module(tmp_path, "sim.report", [str(root)])
    _check_refused(proc, fragments, tmp_path, before)


# ---- your own model and data: each refused before any work, naming the field ----------------------


def _table_csv(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(30)))
    return path


def _byo_case(case: str, tmp_path) -> tuple[list[str], str]:
    if case == "target does not import":
        return ["model=custom", "model.target=nowhere_to_be_found.Net"], "model.target"
    if case == "target returns no module":
        (tmp_path / "user_nets.py").write_text("def Net(num_classes):\n    return 'not a module'\n")
        return ["model=custom", "model.target=user_nets.Net"], "model.target"
    if case == "wrong output shape":
        (tmp_path / "user_nets.py").write_text(
            "from torch import nn\n\ndef Net(input_shape, num_classes):\n    return nn.Flatten()\n"
        )
        return ["model=custom", "model.target=user_nets.Net"], "model.target"
    if case == "missing column":
        path = _table_csv(tmp_path)
        return ["dataset=hf", f"dataset.path={path}", "dataset.features=[a,c]", "partition=iid"], "dataset.features"
    if case == "partition column missing":
        path = _table_csv(tmp_path)
        return ["dataset=hf", f"dataset.path={path}", "dataset.partition_column=writer"], "dataset.partition_column"
    if case == "non-image data in an image column":
        path = tmp_path / "table.csv"
        path.write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(30)))
        return ["dataset=hf", f"dataset.path={path}", "dataset.features=a", "dataset.input_kind=image"], "dataset"
    if case == "inconsistent LEAF counts":
        folder = tmp_path / "leaf"
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "part.json").write_text(
            '{"users": ["u1"], "num_samples": [3], "user_data": {"u1": {"x": [[0.0, 1.0]], "y": [0]}}}'
        )
        return [
            "dataset=leaf",
            f"dataset.path={folder}",
            "num_clients=1",
            "participation.clients_per_round=1",
        ], "dataset.path"
    assert case == "augmenting features"
    return ["dataset=synthetic", "train.crop_padding=2"], "train.crop_padding"


BYO_CASES = [
    "target does not import",
    "target returns no module",
    "wrong output shape",
    "missing column",
    "partition column missing",
    "non-image data in an image column",
    "inconsistent LEAF counts",
    "augmenting features",
]


@pytest.mark.parametrize("case", BYO_CASES)
def test_bad_model_or_data_is_refused_before_any_work(case, tmp_path):
    args, field = _byo_case(case, tmp_path)
    _check_clean_failure(_run(tmp_path, [*args, "rounds=1"]), field, tmp_path)
