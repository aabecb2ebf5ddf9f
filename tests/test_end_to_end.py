"""Whole runs: a short FL run end to end, reproducibility, and Hydra's command line."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from forked_cli import run_module

from sim.run import run_experiment

SMALL = ("num_clients=6", "participation.clients_per_round=3", "rounds=3", "model.hidden=[16]")


def test_three_round_run_writes_every_result_file(make_cfg, tmp_path):
    summary = run_experiment(make_cfg(*SMALL), tmp_path)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    for column in (
        "round",
        "test_accuracy",
        "test_loss",
        "train_loss",
        "num_participants",
        "bytes_up",
        "bytes_down",
        "wall_s",
    ):
        assert column in metrics.columns
    assert metrics["round"].tolist() == [0, 1, 2, 3]
    assert metrics["num_participants"].tolist() == [0, 3, 3, 3]
    num_bytes = summary["num_parameters"] * 4
    assert metrics["bytes_up"].tolist()[1:] == [3 * num_bytes] * 3
    assert metrics["test_accuracy"].iloc[-1] > metrics["test_accuracy"].iloc[0]  # it learns
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "completed"
    assert on_disk["final"]["test_accuracy"] == pytest.approx(metrics["test_accuracy"].iloc[-1])
    assert on_disk["config"]["strategy"]["name"] == "fedavg" and "torch" in on_disk["versions"]
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_the_summary_and_the_log_record_the_data_the_run_was_given(make_cfg, tmp_path, caplog):
    from sklearn.datasets import load_digits

    from sim.attacks import byzantine_ids

    # Prepare: digits (1,797 rows, 10 classes) on 6 clients, one of them Byzantine
    caplog.set_level("INFO", logger="sim")
    cfg = make_cfg(*SMALL, "rounds=1", "attack=sign_flip", "attack.f=1", "strategy=median")
    # Execute
    run_experiment(cfg, tmp_path)
    # Assert: the splits add up to the whole data set, the clients' rows to the train split
    data = json.loads((tmp_path / "summary.json").read_text())["data"]
    assert data["train"] + data["val"] + data["test"] == len(load_digits().target) == 1797
    assert data["val"] > 0 and data["test"] > 0 and data["num_classes"] == 10 and data["num_clients"] == 6
    sizes = data["client_train_sizes"]
    assert len(sizes) == 6 and sum(sizes) == data["train"] and len(set(sizes)) > 1  # Dirichlet: unequal
    ids = json.loads((tmp_path / "summary.json").read_text())["byzantine_ids"]
    assert ids == byzantine_ids(6, 1, 0).tolist() and len(ids) == 1
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("data digits"))
    assert f"{data['train']} train, {data['val']} val, {data['test']} test rows, 10 classes" in line
    assert str(sizes) in line and f"Byzantine clients {ids}" in line


def test_the_accuracy_plot_has_whole_round_ticks_and_names_the_model(make_cfg):
    from sim.experiment import build_experiment
    from sim.results import accuracy_figure
    from sim.run import accuracy_title

    cfg = make_cfg("num_clients=6", "participation.clients_per_round=3", "rounds=3", "model=logreg")
    rows = [{"round": r, "test_accuracy": 0.5 + r / 10, "train_loss": 1.0 / (r + 1)} for r in range(4)]
    fig = accuracy_figure(rows, accuracy_title(build_experiment(cfg), cfg))
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert "logreg" in fig._suptitle.get_text() and "fedavg, FL" in fig._suptitle.get_text()


def test_eval_every_skips_rounds_but_always_evaluates_the_last(make_cfg, tmp_path):
    run_experiment(make_cfg("num_clients=6", "participation.clients_per_round=3", "rounds=5", "eval_every=2"), tmp_path)
    acc = pd.read_csv(tmp_path / "metrics.csv")["test_accuracy"]
    assert acc.notna().tolist() == [True, False, True, False, True, True]


def test_same_seed_gives_identical_metrics_and_other_seed_differs(make_cfg, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_experiment(make_cfg(*SMALL, f"seed={seed}", "strategy=fedadam"), tmp_path / name)
    read = lambda n: pd.read_csv(tmp_path / n / "metrics.csv").drop(columns=["wall_s"])  # noqa: E731
    pd.testing.assert_frame_equal(read("a"), read("b"), check_exact=True)
    assert not read("a").equals(read("c"))


def test_save_model_writes_a_checkpoint_that_reproduces_the_final_accuracy(make_cfg, tmp_path):
    from sim.checkpoint import load_checkpoint
    from sim.experiment import build_experiment
    from sim.training import evaluate

    cfg = make_cfg(*SMALL, "save_model=true")
    summary = run_experiment(cfg, tmp_path)
    layout, params, meta = load_checkpoint(tmp_path / "model.safetensors")
    exp = build_experiment(cfg)
    assert layout == exp.layout and meta["strategy"] == "fedavg"
    acc, _ = evaluate(exp.model, layout, params, exp.data.x_test, exp.data.y_test)
    assert acc == summary["final"]["test_accuracy"]


def _sim(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m sim ARGS`` as a real process forked from a server that imported torch once (tests/forked_cli.py)."""
    return run_module("sim", [*sorted(args, key=lambda a: not a.startswith("-")), "progress=false"], tmp_path)


@pytest.mark.slow
def test_command_line_multirun_sweep(tmp_path):
    proc = _sim(
        tmp_path, "--multirun", "strategy=fedavg,fedadam", "seed=0,1", *SMALL, "rounds=2", "hydra.sweep.dir=sweep"
    )
    assert proc.returncode == 0, proc.stderr
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert len(summaries) == 4
    names = sorted(json.loads(p.read_text())["strategy"] for p in summaries)
    assert names == ["fedadam", "fedadam", "fedavg", "fedavg"]


def test_divergence_stops_with_a_clear_error_and_a_failed_summary(make_cfg, tmp_path):
    from sim.errors import RunError

    cfg = make_cfg(*SMALL, "rounds=5", "strategy=fedadam", "strategy.server_lr=1e30")
    with pytest.raises(RunError, match="NaN or Inf"):
        run_experiment(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "lower" in summary["error"]
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert rows["round"].iloc[0] == 0 and len(rows) < 6
