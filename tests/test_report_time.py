"""sim.report on simulated time (issue 25): time, rounds and bytes to a target accuracy, the time axis, ``--x``.

Run folders are written by hand with the metrics.csv columns of the shared contract (``time_s`` in every mode),
so every expected number below is computed by hand from the rows.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from sim.report import build_report, main

NAN = math.nan


def write_run(d: Path, mode: str, seed: int, acc: list[float], time_s: list[float] | None, **columns) -> Path:
    """A completed run: rounds 0..n-1, ``acc`` as test_accuracy (NaN: not evaluated), ``time_s`` (None: an old
    run without it), 100 bytes up and 50 down per row unless ``columns`` say otherwise."""
    d.mkdir(parents=True)
    n = len(acc)
    metrics = {"round": list(range(n)), "test_accuracy": acc, "bytes_up": [100] * n, "bytes_down": [50] * n}
    if mode == "federated":
        metrics["num_participants"] = [4] * n
    else:
        metrics["messages_sent"] = [8] * n
    if time_s is not None:
        metrics["time_s"] = time_s
    metrics.update(columns)
    pd.DataFrame(metrics).to_csv(d / "metrics.csv", index=False)
    strategy = {"name": "fedavg" if mode == "federated" else "gossip_avg"}
    config = {"mode": mode, "seed": seed, "strategy": strategy, "dataset": {"name": "digits"}}
    summary = {"status": "completed", "config": config, "loop_s": 1.0, "final": {}, "best": {}}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


# FL, evaluated every other round (NaN rows), non-uniform time_s. Target 0.8:
# seed 0 reaches it exactly at round 4 (t = 9.0 s, 5 rows x 150 B = 750 B), seed 1 at round 2 (t = 7.0 s, 450 B).
FL0 = ([0.1, NAN, 0.5, NAN, 0.8, NAN, 0.9], [0.0, 1.5, 4.0, 4.5, 9.0, 12.0, 20.0])
FL1 = ([0.1, NAN, 0.85, NAN, 0.7, NAN, 0.95], [0.0, 3.0, 7.0, 7.5, 8.0, 30.0, 31.0])
# Gossip: 0.79999 is not 0.8; reaches at row 3 (t = 2.5 s; gossip counts each message once: 4 x 100 B = 400 B).
GOSSIP = ([0.2, 0.79999, NAN, 0.81], [0.0, 0.5, 1.0, 2.5])
SLOW = ([0.1, 0.2, 0.3], [0.0, 10.0, 20.0])  # never reaches 0.8


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("timed")
    write_run(root / "fl" / "0", "federated", 0, *FL0)
    write_run(root / "fl" / "1", "federated", 1, *FL1)
    write_run(root / "gossip" / "0", "gossip", 0, *GOSSIP)
    return root


def _group(report, mode: str) -> pd.Series:
    groups = report.groups
    return groups[groups["setting"].str.contains(f"mode={mode}")].iloc[0]


def _table_row(markdown: str, key: str) -> list[str]:
    """The cells of the table row holding ``key``."""
    row = next(line for line in markdown.splitlines() if line.startswith("|") and key in line)
    return [c.strip() for c in row.strip("|").split("|")]


def test_time_rounds_and_bytes_to_target_by_hand(runs: Path, tmp_path: Path) -> None:
    report = build_report([runs], tmp_path / "out", 0.8, "test_accuracy")
    by_dir = report.runs_df.set_index("run_dir")
    fl0, fl1, g = (by_dir.loc[str(runs / p)] for p in ("fl/0", "fl/1", "gossip/0"))
    assert (fl0["rounds_to_target"], fl0["time_to_target"], fl0["bytes_to_target"]) == (4.0, 9.0, 750.0)
    assert (fl1["rounds_to_target"], fl1["time_to_target"], fl1["bytes_to_target"]) == (2.0, 7.0, 450.0)
    assert (g["rounds_to_target"], g["time_to_target"], g["bytes_to_target"]) == (3.0, 2.5, 400.0)
    fl = _group(report, "federated")
    assert fl["time_to_target_mean"] == 8.0 and fl["time_to_target_std"] == pytest.approx(math.sqrt(2))
    assert fl["bytes_to_target_mean"] == 600.0 and fl["rounds_to_target_mean"] == 3.0 and fl["reached"] == "2/2"
    cells = _table_row(report.markdown, "federated")
    assert cells[5:9] == ["3.0", "8 ± 1.41", "600 B", "2/2"]
    assert "time_s to ≥ 0.8 (mean ± std)" in report.markdown and "bytes to ≥ 0.8 (mean)" in report.markdown
    assert _table_row(report.markdown, "gossip")[5:9] == ["3.0", "2.5 ± —", "400 B", "1/1"]


def test_target_above_every_row_is_not_reached_and_old_runs_say_no_time_s(runs: Path, tmp_path: Path) -> None:
    root = tmp_path / "more"
    write_run(root / "slow", "gossip", 0, *SLOW)
    write_run(root / "old", "federated", 0, FL0[0], None)  # written before time_s existed
    report = build_report([root], tmp_path / "out", 0.8, "test_accuracy")
    assert _table_row(report.markdown, "gossip")[5:9] == ["not reached", "not reached", "not reached", "0/1"]
    old = _table_row(report.markdown, "federated")
    assert old[5:9] == ["4.0", "no time_s", "750 B", "1/1"]  # rounds and bytes still reported
    runs_df = report.runs_df.set_index("run_dir")
    assert math.isnan(runs_df.loc[str(root / "old"), "time_to_target"])
    assert not runs_df.loc[str(root / "old"), "has_time_s"]
    # the old run has no time panel, the timed run has: the time panel keeps only the timed line
    panels = [ax for ax in report.figures["comparison.png"].axes if ax.get_visible()]
    assert panels[-1].get_xlabel() == "simulated time (s)" and "1 of 2" in panels[-1].get_title()
    # a group where only some runs log time_s says how many lack it
    write_run(root / "fl" / "1", "federated", 1, *FL1)
    write_run(root / "fl" / "2", "federated", 2, *FL1)
    mixed = build_report([root / "old", root / "fl"], tmp_path / "out", 0.8, "test_accuracy")
    assert _table_row(mixed.markdown, "fedavg")[6] == "7 ± 0 (1 without time_s)"


def test_x_time_overlays_modes_on_time_s(runs: Path, tmp_path: Path) -> None:
    report = build_report([runs], tmp_path / "out", 0.8, "test_accuracy", x=["time"])
    fig = report.figures["comparison.png"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in panels] == ["simulated time (s)"]
    lines = {ln.get_label(): ln for ln in panels[0].get_lines() if not ln.get_label().startswith("target")}
    assert len(lines) == 2
    gossip = next(v for k, v in lines.items() if "gossip" in k)
    assert list(gossip.get_xdata()) == [0.0, 0.5, 2.5]  # the evaluated rows' time_s (the NaN row left out)
    fl = next(v for k, v in lines.items() if "gossip" not in k)
    # mean of the two seeds, each interpolated on the union of their evaluated times
    assert list(fl.get_xdata()) == [0.0, 4.0, 7.0, 8.0, 9.0, 20.0, 31.0]
    assert fl.get_ydata()[2] == pytest.approx((0.5 + (0.8 - 0.5) * 3 / 5 + 0.85) / 2)
    both = build_report([runs], tmp_path / "out", 0.8, "test_accuracy", x=["bytes,time", "round"])
    labels = [ax.get_xlabel() for ax in both.figures["comparison.png"].axes if ax.get_visible()]
    assert labels == ["round", "bytes sent (cumulative)", "simulated time (s)"]  # the axes' own order


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--target", "1.5"], "--target=1.5 is not allowed: a fraction between 0 and 1"),
        (["--target", "nan"], "--target=nan"),
        (["--target", "inf"], "--target=inf"),
        (["--x", "bogus"], "--x='bogus' is not allowed: x axes among round, bytes, messages, time"),
        (["--x", ","], "--x=','"),
    ],
)
def test_bad_target_and_axis_exit_2_with_one_paragraph(args, fragment, runs, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main([str(runs), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_x_time_without_any_time_s_is_refused(tmp_path: Path, capsys) -> None:
    write_run(tmp_path / "old" / "0", "federated", 0, FL0[0], None)
    assert main([str(tmp_path / "old"), "--out", str(tmp_path / "out"), "--x", "time"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --x='time' is not allowed") and "time_s" in err and "No run has it." in err
    # without --x old runs report, saying they have no time_s, whether or not they reached the target
    write_run(tmp_path / "old_slow" / "0", "gossip", 0, SLOW[0], None)
    report = build_report([tmp_path / "old", tmp_path / "old_slow"], tmp_path / "out", 0.8, "test_accuracy")
    assert _table_row(report.markdown, "fedavg")[5:9] == ["4.0", "no time_s", "750 B", "1/1"]
    assert _table_row(report.markdown, "gossip_avg")[5:9] == ["not reached", "no time_s", "not reached", "0/1"]
    report = build_report([tmp_path / "old"], tmp_path / "out", 0.8, "test_accuracy")
    assert re.search(r"\|\s+no time_s\s+\|", report.markdown)
    assert [ax.get_xlabel() for ax in report.figures["comparison.png"].axes if ax.get_visible()] == [
        "round",
        "bytes sent (cumulative)",
        "messages sent (cumulative)",
    ]


def test_x_values_parse_in_axis_order() -> None:
    from sim.reporting.axes import parse_axes

    assert parse_axes(None) is None and parse_axes([]) is None
    assert parse_axes(["time,", " bytes ", "round,time"]) == ["round", "bytes", "time"]


def test_setting_labels_name_only_the_system_and_schedule_keys_a_mode_reads() -> None:
    from sim.reporting.labels import setting_labels

    def system(**changed) -> dict:
        return {"name": "lognormal", "deadline_s": None, "over_selection": None, "server_bandwidth": None, **changed}

    def fl(schedule: str, algorithm: str, **changed) -> dict:
        gossip = {"schedule": "sync"}
        return {"mode": "federated", "federated": {"schedule": schedule}, "async_fl": {"algorithm": algorithm},
                "gossip": gossip, "system": system(**changed)}  # fmt: skip

    gossip = {**fl("sync", "fedbuff", server_bandwidth=1e5, links={"bandwidth": 1e6}), "mode": "gossip"}
    configs = [
        fl("sync", "fedbuff"),
        fl("sync", "fedbuff", deadline_s=0.5),
        fl("sync", "fedbuff", server_bandwidth=1e5),
        fl("async", "fedbuff"),
        fl("async", "fedasync", deadline_s=0.5),  # asynchronous FL has no rounds to close: deadline_s is not read
        gossip,  # gossip reads neither the FL blocks nor the server's link
    ]
    assert [label for label, _ in setting_labels(configs)] == [
        "federated.schedule=sync, mode=federated, system.deadline_s=null, system.server_bandwidth=null",
        "federated.schedule=sync, mode=federated, system.deadline_s=0.5, system.server_bandwidth=null",
        "federated.schedule=sync, mode=federated, system.deadline_s=null, system.server_bandwidth=100000",
        "async_fl.algorithm=fedbuff, federated.schedule=async, mode=federated, system.server_bandwidth=null",
        "async_fl.algorithm=fedasync, federated.schedule=async, mode=federated, system.server_bandwidth=null",
        "mode=gossip",
    ]


def test_time_axis_label_says_when_some_runs_count_wake_intervals(tmp_path: Path) -> None:
    from sim.reporting.axes import x_axes
    from sim.reporting.runs import load_runs

    write_run(tmp_path / "new", "gossip", 0, *GOSSIP)
    write_run(tmp_path / "old", "gossip", 1, GOSSIP[0], None, time=[0.0, 1.0, 2.0, 3.0])  # async gossip before time_s
    new, _ = load_runs([tmp_path / "new"])
    both, _ = load_runs([tmp_path / "new", tmp_path / "old"])
    old, _ = load_runs([tmp_path / "old"])
    assert x_axes(new, "round")[-1].label == "simulated time (s)"
    assert x_axes(both, "round")[-1].label == "simulated time (s; runs without time_s: gossip.wake_interval units)"
    assert x_axes(old, "round")[-1].label == "simulated time (units of gossip.wake_interval)"
    assert x_axes(old, "round")[-1].move(old[0]).x == "time"
    # asynchronous gossip now logs both: its clock `time` and time_s; the time axis is time_s
    write_run(tmp_path / "both", "gossip", 2, *GOSSIP, time=[0.0, 2.0, 4.0, 6.0])
    (run,), _ = load_runs([tmp_path / "both"])
    assert x_axes([run], "round")[-1].move(run).x == "time_s"
