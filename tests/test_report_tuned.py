"""sim.report's additions on scripted run folders: tuned comparison, communication axes, node spread, --plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from sim.report import main
from sim.reporting.communication import with_cost_axis
from sim.reporting.nodes import node_spread
from sim.reporting.runs import load_runs

NAN = math.nan


def write_run(path: Path, config: dict, columns: dict[str, list]) -> None:
    path.mkdir(parents=True)
    pd.DataFrame(columns).to_csv(path / "metrics.csv", index=False)
    summary = {"status": "completed", "config": config, "loop_s": 1.0}
    (path / "summary.json").write_text(json.dumps(summary))


def fl(strategy: str, seed: int, lr: float, server_lr: float, val: float, test: float) -> tuple[dict, dict]:
    config = {
        "mode": "federated",
        "seed": seed,
        "strategy": {"name": strategy, "server_lr": server_lr},
        "train": {"lr": lr},
        "dataset": {"name": "digits", "val_fraction": 0.1},
    }
    columns = {
        "round": [0, 1, 2],
        "test_accuracy": [0.1, 0.5, test],
        "val_accuracy": [0.1, 0.5, val],
        "num_participants": [0, 5, 5],
        "bytes_up": [0, 100, 100],
        "bytes_down": [0, 100, 100],
    }
    return config, columns


# (strategy, lr, server_lr) -> per seed (val, test). fedavg: lr 0.01 is best on val (0.80 vs 0.75) though lr 0.1
# is best on test (0.90 vs 0.70): the tuned pick must follow val. fedadam: server_lr 1.0 wins on both.
TRIALS = {
    ("fedavg", 0.1, 1.0): [(0.74, 0.90), (0.76, 0.90)],
    ("fedavg", 0.01, 1.0): [(0.80, 0.70), (0.80, 0.72)],
    ("fedadam", 0.1, 0.1): [(0.60, 0.60), (0.62, 0.60)],
    ("fedadam", 0.1, 1.0): [(0.85, 0.84), (0.87, 0.88)],
}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    job = 0
    for (strategy, lr, server_lr), seeds in TRIALS.items():
        for seed, (val, test) in enumerate(seeds):
            write_run(tmp_path / "sweep" / str(job), *fl(strategy, seed, lr, server_lr, val, test))
            job += 1
    return tmp_path / "sweep"


def test_tuned_comparison_picks_each_strategy_by_validation_and_reports_test(sweep, tmp_path, capsys):
    # Execute
    code = main([str(sweep), "--out", str(tmp_path / "out"), "--tuned"])
    # Assert
    assert code == 0
    tuned = (tmp_path / "out" / "tuned.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in tuned.splitlines() if line.startswith("| fed")}
    assert "| fedavg | train.lr=0.01 | 2 | 2 | 0.8000 | 0.7100 ± 0.0141 |" == rows["fedavg"]
    assert "| fedadam | strategy.server_lr=1 | 2 | 2 | 0.8600 | 0.8600 ± 0.0283 |" == rows["fedadam"]
    assert "Every strategy had 4 run(s)" in tuned
    assert tuned in (tmp_path / "out" / "report.md").read_text()


def test_tuned_comparison_needs_a_validation_column(tmp_path, capsys):
    # Prepare: runs without val_accuracy
    config, columns = fl("fedavg", 0, 0.1, 1.0, 0.5, 0.5)
    del columns["val_accuracy"]
    write_run(tmp_path / "sweep" / "0", config, columns)
    # Execute
    code = main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--tuned"])
    # Assert
    assert code == 2
    assert "val_accuracy" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_communication_axes_are_running_totals_of_what_was_sent(tmp_path):
    # Prepare: an FL run (server sends and clients send back) and a gossip run (each message counted once)
    write_run(tmp_path / "runs" / "fl", *fl("fedavg", 0, 0.1, 1.0, 0.5, 0.5))
    gossip = {
        "round": [0, 1, 2],
        "test_accuracy": [0.1, 0.4, 0.6],
        "num_participants": [0, 4, 4],
        "messages_sent": [0, 8, 6],
        "bytes_up": [0, 80, 60],
        "bytes_down": [0, 70, 60],  # one message lost: arrivals are not sends
    }
    write_run(tmp_path / "runs" / "gossip", {"mode": "gossip", "seed": 0, "strategy": {"name": "gossip_avg"}}, gossip)
    runs, _ = load_runs([tmp_path / "runs"])
    by_name = {r.path.name: r for r in runs}
    # Execute
    fl_bytes, fl_msgs = (with_cost_axis(by_name["fl"], k) for k in ("bytes", "messages"))
    g_bytes, g_msgs = (with_cost_axis(by_name["gossip"], k) for k in ("bytes", "messages"))
    # Assert
    assert fl_bytes is not None and fl_msgs is not None and g_bytes is not None and g_msgs is not None
    assert fl_bytes.metrics[fl_bytes.x].tolist() == [0, 200, 400]
    assert fl_msgs.metrics[fl_msgs.x].tolist() == [0, 10, 20]
    assert g_bytes.metrics[g_bytes.x].tolist() == [0, 80, 140]
    assert g_msgs.metrics[g_msgs.x].tolist() == [0, 8, 14]


def test_gossip_node_spread_and_extra_columns_are_drawn(tmp_path, capsys):
    # Prepare: a gossip run with node statistics; its last evaluation is round 2 (round 3 not evaluated)
    columns = {
        "round": [0, 1, 2, 3],
        "test_accuracy": [0.1, 0.5, 0.7, NAN],
        "test_accuracy_mean": [0.1, 0.5, 0.7, NAN],
        "test_accuracy_std": [0.0, 0.1, 0.05, NAN],
        "test_accuracy_min": [0.1, 0.3, 0.6, NAN],
        "test_accuracy_max": [0.1, 0.6, 0.8, NAN],
        "consensus_distance": [0.0, 2.0, 1.0, 0.5],
        "messages_sent": [0, 8, 8, 8],
        "bytes_up": [0, 80, 80, 80],
    }
    write_run(tmp_path / "runs" / "0", {"mode": "gossip", "seed": 0, "strategy": {"name": "gossip_avg"}}, columns)
    runs, _ = load_runs([tmp_path / "runs"])
    # Execute
    spread = node_spread(runs[0])
    code = main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--plot", "consensus_distance"])
    bad = main([str(tmp_path / "runs"), "--out", str(tmp_path / "out2"), "--plot", "no_such_column"])
    # Assert
    assert spread == {"mean": 0.7, "std": 0.05, "min": 0.6, "max": 0.8}
    assert code == 0 and bad == 2 and not (tmp_path / "out2").exists()
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    for name in ("node_accuracy.png", "plot_consensus_distance.png", "comparison.png"):
        assert name in written and (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG")
