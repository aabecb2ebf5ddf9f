"""The per-run and per-group tables, and their markdown rendering."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from sim.reporting.labels import setting_labels, strategy_labels
from sim.reporting.runs import Run, curve
from sim.reporting.to_target import to_target

RUN_COLUMNS = [
    "strategy",
    "setting",
    "seed",
    "final_acc",
    "best_acc",
    "rounds_to_target",
    "time_to_target",
    "bytes_to_target",
    "has_time_s",
    "loop_s",
    "loop_s_from",
    "run_dir",
    "dp_epsilon",
]
GROUP_COLUMNS = [
    "strategy",
    "setting",
    "runs",
    "final_acc_mean",
    "final_acc_std",
    "best_acc_mean",
    "best_acc_std",
    "rounds_to_target_mean",
    "time_to_target_mean",
    "time_to_target_std",
    "bytes_to_target_mean",
    "time_s_runs",
    "reached",
    "loop_s_mean",
    "loop_s_from",
    "dp_epsilon",
]
# Where a run's time comes from, best first. summary.json's loop_s and metrics.csv's wall_s column are
# the same clock (started when the rounds start); summary.json's wall_s also counts data loading, model
# and backend setup, and in a sweep the process warm-up that only its first job pays.
LOOP_SOURCES = ("summary loop_s", "metrics.csv wall_s")
WHOLE_JOB = "summary wall_s"


def _float(v: Any) -> float:
    """Any summary or CSV value as a float; NaN for what is no number (None, text)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def runs_table(runs: list[Run], metric: str, target: float) -> pd.DataFrame:
    """One row per run, sorted by setting, strategy and seed (values, not text)."""
    configs = [r.config for r in runs]
    settings, strategies = setting_labels(configs), strategy_labels(configs)
    rows, keys = [], []
    for run, (setting, skey), (strategy, tkey) in zip(runs, settings, strategies, strict=True):
        c = curve(run, metric)
        hit = to_target(run, metric, target)
        seconds, source = loop_seconds(run)
        seed = run.config.get("seed")
        rows.append(
            {
                "strategy": strategy,
                "setting": setting,
                "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else pd.NA,
                "final_acc": float(c["y"].iloc[-1]) if len(c) else math.nan,
                "best_acc": float(c["y"].max()) if len(c) else math.nan,
                "rounds_to_target": hit.rounds,
                "time_to_target": hit.time_s,  # simulated seconds (time_s) at the first reaching row
                "bytes_to_target": hit.bytes,
                "has_time_s": hit.has_time,
                "loop_s": seconds,
                "loop_s_from": source,
                "run_dir": str(run.path),
                "dp_epsilon": _float((run.summary.get("final") or {}).get("dp_epsilon")),  # NaN without DP
            }
        )
        keys.append((skey, tkey, seed if isinstance(seed, int) else math.inf, str(run.path)))
    order = sorted(range(len(rows)), key=lambda i: keys[i])
    df = pd.DataFrame([rows[i] for i in order], columns=RUN_COLUMNS)
    df["seed"] = df["seed"].astype("Int64")
    return df


def loop_seconds(run: Run) -> tuple[float, str]:
    """(seconds the rounds took, where that figure comes from); NaN when the run recorded no time."""
    candidates = (
        run.summary.get("loop_s"),
        pd.to_numeric(run.metrics["wall_s"], errors="coerce").max() if "wall_s" in run.metrics.columns else None,
        run.summary.get("wall_s"),
    )
    for value, source in zip(candidates, (*LOOP_SOURCES, WHOLE_JOB), strict=True):
        if not math.isnan(seconds := _float(value)):
            return seconds, source
    return math.nan, ""


def group_table(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof=1) over the runs of each (strategy, setting), in the runs' order."""
    rows = []
    for (strategy, setting), g in runs_df.groupby(["strategy", "setting"], sort=False):
        hit = g["rounds_to_target"].dropna()
        timed = g["time_to_target"].dropna()  # NaN for runs without time_s
        rows.append(
            {
                "strategy": strategy,
                "setting": setting,
                "runs": len(g),
                "final_acc_mean": g["final_acc"].mean(),
                "final_acc_std": g["final_acc"].std(ddof=1),
                "best_acc_mean": g["best_acc"].mean(),
                "best_acc_std": g["best_acc"].std(ddof=1),
                "rounds_to_target_mean": hit.mean() if len(hit) else math.nan,
                "time_to_target_mean": timed.mean() if len(timed) else math.nan,
                "time_to_target_std": timed.std(ddof=1) if len(timed) else math.nan,
                "bytes_to_target_mean": g["bytes_to_target"].dropna().mean() if len(hit) else math.nan,
                "time_s_runs": int(g["has_time_s"].sum()),
                "reached": f"{len(hit)}/{len(g)}",
                "loop_s_mean": g["loop_s"].mean(),
                "loop_s_from": WHOLE_JOB if (g["loop_s_from"] == WHOLE_JOB).any() else g["loop_s_from"].iloc[0],
                "dp_epsilon": g["dp_epsilon"].max(),
            }
        )
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def _num(v: float, digits: int) -> str:
    return "—" if v is None or pd.isna(v) else f"{v:.{digits}f}"


def _pm(mean: float, std: float) -> str:
    return f"{_num(mean, 4)} ± {_num(std, 4)}"


def _eng(v: float) -> str:
    """Bytes in engineering notation: 950 B, 12.3 kB, 4.56 MB."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.0f} B"


def _reached(r: Any) -> int:
    return int(str(r.reached).split("/")[0])


def _rounds_cell(r: Any) -> str:
    return "not reached" if _reached(r) == 0 else _num(r.rounds_to_target_mean, 1)


def _time_cell(r: Any) -> str:
    """Simulated seconds to target, mean ± std over the runs that reached it and log time_s."""
    if r.time_s_runs == 0:
        return "no time_s"
    if _reached(r) == 0:
        return "not reached"
    if pd.isna(r.time_to_target_mean):  # only runs without time_s reached it
        return "no time_s"
    std = "—" if pd.isna(r.time_to_target_std) else f"{r.time_to_target_std:.3g}"
    cell = f"{r.time_to_target_mean:.4g} ± {std}"
    if r.time_s_runs < r.runs:
        cell += f" ({r.runs - r.time_s_runs} without time_s)"
    return cell


def _bytes_cell(r: Any) -> str:
    if _reached(r) == 0:
        return "not reached"
    return "—" if pd.isna(r.bytes_to_target_mean) else _eng(r.bytes_to_target_mean)


def _cell(v: object) -> str:
    return str(v).replace("|", "\\|")


def to_markdown(groups: pd.DataFrame, metric: str, target: float, x: str) -> str:
    """A padded GitHub markdown table; accuracies to 4 decimals as mean ± std (ddof=1)."""
    to_target = "rounds" if x == "round" else x
    header = [
        "strategy",
        "setting",
        "runs",
        f"final {metric}",
        f"best {metric}",
        f"{to_target} to ≥ {target:g} (mean)",
        f"time_s to ≥ {target:g} (mean ± std)",
        f"bytes to ≥ {target:g} (mean)",
        "reached",
        "loop s (mean)",
    ]
    right = [False, False, True, True, True, True, True, True, True, True]
    body = [
        [
            _cell(r.strategy),
            _cell(r.setting),
            str(r.runs),
            _pm(r.final_acc_mean, r.final_acc_std),
            _pm(r.best_acc_mean, r.best_acc_std),
            _rounds_cell(r),
            _time_cell(r),
            _bytes_cell(r),
            r.reached,
            _num(r.loop_s_mean, 1) + (" †" if r.loop_s_from == WHOLE_JOB else ""),
        ]
        for r in groups.itertuples(index=False)
    ]
    if groups["dp_epsilon"].notna().any():  # DP runs: the accountant's epsilon after the last round, largest
        header, right = [*header, "final dp_epsilon (max)"], [*right, True]
        body = [[*row, _num(e, 3)] for row, e in zip(body, groups["dp_epsilon"], strict=True)]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    widths = [max(w, 3) for w in widths]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rules = [("-" * (w - 1) + ":") if r else "-" * w for w, r in zip(widths, right, strict=True)]
    rule = "| " + " | ".join(rules) + " |"
    table = "\n".join([line(header), rule, *(line(row) for row in body)]) + "\n"
    if (groups["loop_s_from"] == WHOLE_JOB).any():
        table += (
            "\n† whole-job wall time (setup and process warm-up included): these runs' summary.json has "
            "no loop_s and their metrics.csv no wall_s column.\n"
        )
    return table


def x_axis_name(runs: list[Run]) -> str:
    names = sorted({r.x for r in runs})
    return names[0] if len(names) == 1 else " / ".join(names)


__all__ = ["group_table", "runs_table", "to_markdown", "x_axis_name"]
