"""Find the run directories under the given folders and load their summary and metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sim.errors import ConfigError


@dataclass
class Run:
    """One completed run: its folder, resolved config, summary and per-round metrics."""

    path: Path
    config: dict
    summary: dict
    metrics: pd.DataFrame
    x: str  # the x axis column: "round" when present, else "time"


@dataclass
class Skipped:
    path: Path
    reason: str


def find_summaries(dirs: list[Path]) -> list[Path]:
    """Every ``summary.json`` under ``dirs`` (recursively), each once, in a stable order."""
    for d in dirs:
        if not d.is_dir():
            what = "is not a directory" if d.exists() else "does not exist"
            raise ConfigError(
                "DIR", str(d), "an existing run or multirun directory", f"That path {what}."
            )
    found: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        for p in sorted(d.rglob("summary.json"), key=_natural_key):
            if p.is_file() and p.resolve() not in seen:
                seen.add(p.resolve())
                found.append(p)
    return found


def _natural_key(p: Path) -> list[object]:
    # Hydra numbers multirun jobs 0, 1, ..., 10: order them as numbers, not as text.
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in p.parts]


def load_runs(dirs: list[Path]) -> tuple[list[Run], list[Skipped]]:
    runs: list[Run] = []
    skipped: list[Skipped] = []
    for summary_path in find_summaries(dirs):
        run_dir = summary_path.parent
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            skipped.append(Skipped(run_dir, f"unreadable summary.json ({e.__class__.__name__})"))
            continue
        if not isinstance(summary, dict):
            skipped.append(Skipped(run_dir, "summary.json is not a JSON object"))
            continue
        status = summary.get("status")
        if status != "completed":
            skipped.append(Skipped(run_dir, f"status {status!r}"))
            continue
        metrics_path = run_dir / "metrics.csv"
        try:
            metrics = pd.read_csv(metrics_path)
        except FileNotFoundError:
            skipped.append(Skipped(run_dir, "no metrics.csv"))
            continue
        except (OSError, ValueError, pd.errors.ParserError) as e:
            skipped.append(Skipped(run_dir, f"unreadable metrics.csv ({e.__class__.__name__})"))
            continue
        x = "round" if "round" in metrics.columns else "time" if "time" in metrics.columns else None
        if x is None:
            skipped.append(Skipped(run_dir, "metrics.csv has neither a round nor a time column"))
            continue
        config = summary.get("config")
        runs.append(Run(run_dir, config if isinstance(config, dict) else {}, summary, metrics, x))
    return runs, skipped


def check_metric(runs: list[Run], metric: str) -> None:
    """Raise a ConfigError unless every run's metrics.csv has the column ``metric``."""
    for run in runs:
        if metric not in run.metrics.columns:
            common = set.intersection(*(set(r.metrics.columns) for r in runs)) - {"round", "time"}
            columns = [c for c in run.metrics.columns if c in common]
            raise ConfigError(
                "--metric",
                metric,
                "a column of metrics.csv present in every run: " + ", ".join(columns),
                f"{run.path / 'metrics.csv'} has no such column.",
            )


def curve(run: Run, metric: str) -> pd.DataFrame:
    """The run's (x, metric) points where the metric was evaluated, sorted by x."""
    df = pd.DataFrame(
        {
            "x": pd.to_numeric(run.metrics[run.x], errors="coerce"),
            "y": pd.to_numeric(run.metrics[metric], errors="coerce"),
        }
    )
    return df.dropna().sort_values("x", kind="stable").reset_index(drop=True)
