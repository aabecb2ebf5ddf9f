"""sim.report on scripted run folders: exact numbers, labels, files, and the error cases."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from forked_cli import run_module

from sim.report import main

NAN = math.nan
# test_accuracy per round 0..5 (NaN: not evaluated that round). Target 0.9.
FEDAVG = {  # final 0.88/0.90/0.95, best 0.88/0.91/0.95, reaches 0.9 at -/4/2
    0: [0.10, 0.50, 0.70, NAN, 0.86, 0.88],
    1: [0.10, 0.55, 0.80, NAN, 0.91, 0.90],
    2: [0.10, 0.60, 0.92, NAN, 0.93, 0.95],
}
FEDADAM = {  # final 0.96/0.93/0.94, best 0.96/0.97/0.94, reaches 0.9 at 1/2/3
    0: [0.10, 0.90, 0.93, NAN, 0.94, 0.96],
    1: [0.10, 0.85, 0.95, NAN, 0.97, 0.93],
    2: [0.10, 0.80, 0.89, 0.91, 0.92, 0.94],
}
SLOW = [0.10, 0.30, 0.50, NAN, 0.60, 0.70]  # never reaches 0.9


def config(strategy: dict, seed: int, alpha: float = 1.0) -> dict:
    return {
        "mode": "federated",
        "seed": seed,
        "rounds": 5,
        "num_clients": 20,
        "strategy": strategy,
        "dataset": {"name": "digits", "val_fraction": 0.1},
        "partition": {"name": "dirichlet", "alpha": alpha, "seed": seed},  # derived seed: ignored
        "model": {"name": "mlp", "hidden": [64, 32]},
        "train": {"lr": 0.05, "local_epochs": 1},
        "hydra": {"run": {"dir": f"outputs/{seed}-{strategy['name']}"}},  # differs: ignored
        "progress": seed % 2 == 0,
        "save_model": False,
    }


FEDAVG_CFG = {"name": "fedavg", "_target_": "strategies.fedavg.FedAvg", "server_lr": 1.0}


def fedadam_cfg(lr: float) -> dict:
    return {"name": "fedadam", "_target_": "strategies.fedopt.FedAdam", "server_lr": lr, "beta1": 0.9}


def write_run(
    d: Path,
    cfg: dict,
    acc: list[float],
    status: str = "completed",
    wall: float = 10.0,
    x: str = "round",
    setup: float = 5.0,
    timing: str = "loop_s",
) -> Path:
    """A run whose rounds took ``wall`` seconds and its whole job ``wall + setup``.

    ``timing``: what the run recorded of its loop time: ``loop_s`` (summary.json and metrics.csv, as
    sim.run writes), ``metrics`` (only metrics.csv's wall_s column) or ``none``.
    """
    d.mkdir(parents=True)
    n = len(acc)
    metrics = pd.DataFrame(
        {
            x: range(n) if x == "round" else [0.5 * i for i in range(n)],
            "test_accuracy": acc,
            "test_loss": [NAN if math.isnan(a) else 1 - a for a in acc],
            "train_loss": [1.0] * n,
            "num_participants": [5] * n,
            "bytes_up": [100] * n,
            "bytes_down": [100] * n,
            "wall_s": [wall * i / (n - 1) for i in range(n)],
        }
    )
    if timing == "none":
        metrics = metrics.drop(columns="wall_s")
    metrics.to_csv(d / "metrics.csv", index=False)
    last = max(i for i, a in enumerate(acc) if not math.isnan(a))
    summary = {
        "status": status,
        "final": {"round": n - 1, "test_accuracy": acc[last], "test_loss": 1 - acc[last]},
        "best": {"test_accuracy": max(a for a in acc if not math.isnan(a)), "round": 0},
        "wall_s": wall + setup,
        "config": cfg,
        "versions": {"python": "3.11"},
    }
    if timing == "loop_s":
        summary["loop_s"] = wall
    (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """Hydra-like multirun: fedavg and fedadam × seeds 0..2, plus one failed job (6/)."""
    root = tmp_path / "multirun" / "2024-01-01" / "12-00-00"
    jobs = [(FEDAVG_CFG, s, FEDAVG[s]) for s in range(3)] + [(fedadam_cfg(0.1), s, FEDADAM[s]) for s in range(3)]
    for i, (strategy, seed, acc) in enumerate(jobs):
        # job 0 of a sweep also pays the process warm-up (imports, first data load)
        write_run(root / str(i), config(strategy, seed), acc, wall=10.0 + i, setup=30.0 if i == 0 else 1.0)
    write_run(root / "6", config(FEDAVG_CFG, 3), SLOW, status="failed")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


@pytest.fixture
def single(tmp_path: Path) -> Path:
    """A single run elsewhere: fedadam with another server_lr, on another partition.alpha."""
    cfg = config(fedadam_cfg(0.01), 0, alpha=0.1)
    return write_run(tmp_path / "outputs" / "one", cfg, SLOW, wall=7.0)


def test_multirun_groups_numbers_and_files(multirun: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rep"
    assert main([str(multirun), "--out", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert "skipped 1 run" in err and "status 'failed'" in err and str(multirun / "6") in err

    groups = pd.read_parquet(out / "report.parquet")
    assert list(groups["strategy"]) == ["fedadam", "fedavg"]  # no option differs within fedadam
    assert list(groups["setting"]) == ["default", "default"]  # seeds, hydra, progress ignored
    assert list(groups["runs"]) == [3, 3]
    g = groups.set_index("strategy")
    finals = {"fedavg": [0.88, 0.90, 0.95], "fedadam": [0.96, 0.93, 0.94]}
    bests = {"fedavg": [0.88, 0.91, 0.95], "fedadam": [0.96, 0.97, 0.94]}
    for s, final in finals.items():
        assert g.loc[s, "final_acc_mean"] == pytest.approx(statistics.mean(final))
        assert g.loc[s, "final_acc_std"] == pytest.approx(statistics.stdev(final))
        assert g.loc[s, "best_acc_mean"] == pytest.approx(statistics.mean(bests[s]))
        assert g.loc[s, "best_acc_std"] == pytest.approx(statistics.stdev(bests[s]))
    assert g.loc["fedavg", "final_acc_std"] == pytest.approx(math.sqrt(0.0013))
    assert g.loc["fedavg", "rounds_to_target_mean"] == 3.0  # (4 + 2) / 2, seed 0 never reaches
    assert g.loc["fedadam", "rounds_to_target_mean"] == 2.0  # (1 + 2 + 3) / 3
    assert list(g["reached"]) == ["3/3", "2/3"]
    assert g.loc["fedavg", "loop_s_mean"] == pytest.approx(11.0)  # loop time: job 0's warm-up not charged
    assert g.loc["fedadam", "loop_s_mean"] == pytest.approx(14.0)
    assert set(g["loop_s_from"]) == {"summary loop_s"}

    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 6
    assert list(runs["seed"]) == [0, 1, 2, 0, 1, 2]
    fedavg = runs[runs["strategy"] == "fedavg"]
    assert list(fedavg["final_acc"]) == pytest.approx([0.88, 0.90, 0.95])
    assert fedavg["rounds_to_target"].isna().tolist() == [True, False, False]
    assert list(fedavg["rounds_to_target"].dropna()) == [4.0, 2.0]
    assert list(runs[runs["strategy"] == "fedadam"]["rounds_to_target"]) == [1.0, 2.0, 3.0]
    assert set(runs["run_dir"]) == {str(multirun / str(i)) for i in range(6)}

    md = (out / "report.md").read_text()
    assert md in printed and "†" not in md
    assert "| fedavg " in md and "0.9100 ± 0.0361" in md and "2/3" in md
    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.png",
        "report.md",
        "report.parquet",
        "runs.parquet",
    ]  # no temporary files left behind


def test_labels_when_settings_and_options_differ(multirun: Path, single: Path, tmp_path) -> None:
    out = tmp_path / "rep2"
    assert main([str(multirun), str(single.parent), "--out", str(out)]) == 0
    groups = pd.read_parquet(out / "report.parquet")
    assert list(zip(groups["strategy"], groups["setting"], strict=True)) == [
        ("fedadam(server_lr=0.01)", "partition.alpha=0.1"),
        ("fedadam(server_lr=0.1)", "partition.alpha=1"),
        ("fedavg", "partition.alpha=1"),
    ]
    one = groups.iloc[0]
    assert one["runs"] == 1 and one["reached"] == "0/1"
    assert one["final_acc_mean"] == pytest.approx(0.70)
    assert one["best_acc_mean"] == pytest.approx(0.70)
    assert math.isnan(one["final_acc_std"]) and math.isnan(one["rounds_to_target_mean"])
    md = (out / "report.md").read_text()
    assert "0.7000 ± —" in md and "partition.alpha=0.1" in md
    assert len(pd.read_parquet(out / "runs.parquet")) == 7


def test_runs_without_loop_s_fall_back_to_the_loop_clock_then_to_labelled_wall_time(tmp_path: Path) -> None:
    root = tmp_path / "old"
    write_run(root / "0", config(FEDAVG_CFG, 0), FEDAVG[0], wall=8.0, timing="metrics")
    write_run(root / "1", config(FEDAVG_CFG, 1), FEDAVG[1], wall=10.0, timing="metrics")
    write_run(root / "2", config(fedadam_cfg(0.1), 0), FEDADAM[0], wall=6.0, setup=4.0, timing="none")
    out = tmp_path / "rep"
    assert main([str(root), "--out", str(out)]) == 0
    groups = pd.read_parquet(out / "report.parquet").set_index("strategy")
    assert groups.loc["fedavg", "loop_s_mean"] == pytest.approx(9.0)  # metrics.csv's wall_s: the loop clock
    assert groups.loc["fedavg", "loop_s_from"] == "metrics.csv wall_s"
    assert groups.loc["fedadam", "loop_s_mean"] == pytest.approx(10.0)  # whole job: 6 s loop + 4 s setup
    assert groups.loc["fedadam", "loop_s_from"] == "summary wall_s"
    md = (out / "report.md").read_text()
    assert "10.0 †" in md and "9.0 †" not in md and "† whole-job wall time" in md and "loop s (mean)" in md


def test_target_metric_default_out_and_time_axis(multirun: Path, tmp_path: Path) -> None:
    assert main([str(multirun), "--target", "0.95"]) == 0  # default OUT is DIR/report
    groups = pd.read_parquet(multirun / "report" / "report.parquet").set_index("strategy")
    assert list(groups["reached"]) == ["2/3", "1/3"]
    assert groups.loc["fedadam", "rounds_to_target_mean"] == 3.5  # seeds 0, 1 at rounds 5, 2
    assert groups.loc["fedavg", "rounds_to_target_mean"] == 5.0  # only seed 2, at round 5

    gossip = write_run(tmp_path / "gossip" / "0", config({"name": "gossip_avg"}, 0), [0.2, 0.6, 0.91, 0.93], x="time")
    out = tmp_path / "g"
    assert main([str(gossip), "--out", str(out), "--target", "0.92"]) == 0
    runs = pd.read_parquet(out / "runs.parquet")
    assert runs.loc[0, "rounds_to_target"] == 1.5  # x axis is `time` (0, 0.5, 1.0, 1.5)
    assert "time to ≥ 0.92" in (out / "report.md").read_text()
    assert main([str(gossip), "--out", str(out), "--metric", "test_loss"]) == 0
    runs = pd.read_parquet(out / "runs.parquet")
    assert runs.loc[0, "final_acc"] == pytest.approx(0.07)  # the last test_loss, 1 - 0.93


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["{missing}"], "does not exist"),
        (["{failed}"], "completed run"),
        (["{multi}", "--target", "1.5"], "--target=1.5"),
        (["{multi}", "--target", "-0.1"], "--target=-0.1"),
        (["{multi}", "--target", "nan"], "--target=nan"),
        (["{multi}", "--metric", "nope"], "--metric='nope'"),
    ],
)
def test_errors_exit_2_and_write_nothing(args, fragment, multirun, tmp_path, capsys) -> None:
    failed = tmp_path / "onlyfailed"
    write_run(failed / "0", config(FEDAVG_CFG, 0), SLOW, status="failed")
    paths = {"missing": tmp_path / "nowhere", "failed": failed, "multi": multirun}
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err
    assert not out.exists()
    assert main(argv) == 2  # default OUT (DIR/report) is not created either
    assert not (multirun / "report").exists() and not (failed / "report").exists()


def test_module_entry_point(multirun: Path, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    res = run_module("sim.report", [str(tmp_path / "nowhere")], root, timeout=60)  # a real, forked `python -m`
    assert res.returncode == 2 and res.stderr.startswith("error: DIR=") and res.stdout == ""


def test_option_only_keys_are_not_repeated_in_setting_labels():
    from sim.reporting.labels import setting_labels

    configs = [
        {"participation": {"name": "bernoulli", "mean": 0.1}},
        {"participation": {"name": "markov", "q": 0.05, "mean": 0.1}},
        {"participation": {"name": "markov", "q": 0.2, "mean": 0.1}},
    ]
    labels = [label for label, _ in setting_labels(configs[:2])]
    assert labels == ["participation.name=bernoulli", "participation.name=markov"]
    # q varies within markov, so it must stay in the labels
    labels = [label for label, _ in setting_labels(configs)]
    assert labels[1:] == [
        "participation.name=markov, participation.q=0.05",
        "participation.name=markov, participation.q=0.2",
    ]


def test_keys_of_the_other_mode_are_not_compared_or_listed():
    from sim.reporting.labels import setting_labels

    gossip_block = {"schedule": "sync", "clock": "exponential", "drop_prob": 0.0}
    configs = [
        {
            "mode": "federated",
            "participation": {"name": "uniform"},
            "topology": {"name": "star"},
            "gossip": gossip_block,
        },
        {"mode": "gossip", "participation": {"name": "uniform"}, "topology": {"name": "ring"}, "gossip": gossip_block},
        {
            "mode": "gossip",
            "participation": {"name": "bernoulli"},  # gossip ignores participation: not a different setting
            "topology": {"name": "ring"},
            "gossip": {**gossip_block, "drop_prob": 0.1, "clock": "periodic"},  # clock: async only
        },
        {"mode": "federated", "participation": {"name": "bernoulli"}, "gossip": {**gossip_block, "drop_prob": 0.5}},
    ]
    assert [label for label, _ in setting_labels(configs)] == [
        "mode=federated, participation.name=uniform",
        "gossip.drop_prob=0, mode=gossip",
        "gossip.drop_prob=0.1, mode=gossip",
        "mode=federated, participation.name=bernoulli",
    ]
    # asynchronous runs read the clock; an FL run never lists it
    asynchronous = [
        {**c, "gossip": {**c["gossip"], "schedule": "async"}} if c["mode"] == "gossip" else c for c in configs
    ]
    labels = [label for label, _ in setting_labels(asynchronous)]
    assert labels[2] == "gossip.clock=periodic, gossip.drop_prob=0.1, mode=gossip"
    assert "clock" not in labels[0] and "clock" not in labels[3]


def test_two_different_runs_never_share_a_label():
    from sim.reporting.labels import setting_labels, strategy_labels

    # b lacks a key a has (another version's config): compared among the runs that have it, model.dropout
    # takes one value, yet a and b differ, so it must be named
    configs = [
        {"model": {"name": "mlp", "dropout": 0.5}},
        {"model": {"name": "mlp"}},
        {"model": {"name": "mlp", "dropout": 0.5}},
    ]
    assert [label for label, _ in setting_labels(configs)] == [
        "model.dropout=0.5",
        "model.dropout=unset",
        "model.dropout=0.5",
    ]
    strategies = [{"strategy": {"name": "krum", "f": 1}}, {"strategy": {"name": "krum"}}]
    assert [label for label, _ in strategy_labels(strategies)] == ["krum(f=1)", "krum(f=unset)"]


def test_node_spread_tick_labels_tell_runs_apart(tmp_path: Path) -> None:
    from sim.reporting.nodes import tick_labels
    from sim.reporting.runs import Run

    empty = pd.DataFrame()
    runs = [Run(tmp_path / name, {"seed": seed}, {}, empty, "round") for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    assert tick_labels(runs, ["x", "x", "x"]) == ["x, seed 0 (a)", "x, seed 0 (b)", "x, seed 1"]


def test_optuna_sweep_counted_against_its_trials(multirun: Path) -> None:
    from sim.reporting.sweep_jobs import check_sweep

    target = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    (multirun / "multirun.yaml").write_text(f"hydra:\n  sweeper:\n    _target_: {target}\n    n_trials: 9\n")
    found = check_sweep(multirun)
    assert found is not None and (found.expected, found.found, found.missing) == (9, 7, [])  # 6 completed + 1 failed
    assert found.message().endswith("asked for 9 job(s) in its multirun.yaml but holds 7.")
    (multirun / "multirun.yaml").write_text(f"hydra:\n  sweeper:\n    _target_: {target}\n    n_trials: 7\n")
    assert check_sweep(multirun) is None


def test_a_key_that_follows_its_group_option_is_not_repeated():
    from sim.reporting.labels import setting_labels

    # each topology has its own mixing: naming mixing would only repeat topology.name
    ring, torus = {"name": "ring", "mixing": "uniform"}, {"name": "torus", "mixing": "metropolis_hastings"}
    configs = [{"mode": "gossip", "topology": ring}, {"mode": "gossip", "topology": torus}]
    assert [label for label, _ in setting_labels(configs)] == ["topology.name=ring", "topology.name=torus"]
    # mixing varies within ring: then it must be named
    configs.append({"mode": "gossip", "topology": {**ring, "mixing": "max_degree"}})
    assert [label for label, _ in setting_labels(configs)] == [
        "topology.mixing=uniform, topology.name=ring",
        "topology.mixing=metropolis_hastings, topology.name=torus",
        "topology.mixing=max_degree, topology.name=ring",
    ]


def _scripted_sweep(root: Path, task: list[str], jobs: dict[str, list[str]]) -> Path:
    """A basic-sweeper multirun.yaml with ``task`` overrides and job folders with those recorded overrides."""
    target = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    hydra = {"sweep": {"subdir": "${hydra.job.num}"}, "sweeper": {"_target_": target}, "overrides": {"task": task}}
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(json.dumps({"hydra": hydra}))  # JSON is YAML
    for name, overrides in jobs.items():
        write_run(root / name / "run", config(FEDAVG_CFG, 0), FEDAVG[0])  # nested: found recursively
        (root / name / "run" / ".hydra").mkdir()
        (root / name / "run" / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
    return root


def test_missing_jobs_ignore_resume_and_name_none_when_overrides_are_spelled_otherwise(tmp_path: Path) -> None:
    from sim.reporting.sweep_jobs import check_sweep

    # a sweep rerun with resume=true: its jobs are the same jobs, with or without that override
    jobs = {"0": ["seed=0"], "1": ["seed=1", "resume=true"]}
    found = check_sweep(_scripted_sweep(tmp_path / "a", ["seed=0,1,2", "resume=true"], jobs))
    assert found is not None and found.missing == ["seed=2"]
    sweep = _scripted_sweep(tmp_path / "b", ["seed=0,1,2", "rounds=5"], {"0": ["seed=1", "rounds=5"]})
    found = check_sweep(sweep)
    assert found is not None and found.missing == ["seed=0", "seed=2"]  # only the swept key is named
    # a recorded job that matches no expected one (written otherwise): the count is known, which jobs are not
    sweep = _scripted_sweep(tmp_path / "c", ["seed=0,1,2"], {"0": ["seed=0"], "1": ["+seed=1"]})
    found = check_sweep(sweep)
    assert found is not None and (found.expected, found.found, found.missing) == (3, 2, [])


def test_runs_logging_only_time_get_no_second_time_axis(tmp_path: Path) -> None:
    from sim.reporting.axes import simulated_time, x_axes
    from sim.reporting.runs import load_runs

    write_run(tmp_path / "g" / "0", config({"name": "gossip_avg"}, 0), [0.2, 0.6, 0.91, 0.93], x="time")
    runs, _ = load_runs([tmp_path / "g"])
    assert runs[0].x == "time" and simulated_time(runs[0]) is None  # time is already its x axis
    assert [a.name for a in x_axes(runs, "time")] == ["round", "bytes", "messages"]
