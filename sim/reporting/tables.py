"""The per-run and per-group tables, and their markdown rendering."""

from __future__ import annotations

import math

import pandas as pd

from sim.reporting.labels import setting_labels, strategy_labels
from sim.reporting.runs import Run, curve

RUN_COLUMNS = [
    "strategy", "setting", "seed", "final_acc", "best_acc", "rounds_to_target", "wall_s", "run_dir",
]
GROUP_COLUMNS = [
    "strategy", "setting", "runs", "final_acc_mean", "final_acc_std", "best_acc_mean",
    "best_acc_std", "rounds_to_target_mean", "reached", "wall_s_mean",
]


def _float(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def runs_table(runs: list[Run], metric: str, target: float) -> pd.DataFrame:
    """One row per run, sorted by setting, strategy and seed (values, not text)."""
    configs = [r.config for r in runs]
    settings, strategies = setting_labels(configs), strategy_labels(configs)
    rows, keys = [], []
    for run, (setting, skey), (strategy, tkey) in zip(runs, settings, strategies):
        c = curve(run, metric)
        reached = c[c["y"] >= target]
        wall = _float(run.summary.get("wall_s"))
        if math.isnan(wall) and "wall_s" in run.metrics.columns:
            wall = _float(pd.to_numeric(run.metrics["wall_s"], errors="coerce").max())
        seed = run.config.get("seed")
        rows.append({
            "strategy": strategy,
            "setting": setting,
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else pd.NA,
            "final_acc": float(c["y"].iloc[-1]) if len(c) else math.nan,
            "best_acc": float(c["y"].max()) if len(c) else math.nan,
            "rounds_to_target": float(reached["x"].iloc[0]) if len(reached) else math.nan,
            "wall_s": wall,
            "run_dir": str(run.path),
        })
        keys.append((skey, tkey, seed if isinstance(seed, int) else math.inf, str(run.path)))
    order = sorted(range(len(rows)), key=lambda i: keys[i])
    df = pd.DataFrame([rows[i] for i in order], columns=RUN_COLUMNS)
    df["seed"] = df["seed"].astype("Int64")
    return df


def group_table(runs_df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof=1) over the runs of each (strategy, setting), in the runs' order."""
    rows = []
    for (strategy, setting), g in runs_df.groupby(["strategy", "setting"], sort=False):
        hit = g["rounds_to_target"].dropna()
        rows.append({
            "strategy": strategy,
            "setting": setting,
            "runs": len(g),
            "final_acc_mean": g["final_acc"].mean(),
            "final_acc_std": g["final_acc"].std(ddof=1),
            "best_acc_mean": g["best_acc"].mean(),
            "best_acc_std": g["best_acc"].std(ddof=1),
            "rounds_to_target_mean": hit.mean() if len(hit) else math.nan,
            "reached": f"{len(hit)}/{len(g)}",
            "wall_s_mean": g["wall_s"].mean(),
        })
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def _num(v: float, digits: int) -> str:
    return "—" if v is None or pd.isna(v) else f"{v:.{digits}f}"


def _pm(mean: float, std: float) -> str:
    return f"{_num(mean, 4)} ± {_num(std, 4)}"


def _cell(v: object) -> str:
    return str(v).replace("|", "\\|")


def to_markdown(groups: pd.DataFrame, metric: str, target: float, x: str) -> str:
    """A padded GitHub markdown table; accuracies to 4 decimals as mean ± std (ddof=1)."""
    to_target = "rounds" if x == "round" else x
    header = ["strategy", "setting", "runs", f"final {metric}", f"best {metric}",
              f"{to_target} to ≥ {target:g} (mean)", "reached", "wall s (mean)"]
    right = [False, False, True, True, True, True, True, True]
    body = [
        [
            _cell(r.strategy), _cell(r.setting), str(r.runs),
            _pm(r.final_acc_mean, r.final_acc_std), _pm(r.best_acc_mean, r.best_acc_std),
            _num(r.rounds_to_target_mean, 1), r.reached, _num(r.wall_s_mean, 1),
        ]
        for r in groups.itertuples(index=False)
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    widths = [max(w, 3) for w in widths]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "| " + " | ".join(padded) + " |"

    rules = [("-" * (w - 1) + ":") if r else "-" * w for w, r in zip(widths, right)]
    rule = "| " + " | ".join(rules) + " |"
    return "\n".join([line(header), rule, *(line(row) for row in body)]) + "\n"


def x_axis_name(runs: list[Run]) -> str:
    names = sorted({r.x for r in runs})
    return names[0] if len(names) == 1 else " / ".join(names)


__all__ = ["runs_table", "group_table", "to_markdown", "x_axis_name"]
