"""experiments/personalization.py at a tiny size: one real gossip run, its columns, and a rule not yet landed.

The ordering checked is the one that holds by a wide margin even after 3 rounds (own-data accuracy of gossip
nodes above their pooled-test accuracy under Dirichlet(0.1) labels: 0.26 to 0.64 apart on seeds 0-3 at this
size); the experiment's claims themselves are measured by the script, not by the suite.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exp():
    spec = importlib.util.spec_from_file_location("personalization", ROOT / "experiments" / "personalization.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["personalization"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("personalization", None)


def test_tiny_run_writes_the_table_report_and_figure(exp, tmp_path, monkeypatch) -> None:
    gossip = ("gossip averaging", ["mode=gossip", "topology=ring", "strategy=gossip_avg"])
    methods = {
        "gossip": ([exp.DIRICHLET], [gossip]),
        "personalization": ([exp.DIRICHLET], [("not landed", ["strategy=no_such_rule"])]),  # one list entry
    }
    monkeypatch.setattr(exp, "METHODS", methods)
    out = tmp_path / "out"
    argv = ["--seeds", "0", "--clients", "8", "--rounds", "3", "--out", str(out), "--runs", str(tmp_path / "runs")]
    assert exp.main(argv) == 0
    runs = pd.read_csv(out / "personalization.csv").set_index("part")
    assert runs.loc["personalization", "status"] == "missing: strategy=no_such_rule does not exist yet"
    row = runs.loc["gossip"]
    assert row["status"] == "ok" and row["clients"] == 8 and row["setting"] == "Dirichlet 0.1"
    for column in ("client_mean", "client_p10", "client_std", "client_min", "pooled_mean", "pooled_p10"):
        assert 0.0 <= row[column] <= 1.0, column
    assert row["client_p10"] <= row["client_mean"] and row["pooled_p10"] <= row["pooled_mean"]
    assert row["client_min"] <= row["client_p10"]  # 8 nodes: the worst 10 % is the single worst node
    assert row["client_mean"] > row["pooled_mean"] + 0.1  # label-skewed nodes know their own labels best
    # the pooled mean is the mean of the nodes' pooled-test accuracies, which metrics.csv also reports
    assert row["pooled_mean"] == pytest.approx(row["test_accuracy"], abs=1e-6)
    report = (out / "personalization.md").read_text()
    assert "| Dirichlet 0.1 | gossip averaging | 1 |" in report
    assert "| Dirichlet 0.1 | not landed | 0 | missing: strategy=no_such_rule" in report
    assert "python experiments/personalization.py --seeds 0" in report and "## Findings" in report
    assert (out / "personalization.png").stat().st_size > 0
    # a rerun reuses the finished run folder and keeps a hand-written Findings section
    (out / "personalization.md").write_text(report.replace("(to be written from the tables above)", "Kept."))
    assert exp.main(argv) == 0
    assert "Kept." in (out / "personalization.md").read_text()


def test_run_overrides_a_setting_or_method_replaces_the_base(exp) -> None:
    """No runs: Synthetic's own data, model, clients and rounds win over the base; --clients wins over both."""
    spec = next(s for s in exp.specs({"qfedavg"}) if s.setting == exp.SYNTHETIC[0] and s.method == "FedAvg")
    full = exp.run_overrides(spec, 20, None)
    keys = [o.split("=", 1)[0] for o in full]
    assert len(keys) == len(set(keys))  # Hydra takes each key once
    for o in ("dataset=synthetic", "model=logreg", "num_clients=100", "rounds=2000", "eval_every=2000"):
        assert o in full, o
    assert "dataset=digits" not in full and "model=mlp" not in full
    small = exp.run_overrides(spec, 8, 3)
    assert {"num_clients=8", "rounds=3", "eval_every=3"} <= set(small)
    gossip = next(s for s in exp.specs({"gossip"}))
    assert "num_clients=16" in exp.run_overrides(gossip, 20, None)
    bn = next(s for s in exp.specs({"personalization"}) if s.method.startswith("FedBN"))
    assert {"model=resnet", "model.norm=batch", "dataset=digits", "rounds=30"} <= set(exp.run_overrides(bn, 20, None))


def test_only_limits_methods_to_their_settings(exp) -> None:
    settings = {(s.method, s.setting) for s in exp.specs({"personalization", "qfedavg"})}
    assert {m for m, _ in settings if m.startswith("FedBN")} == {"FedBN, ResNet-8 BN"}
    assert {st for m, st in settings if m.startswith("FedBN")} == {exp.ROTATE[0], exp.INTENSITY[0]}
    bn = {"FedAvg", "FedAvg, ResNet-8 BN", "FedBN, ResNet-8 BN"}
    assert {m for m, st in settings if st == exp.INTENSITY[0]} == bn
    assert {st for m, st in settings if m == "q-FedAvg q=1"} == {exp.SYNTHETIC[0], exp.DIRICHLET[0]}
    assert {st for m, st in settings if m == "q-FedAvg q=5"} == {exp.DIRICHLET[0]}
    assert {st for m, st in settings if m == "Ditto"} == {exp.DIRICHLET[0], exp.SHARDS[0], exp.ROTATE[0]}
