"""Every strategy at its own best setting: chosen on the validation split, reported on the test split.

A tuning sweep (``hydra/sweeper=optuna``, or a grid) gives each strategy several candidate settings,
each run over the same seeds. Comparing strategies at one shared setting favours whichever strategy
that setting suits; picking each strategy's best by its *test* accuracy overstates it. So each
strategy's candidate with the highest mean final ``val_accuracy`` over its seeds is chosen, and its
test figures are reported, with the chosen values. Ties go to the candidate listed first (lowest
values), so the choice is deterministic.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pandas as pd

from sim.errors import ConfigError
from sim.reporting.labels import flatten, fmt_value, ignored, strategy_name
from sim.reporting.runs import Run, curve

COLUMNS = ["strategy", "tuned", "candidates", "runs", "val_mean", "test_mean", "test_std", "trials"]


def _key_of(k: str) -> bool:
    """Keys that make two runs different candidates: strategy options too, seeds and paths not."""
    return k != "strategy.name" and (k.startswith("strategy.") or not ignored(k))


def _final(run: Run, column: str) -> float:
    c = curve(run, column)
    return float(c["y"].iloc[-1]) if len(c) else math.nan


def tuned_table(runs: list[Run], metric: str = "test_accuracy", select: str = "val_accuracy") -> pd.DataFrame:
    missing = [r.path for r in runs if select not in r.metrics.columns or curve(r, select).empty]
    if missing:
        raise ConfigError(
            "--tuned",
            select,
            f"runs whose metrics.csv has a {select} column with values (a validation split: dataset.val_fraction > 0)",
            f"{missing[0] / 'metrics.csv'} has none.",
        )
    by_strategy: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_strategy[strategy_name(run.config)].append(run)
    rows = []
    for strategy, members in by_strategy.items():
        flats = [{k: v for k, v in flatten(r.config).items() if _key_of(k)} for r in members]
        keys = sorted({k for f in flats for k in f if len({json.dumps(g.get(k), default=str) for g in flats}) > 1})
        candidates: dict[tuple, list[Run]] = defaultdict(list)
        for run, flat in zip(members, flats, strict=True):
            candidates[tuple(json.dumps(flat.get(k), default=str) for k in keys)].append(run)
        scored = []
        for values, group in sorted(candidates.items()):
            val = pd.Series([_final(r, select) for r in group]).mean()
            scored.append((val, values, group))
        best_val = max(s[0] for s in scored)
        _, values, group = next(s for s in scored if s[0] == best_val)
        test = pd.Series([_final(r, metric) for r in group])
        rows.append(
            {
                "strategy": strategy,
                "tuned": ", ".join(f"{k}={fmt_value(json.loads(v))}" for k, v in zip(keys, values, strict=True))
                or "(one setting)",
                "candidates": len(candidates),
                "runs": len(group),
                "val_mean": best_val,
                "test_mean": test.mean(),
                "test_std": test.std(ddof=1),
                "trials": len(members),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("strategy", kind="stable").reset_index(drop=True)


def tuned_markdown(table: pd.DataFrame, metric: str, select: str) -> str:
    def num(v: float) -> str:
        return "—" if pd.isna(v) else f"{v:.4f}"

    lines = [
        f"## Each strategy at its best setting (chosen by final {select}, reported: final {metric})",
        "",
        f"| strategy | tuned values | candidates | seeds | {select} (mean) | {metric} (mean ± std) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in table.itertuples(index=False):
        tuned = str(r.tuned).replace("|", "\\|")
        lines.append(
            f"| {r.strategy} | {tuned} | {r.candidates} | {r.runs} | {num(r.val_mean)} | "
            f"{num(r.test_mean)} ± {num(r.test_std)} |"
        )
    budgets = sorted(set(table["trials"]))
    note = (
        f"\nEvery strategy had {budgets[0]} run(s) (trials x seeds)."
        if len(budgets) == 1
        else f"\nWarning: the strategies had different budgets ({', '.join(map(str, table['trials']))} runs): "
        "the comparison is not fair."
    )
    return "\n".join(lines) + "\n" + note + "\n"
