"""A fair comparison end to end: Optuna tunes each strategy with the same budget, the report compares them.

Real ``python -m sim -m hydra/sweeper=optuna`` sweeps (3 trials each, tiny runs), then
``python -m sim.report --tuned`` on the sweep folders; each a process of its own, forked from a server that imported
torch once (forked_cli.py).
"""

import json
from pathlib import Path

import pytest
from forked_cli import run_module

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
pytestmark = pytest.mark.slow

TUNE = (
    "hydra/sweeper=optuna",
    "hydra.sweeper.n_trials=3",
    "hydra.sweeper.sampler.seed=0",
    "hydra.sweeper.direction=maximize",
    "model=logreg",
    "num_clients=12",
    "rounds=3",
    "progress=false",
    "train.epochs=1",
    "train.lr=tag(log, interval(0.01, 0.5))",
)


def _trials(folder: Path) -> list[dict]:
    out = []
    for summary in sorted(folder.glob("*/summary.json")):
        s = json.loads(summary.read_text())
        out.append({"lr": s["config"]["train"]["lr"], "val": s["final"]["val_accuracy"]})
    return out


def test_optuna_tunes_every_strategy_on_validation_with_one_budget_and_the_report_compares_them(tmp_path):
    # Prepare / Execute: the same trial budget, sampler seed and run seed for each strategy
    for strategy in ("fedavg", "fedavgm"):
        proc = run_module(
            "sim", ["-m", *TUNE, f"strategy={strategy}", f"hydra.sweep.dir=tune/{strategy}"], tmp_path, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    report = run_module("sim.report", ["tune", "--tuned"], tmp_path)
    # Assert: 3 trials each inside the interval; the first trial (the sampler's seeded start) is the same
    assert report.returncode == 0, report.stderr[-2000:]
    trials = {s: _trials(tmp_path / "tune" / s) for s in ("fedavg", "fedavgm")}
    for runs in trials.values():
        assert len(runs) == 3 and all(0.01 <= r["lr"] <= 0.5 for r in runs)
    assert trials["fedavg"][0]["lr"] == pytest.approx(trials["fedavgm"][0]["lr"])
    # Optuna saw each job's validation accuracy and reports the best one
    for strategy, runs in trials.items():
        best = yaml_best(tmp_path / "tune" / strategy)
        assert best["best_value"] == pytest.approx(max(r["val"] for r in runs))
    # the tuned table: each strategy at its best validation setting, with that lr
    text = (tmp_path / "tune" / "report" / "tuned.md").read_text()
    for strategy, runs in trials.items():
        best_lr = max(runs, key=lambda r: r["val"])["lr"]
        assert f"| {strategy} | train.lr={best_lr:.6g} | 3 |" in text, text


def yaml_best(folder: Path) -> dict:
    import yaml

    return yaml.safe_load((folder / "optimization_results.yaml").read_text())
