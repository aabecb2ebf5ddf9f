"""sim.report on runs written by ``python -m sim``: FL against gossip and a rule against its pre-aggregated
variant on shared axes, labels that name only what differs, one colour per line, ``--plot`` on runs of
which only some have the column, and sweeps that hold fewer jobs than they asked for.

Two tiny sweeps (digits, 6 clients, 2 rounds) are run once for the module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from forked_cli import run_module
from matplotlib.colors import to_hex

from sim.report import build_report, main

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["rounds=2", "num_clients=6", "progress=false", "checkpoint.every=null"]
FL_LABELS = {
    "dp.name=central_fixed, mode=federated, preagg.name=nnm",
    "dp.name=central_fixed, mode=federated, preagg.name=none",
    "dp.name=none, mode=federated, preagg.name=nnm",
    "dp.name=none, mode=federated, preagg.name=none",
}
GOSSIP_LABELS = {
    "gossip_avg, gossip.schedule=async, mode=gossip, preagg.name=none",
    "gossip_avg, gossip.schedule=sync, mode=gossip, preagg.name=none",
}


def _sweep(folder: Path, *overrides: str) -> Path:
    """A real ``python -m sim --multirun`` process, forked from a server that imported torch once."""
    res = run_module("sim", ["--multirun", f"hydra.sweep.dir={folder}", *COMMON, *overrides], ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    """fl: fedavg x preagg none/nnm x dp none/central_fixed (jobs 0-3); gossip: ring, sync and async (jobs 0-1)."""
    root = tmp_path_factory.mktemp("sweeps")
    fl = _sweep(root / "fl", "participation.clients_per_round=6", "preagg=none,nnm", "dp=none,central_fixed")
    gossip = _sweep(root / "gossip", "mode=gossip", "topology=ring", "gossip.schedule=sync,async")
    return {"fl": fl, "gossip": gossip}


def _report(tmp_path: Path, dirs: list[Path], plots: list[str] | None = None):
    return build_report(dirs, tmp_path / "out", 0.9, "test_accuracy", plots)


def _panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def _drawn(ax) -> dict[str, object]:
    """The panel's data lines by label (the target line aside)."""
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("target")}


def _metrics(job: Path) -> pd.DataFrame:
    return pd.read_csv(job / "metrics.csv")


def test_fl_and_gossip_share_every_axis_with_one_label_and_colour_per_line(sweeps, tmp_path) -> None:
    report = _report(tmp_path, [sweeps["fl"], sweeps["gossip"]], plots=["dp_epsilon"])
    labels = [line.label for line in report.lines]
    assert len(labels) == 6 and set(labels) == {f"fedavg, {x}" for x in FL_LABELS} | GOSSIP_LABELS
    # keys of the other mode are not listed: FL rows name no gossip/topology key, gossip rows no participation/dp
    settings = dict(zip(report.runs_df["run_dir"], report.runs_df["setting"], strict=True))
    for job in range(4):
        assert "gossip." not in settings[str(sweeps["fl"] / str(job))]
        assert "topology" not in settings[str(sweeps["fl"] / str(job))]
    for job in range(2):
        assert "participation" not in settings[str(sweeps["gossip"] / str(job))]
        assert "dp." not in settings[str(sweeps["gossip"] / str(job))]

    panels = _panels(report.figures["comparison.png"])
    assert [ax.get_xlabel() for ax in panels] == [
        "round",
        "bytes sent (cumulative)",
        "messages sent (cumulative)",
        "simulated time (s)",
    ]
    assert len({ax.get_ylim() for ax in panels}) == 1  # one y scale for every panel
    colour = {line.label: to_hex(line.color) for line in report.lines}
    assert len(set(colour.values())) == 6
    for ax in panels:  # every mode logs time_s
        drawn = _drawn(ax)
        assert set(drawn) == set(labels)
        assert {k: to_hex(v.get_color()) for k, v in drawn.items()} == colour
    assert not panels[3].get_title()  # no line lacks simulated time
    # round ticks are whole numbers (2 rounds: no 0.5)
    ticks = [t for t in panels[0].get_xticks() if panels[0].get_xlim()[0] <= t <= panels[0].get_xlim()[1]]
    assert ticks == [0, 1, 2]

    # the bytes and messages axes are the running totals of what each run's metrics.csv counts
    fl_none = _metrics(sweeps["fl"] / "0")
    line = _drawn(panels[1])["fedavg, dp.name=none, mode=federated, preagg.name=none"]
    assert list(line.get_xdata()) == list((fl_none["bytes_up"] + fl_none["bytes_down"]).cumsum())
    assert np.allclose(line.get_ydata(), fl_none["test_accuracy"])
    sync = _metrics(sweeps["gossip"] / "0")
    sync_label = next(g for g in GOSSIP_LABELS if "schedule=sync" in g)
    line = _drawn(panels[2])[sync_label]
    assert list(line.get_xdata()) == list(sync["messages_sent"].cumsum())
    assert list(line.get_xdata())[1] == 12  # a ring of 6 nodes: 2 messages per node and round
    # system=none: an FL and a sync gossip round last 1.0 simulated second, so time_s is the round
    for job, label in ((fl_none, "fedavg, dp.name=none, mode=federated, preagg.name=none"), (sync, sync_label)):
        line = _drawn(panels[3])[label]
        assert list(line.get_xdata()) == list(job["time_s"]) == [0.0, 1.0, 2.0]

    # --plot of a column only the DP runs have: drawn for them, the others named in a warning
    plot = _panels(report.figures["plot_dp_epsilon.png"])
    assert len(plot) == 4  # the DP runs log time_s too
    eps = _drawn(plot[0])
    assert set(eps) == {f"fedavg, {x}" for x in FL_LABELS if "central_fixed" in x}
    assert {k: to_hex(v.get_color()) for k, v in eps.items()} == {k: colour[k] for k in eps}
    assert len(report.warnings) == 1 and report.warnings[0].startswith("--plot dp_epsilon: 4 of 6 run(s)")
    legend = [t.get_text() for t in report.figures["plot_dp_epsilon.png"].legends[0].get_texts()]
    assert sorted(legend) == sorted(eps)  # the legend lists only the lines drawn

    # node spread: one bar per gossip run, in its line's colour, labelled by line and seed
    nodes = report.figures["node_accuracy.png"].axes[0]
    ticks = [t.get_text().replace("\n", " ") for t in nodes.get_xticklabels()]
    assert ticks == [
        "gossip_avg gossip.schedule=async mode=gossip preagg.name=none seed 0",
        "gossip_avg gossip.schedule=sync mode=gossip preagg.name=none seed 0",
    ]
    dots = nodes.get_lines()
    assert [to_hex(d.get_color()) for d in dots] == [colour[g] for g in sorted(GOSSIP_LABELS)]
    assert nodes.get_title().count("\n") == 1


def test_a_rule_and_its_preaggregated_variant_are_labelled_by_the_preaggregator_only(sweeps, tmp_path) -> None:
    none, nnm = sweeps["fl"] / "0", sweeps["fl"] / "2"  # dp=none, preagg none and nnm
    report = _report(tmp_path, [none, nnm])
    assert [line.label for line in report.lines] == ["preagg.name=nnm", "preagg.name=none"]
    fig = report.figures["comparison.png"]
    assert fig.get_suptitle().startswith("fedavg: test_accuracy")  # what all lines share goes in the title
    panels = _panels(fig)
    assert len(panels) == 4  # round, bytes, messages and simulated time (FL logs time_s)
    for name, job in (("preagg.name=none", none), ("preagg.name=nnm", nnm)):
        line = _drawn(panels[0])[name]
        assert list(line.get_xdata()) == [0, 1, 2]
        assert np.allclose(line.get_ydata(), _metrics(job)["test_accuracy"])
    assert list(report.groups["setting"]) == ["preagg.name=nnm", "preagg.name=none"]


def test_plot_of_a_column_no_run_has_blames_plot_not_metric(sweeps, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main([str(sweeps["gossip"]), "--out", str(out), "--plot", "dp_epsilon"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --plot='dp_epsilon'") and "--metric" not in err and "consensus_distance" in err
    assert not out.exists()
    assert main([str(sweeps["fl"]), str(sweeps["gossip"]), "--out", str(out), "--plot", "dp_epsilon"]) == 0
    err = capsys.readouterr().err
    assert "warning: --plot dp_epsilon: 4 of 6 run(s)" in err and "--metric" not in err
    assert (out / "plot_dp_epsilon.png").read_bytes().startswith(b"\x89PNG")


def test_a_sweep_missing_jobs_is_named_on_stderr_and_in_the_table(sweeps, tmp_path, capsys) -> None:
    # Prepare: the gossip sweep as an interrupted run leaves it: job 1 (async) never started
    partial = tmp_path / "partial"
    shutil.copytree(sweeps["gossip"], partial)
    shutil.rmtree(partial / "1")
    out = tmp_path / "out"
    # Execute
    code = main([str(partial), "--out", str(out)])
    printed, err = capsys.readouterr()
    # Assert
    assert code == 0
    warning = f"sweep {partial.resolve()} asked for 2 job(s) in its multirun.yaml but holds 1; missing: "
    assert f"warning: {warning}gossip.schedule=async." in err
    assert f"**Warning: {warning}gossip.schedule=async.**" in (out / "report.md").read_text()
    assert "**Warning" in printed
    # complete sweeps: no warning
    assert main([str(sweeps["fl"]), str(sweeps["gossip"]), "--out", str(tmp_path / "out2")]) == 0
    assert "asked for" not in capsys.readouterr().err


def test_missing_jobs_without_recorded_overrides_and_failed_jobs(sweeps, tmp_path) -> None:
    from sim.reporting.sweep_jobs import missing_jobs

    # jobs without .hydra/overrides.yaml are recognised by their number; a failed job is present (it is skipped)
    partial = tmp_path / "fl"
    shutil.copytree(sweeps["fl"], partial)
    for job in partial.iterdir():
        shutil.rmtree(job / ".hydra", ignore_errors=True)
    shutil.rmtree(partial / "1")
    summary = partial / "3" / "summary.json"
    summary.write_text(summary.read_text().replace('"status": "completed"', '"status": "failed"'))
    (found,) = missing_jobs([tmp_path])
    assert (found.expected, found.found, found.missing) == (4, 3, ["dp=central_fixed preagg=none"])
