"""What the default command costs before its first round: no torch._dynamo, no pyplot, one Hydra composition.

``python -m sim`` took 5.6 s for W1 where the training loop is 0.4 s: 1.5 s went to importing
torch._dynamo (pulled in by backend=auto's trial vmapped gradient), about 0.9 s to composing the
config three times, 0.4 s to pyplot. The import check needs an interpreter of its own (the fork
server of tests/forked_cli.py preloads torch and more), so one fresh ``python -c`` runs the real
command line on W1 and reports what it imported and how often Hydra composed. (The default config's digits and
Dirichlet partition no longer import scikit-learn or flwr_datasets: tests/test_default_path_imports.py.)
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sim.cli import preflight
from sim.run import run_experiment

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch._dynamo", "matplotlib.pyplot", "ray", "pandas", "mlflow", "flwr", "networkx", "sklearn")

PROBE = """
import json, sys
from hydra._internal.hydra import Hydra
composed = []
original = Hydra.compose_config
def counting(self, *args, **kwargs):
    composed.append(1)
    return original(self, *args, **kwargs)
Hydra.compose_config = counting
heavy = json.loads(sys.argv[2])
sys.argv = ["sim", *json.loads(sys.argv[1])]
from sim.cli import main
main()
print(json.dumps({"composed": len(composed), "imported": [m for m in heavy if m in sys.modules]}))
"""


def w1_args(rounds: int) -> list[str]:
    """W1 of experiments/workloads.py (the start-up benchmark), with fewer rounds."""
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import workloads
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    return [a for a in workloads.W1 if not a.startswith("rounds=")] + [f"rounds={rounds}"]


@pytest.fixture(scope="module")
def w1_run(tmp_path_factory):
    """One real ``python -m sim`` of W1 (2 rounds), in a fresh interpreter."""
    out = tmp_path_factory.mktemp("w1") / "run"
    args = [*w1_args(2), f"hydra.run.dir={out}"]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_w1_imports_no_heavy_optional_module(w1_run):
    _, probe = w1_run
    assert probe["imported"] == []


def test_w1_composes_its_config_once(w1_run):
    out, probe = w1_run
    assert probe["composed"] == 1
    hydra = (out / ".hydra" / "hydra.yaml").read_text()  # Hydra's own record, as its command line writes it
    assert "mode: RUN" in hydra and "- hydra.mode=RUN" in hydra and f"- hydra.run.dir={out}" in hydra
    assert (out / ".hydra" / "overrides.yaml").read_text().split() == [w for a in w1_args(2) for w in ("-", a)]
    assert (out / "sim.log").read_text().count("backend=auto: vectorized: the MLP is a chain of Linear layers") == 1
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


#: W1's first rounds and the default run (digits, 20 clients, MLP, FedAvg, seed 0) as they were before the
#: start-up changes: test accuracy is a count of test rows (W1: 7892; digits: 359, 95, 92, 123 right)
W1_ACCURACY = [0.0870501773948302, 0.09262544348707552, 0.10187531677648251]
W1_TRAIN_LOSS = [1.364210775531674, 1.33286920376122]
DEFAULT_ACCURACY = [0.13370473537604458, 0.2646239554317549, 0.2562674094707521, 0.3426183844011142]
DEFAULT_TRAIN_LOSS = [1.925280953540742, 1.7813241225600585, 1.5356393292909716]


def test_w1_numbers_are_unchanged(w1_run):
    out, _ = w1_run
    rows = pd.read_csv(out / "metrics.csv")
    assert rows["test_accuracy"].tolist() == pytest.approx(W1_ACCURACY, abs=1e-9)
    assert rows["train_loss"].tolist()[1:] == pytest.approx(W1_TRAIN_LOSS, rel=1e-5)
    assert math.isnan(rows["train_loss"][0])


def test_the_default_run_numbers_are_unchanged(make_cfg, tmp_path):
    summary = run_experiment(make_cfg("rounds=3"), tmp_path)
    assert summary["backend"] == "auto: vectorized" and summary["backend_reason"].startswith("vectorized: the MLP")
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert rows["test_accuracy"].tolist() == pytest.approx(DEFAULT_ACCURACY, abs=1e-9)
    assert rows["train_loss"].tolist()[1:] == pytest.approx(DEFAULT_TRAIN_LOSS, rel=1e-5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--multirun", "seed=0,1"],  # a sweep: Hydra's launcher runs it
        ["seed=0,1"],  # a sweep value without --multirun: Hydra's own error
        ["hydra.mode=MULTIRUN", "rounds=2"],
        ["--cfg", "job"],
    ],
)
def test_only_a_plain_run_skips_hydras_own_composition(argv):
    assert preflight(argv) is None


def test_a_plain_run_gets_the_config_hydra_would_run(make_cfg):
    cfg = preflight(["rounds=2", "model=logreg", "hydra.run.dir=somewhere"])
    assert cfg is not None and str(cfg.hydra.mode) == "RunMode.RUN"
    assert list(cfg.hydra.overrides.task) == ["rounds=2", "model=logreg"]
    assert list(cfg.hydra.overrides.hydra) == ["hydra.run.dir=somewhere", "hydra.mode=RUN"]
    job = {k: v for k, v in cfg.items() if k != "hydra"}
    assert {**job, "progress": False} == {**make_cfg("rounds=2", "model=logreg")}  # make_cfg sets progress=false
