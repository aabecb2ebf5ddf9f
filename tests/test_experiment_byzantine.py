"""experiments/byzantine.py's smoke mode runs end to end and its numbers make sense."""

import sys
from pathlib import Path

import pandas as pd
import pytest
from forked_cli import run_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_byzantine_smoke_writes_csv_report_and_heatmaps(tmp_path):
    # Prepare: nothing but an empty output folder
    # Execute
    # (a real `python experiments/byzantine.py` process, forked from a server that imported torch once)
    proc = run_script(ROOT / "experiments" / "byzantine.py", ["--smoke", "--out", str(tmp_path)], ROOT, timeout=240)
    # Assert
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = pd.read_csv(tmp_path / "byzantine.csv")
    assert (results.status == "ok").all(), results
    assert results.accuracy.between(0.0, 1.0).all()
    fl = results[results["mode"] == "federated"].set_index("attack").accuracy
    assert fl["none"] > 0.8  # 10 honest + 2 (here honest) clients learn digits in a few rounds
    assert fl["gaussian"] < fl["none"] - 0.1  # N(0, 1) noise from 2 of 12 clients ruins plain FedAvg
    gossip = results[results["mode"] == "gossip"].iloc[0]
    assert gossip.num_clients == 14 and gossip.num_byzantine == 2
    assert gossip.accuracy_min <= gossip.accuracy  # the worst honest node is not above the mean
    for name in ("byzantine_fl.png", "byzantine_gossip.png", "byzantine_worst.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "byzantine.md").read_text()
    assert "| fedavg | " in report and "(gaussian)" in report and "## Findings" in report


def test_byzantine_resumes_from_its_csv_without_rerunning(tmp_path):
    # Prepare: a CSV that already holds every smoke run
    sys.path.insert(0, str(ROOT / "experiments"))
    import byzantine

    grid = byzantine.grids(smoke=True)[0]
    done = pd.DataFrame(
        [
            {"grid": grid.name, "mode": grid.mode, "f": 2, "heterogeneity": "iid", "rule": "fedavg", "attack": a}
            | {"seed": 0, "num_clients": 12, "status": "ok", "accuracy": 0.5, "wall_s": 0.1}
            for a in grid.attacks
        ]
    )
    # Execute: the sweep finds nothing left to run (composing would fail outside Hydra's context)
    out = byzantine.sweep(grid, done, [0], composer=None, csv=tmp_path / "x.csv")
    # Assert
    assert len(out) == len(done) and not (tmp_path / "x.csv").exists()
