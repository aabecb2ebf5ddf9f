"""experiments/heterogeneity.py: its smoke run writes a sane report, and its added objectives are right."""

import importlib.util
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    """The script as a module (registered first: its dataclass looks its module up in sys.modules)."""
    name = "experiments_heterogeneity"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "heterogeneity.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("heterogeneity")
    load_script().main(["--smoke", "--out", str(out)])
    return out


@pytest.mark.slow
def test_smoke_writes_report_csvs_and_figure(smoke):
    # Prepare / Execute: the module fixture ran the smoke mode (synthetic, 3 regimes, 5 strategies, 2 seeds)
    runs = pd.read_csv(smoke / "heterogeneity_runs.csv")
    curves = pd.read_csv(smoke / "heterogeneity_curves.csv")
    report = (smoke / "heterogeneity.md").read_text()

    # Assert
    assert (smoke / "heterogeneity_synthetic.png").stat().st_size > 10_000
    assert len(runs) == 3 * 5 * 2
    assert set(runs.strategy) == {"fedavg", "fedprox", "scaffold", "feddyn", "fednova"}
    assert set(runs.regime) == {"equal", "random", "epochs"}
    assert runs.test_accuracy.between(0, 1).all()
    # the L-BFGS optimum lies below every trained model's loss, on both objectives
    assert (runs.train_loss_pooled_excess > 0).all() and (runs.train_loss_clients_excess > 0).all()
    assert {"test_accuracy_mean", "train_loss_pooled_std"} <= set(curves.columns) and (curves["round"] == 0).any()
    assert report.count("| fedavg * |") == 3  # one table per regime, FedAvg (no grid) always chosen
    assert report.count("| fedavg |") == 3  # its summary rows, one per regime
    assert "## Findings" in report and "--smoke" in report


@pytest.mark.slow
def test_fednova_is_fedavg_under_equal_steps_only(smoke):
    # Prepare: FedNova with equal tau_k gives tau_eff * sum p_k (x - y_k) / tau = FedAvg's update
    runs = pd.read_csv(smoke / "heterogeneity_runs.csv").set_index(["regime", "strategy", "seed"]).sort_index()

    # Execute
    gap = {
        regime: (runs.loc[(regime, "fednova")].train_loss_pooled - runs.loc[(regime, "fedavg")].train_loss_pooled).abs()
        for regime in ("equal", "epochs")
    }

    # Assert
    assert (gap["equal"] < 1e-5).all()
    assert (gap["epochs"] > 1e-3).all()  # unequal steps: the normalisation changes the model


def test_objectives_at_the_zero_model_are_log_classes():
    # Prepare: a zero softmax regression predicts uniformly, so every row's loss is ln(10)
    script = load_script()
    cfg = script.compose_config(script.overrides("synthetic", "equal", (), "fedavg", 0, 1))
    exp = script.build_experiment(cfg)

    # Execute
    found = script.training_objectives(exp, torch.zeros_like(exp.initial_params))

    # Assert
    assert found["train_loss_pooled"] == pytest.approx(math.log(10), abs=1e-5)
    assert found["train_loss_clients"] == pytest.approx(math.log(10), abs=1e-5)


def test_client_mean_objective_weights_clients_equally():
    # Prepare: the initial model; hand-compute each client's mean loss from its own rows
    script = load_script()
    exp = script.build_experiment(script.compose_config(script.overrides("synthetic", "equal", (), "fedavg", 0, 1)))
    params = exp.initial_params
    per_client = []
    for k in range(exp.data.num_clients):
        x, y = exp.data.client(k)
        per_client.append(script.per_row_losses(exp.model, exp.layout, params, x, y, torch.arange(len(y))).mean())

    # Execute
    found = script.training_objectives(exp, params)

    # Assert
    assert found["train_loss_clients"] == pytest.approx(float(torch.stack(per_client).mean()), rel=1e-5)
    pooled = script.per_row_losses(exp.model, exp.layout, params, exp.data.x, exp.data.y, torch.arange(len(exp.data.y)))
    assert found["train_loss_pooled"] == pytest.approx(float(pooled.mean()), rel=1e-5)


def test_rerun_keeps_the_hand_written_findings(tmp_path):
    # Prepare
    script = load_script()
    (tmp_path / "heterogeneity.md").write_text("# old\n\n## Findings\n\nFedNova wins.\n\n## Notes\n\nx\n")

    # Execute
    kept = script.kept_findings(tmp_path / "heterogeneity.md")

    # Assert
    assert kept == "FedNova wins.\n"
    assert "Not written yet" in script.kept_findings(tmp_path / "absent.md")


def _report_module():
    load_script()  # puts experiments/ on sys.path
    import heterogeneity_report

    return heterogeneity_report


def test_seed_table_pairs_each_seed_with_fedavg_and_counts_wins():
    # Prepare: three seeds; FedNova's pooled loss minus FedAvg's is -0.1, -0.3, +0.1 (2 wins of 3), its
    # accuracy difference +0.02, -0.04, +0.05 (2 of 3); rows in a shuffled order
    report = _report_module()
    rows = []
    for seed, (fa_loss, fn_loss, fa_acc, fn_acc) in enumerate(
        [(0.5, 0.4, 0.80, 0.82), (0.9, 0.6, 0.90, 0.86), (0.2, 0.3, 0.70, 0.75)]
    ):
        for config, loss, acc in (("fedavg", fa_loss, fa_acc), ("fednova", fn_loss, fn_acc)):
            rows.append(
                {"dataset": "synthetic", "regime": "epochs", "config": config, "seed": seed, "test_accuracy": acc,
                 "test_accuracy_half": acc, "train_loss_pooled": loss, "train_loss_clients": loss}
            )  # fmt: skip
    runs = pd.DataFrame(rows[::-1])

    # Execute
    lines = report.seed_table(runs)

    # Assert: mean -0.1, std 0.2 (sample std of -0.1, -0.3, 0.1); accuracy mean 0.01, std of (.02, -.04, .05)
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[:5] == ["synthetic, epochs", "fednova", "-0.1000 ± 0.2000", "-0.3000 .. +0.1000", "2/3"]
    assert cells[8:11] == ["+0.010 ± 0.046", "-0.040 .. +0.050", "2/3"]


def test_per_run_means_the_last_tenth_and_half_and_measures_the_swing():
    report = _report_module()
    curves = pd.DataFrame(
        {"round": range(1, 21), "test_accuracy": [0.0] * 10 + [0.5] * 8 + [0.6, 0.8],
         "train_loss_pooled": [1.0] * 20, "train_loss_clients": [2.0] * 20}
    ).assign(dataset="d", regime="r", strategy="s", config="s", seed=0)  # fmt: skip
    run = report.per_run(curves, 20).iloc[0]
    assert run.test_accuracy == pytest.approx(0.7)  # rounds 19, 20
    assert run.test_accuracy_half == pytest.approx((0.5 * 8 + 0.6 + 0.8) / 10)  # rounds 11-20
    assert run.test_accuracy_swing == pytest.approx(math.sqrt(0.02))  # sample std of 0.6, 0.8


def test_seed_section_replaces_itself_and_keeps_the_findings(tmp_path):
    report = _report_module()
    md = tmp_path / "heterogeneity.md"
    md.write_text("# t\n\n## Results\n\nr\n\n## Findings\n\nFedNova wins.\n")
    report.replace_section(md, report.SEEDS_TITLE, "first")
    report.replace_section(md, report.SEEDS_TITLE, "second")
    text = md.read_text()
    assert text.count("## Across seeds") == 1 and "second" in text and "first" not in text
    assert text.index("## Results") < text.index("## Across seeds") < text.index("## Findings")
    assert report.kept_section(md, report.SEEDS_TITLE) == "second\n"
    assert script_kept(md) == "FedNova wins.\n"


def script_kept(md):
    return load_script().kept_findings(md)


@pytest.mark.slow
def test_seed_check_smoke_writes_paired_rows_into_the_report(tmp_path):
    # Prepare: an earlier report whose Findings the check must keep
    (tmp_path / "heterogeneity.md").write_text("# old\n\n## Findings\n\nkept\n")
    # Execute: the first group of the check (synthetic, epochs: FedAvg and FedNova), 2 seeds, 4 rounds
    load_script().main(["--seed-check", "--smoke", "--rounds", "4", "--out", str(tmp_path)])
    # Assert
    runs = pd.read_csv(tmp_path / "heterogeneity_seeds.csv")
    assert sorted(zip(runs.config, runs.seed, strict=True)) == [
        ("fedavg", 0),
        ("fedavg", 1),
        ("fednova", 0),
        ("fednova", 1),
    ]
    text = (tmp_path / "heterogeneity.md").read_text()
    assert "| synthetic, epochs | fednova |" in text and text.endswith("## Findings\n\nkept\n")


def test_swing_line_names_each_rule_and_its_worst_seed():
    report = _report_module()
    runs = pd.DataFrame(
        {"dataset": "s", "regime": "e", "config": ["fedavg", "fedavg", "fednova", "fednova"], "seed": [0, 7, 0, 7],
         "test_accuracy_swing": [0.01, 0.1, 0.02, 0.2]}
    )  # fmt: skip
    line = report.swing_line(runs)
    assert "s, e, fedavg: 0.055 (seed 7: 0.100)" in line and "s, e, fednova: 0.110 (seed 7: 0.200)" in line
