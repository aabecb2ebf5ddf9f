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
            raise ConfigError("DIR", str(d), "an existing run or multirun directory", f"That path {what}.")
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


def _refuse(path: Path, allowed: str, detail: str) -> ConfigError:
    """A run file that exists but cannot be reported: name the file, say what is wrong with it."""
    return ConfigError(path.name, str(path), allowed, detail)


def _read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _refuse(path, "a readable summary.json", f"Reading it failed: {e.__class__.__name__}: {e}") from None
    if not isinstance(summary, dict):
        raise _refuse(path, "a summary.json holding a JSON object", f"It holds a {type(summary).__name__}.")
    return summary


def _non_numeric(column: pd.Series) -> int | None:
    """Index of the first non-empty cell that is not a number, or None."""
    bad = pd.to_numeric(column, errors="coerce").isna() & column.notna()
    return int(bad.idxmax()) if bad.any() else None


def check_numeric(path: Path, metrics: pd.DataFrame, column: str) -> None:
    row = _non_numeric(metrics[column])
    if row is not None:
        raise _refuse(
            path,
            f"a metrics.csv whose {column} cells are numbers (or empty)",
            f"Line {row + 2} has {metrics[column].iloc[row]!r}.",
        )


def _read_metrics(path: Path) -> tuple[pd.DataFrame, str]:
    """(metrics, x column) of a completed run, refused unless it has rows and a numeric round or time."""
    try:
        metrics = pd.read_csv(path)
    except FileNotFoundError:
        raise _refuse(path, "a metrics.csv beside every completed run's summary.json", "It is missing.") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as e:  # EmptyDataError is a ValueError
        raise _refuse(path, "a readable metrics.csv", f"Reading it failed: {e.__class__.__name__}: {e}") from None
    x = "round" if "round" in metrics.columns else "time" if "time" in metrics.columns else None
    if x is None:
        raise _refuse(
            path,
            "a metrics.csv with a round or a time column",
            f"Its columns are {', '.join(map(str, metrics.columns))}.",
        )
    if metrics.empty:
        raise _refuse(path, "a metrics.csv with at least one row", "It holds only the header.")
    check_numeric(path, metrics, x)
    return metrics, x


def load_runs(dirs: list[Path]) -> tuple[list[Run], list[Skipped]]:
    """The completed runs, and the ones that are still running or failed (skipped with a reason).

    A run that claims to be complete but whose files are garbled is refused rather than skipped:
    leaving it out silently would change the means the report prints.
    """
    runs: list[Run] = []
    skipped: list[Skipped] = []
    for summary_path in find_summaries(dirs):
        run_dir = summary_path.parent
        summary = _read_summary(summary_path)
        status = summary.get("status")
        if status != "completed":
            skipped.append(Skipped(run_dir, f"status {status!r}"))
            continue
        config = summary.get("config")
        if not isinstance(config, dict) or not config:
            raise _refuse(
                summary_path,
                "a summary.json with the run's resolved config",
                "Its 'config' entry is missing or not an object.",
            )
        metrics, x = _read_metrics(run_dir / "metrics.csv")
        runs.append(Run(run_dir, config, summary, metrics, x))
    return runs, skipped


def check_metric(runs: list[Run], metric: str) -> None:
    """Raise a ConfigError unless every run's metrics.csv has the column ``metric`` with numbers in it."""
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
        check_numeric(run.path / "metrics.csv", run.metrics, metric)
        if curve(run, metric).empty:
            raise _refuse(
                run.path / "metrics.csv",
                f"a metrics.csv with at least one evaluated {metric}",
                f"Every {metric} cell is empty.",
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


def check_plot_column(runs: list[Run], column: str) -> list[Path]:
    """The runs that have no ``column`` values (drawn without them); ConfigError (``--plot``) when none has any.

    Unlike ``--metric``, which every run is tabulated on, a ``--plot`` column may belong to some runs only
    (``dp_epsilon`` in a comparison with runs without DP).
    """
    lacking = []
    for run in runs:
        if column in run.metrics.columns:
            check_numeric(run.path / "metrics.csv", run.metrics, column)
        if column not in run.metrics.columns or curve(run, column).empty:
            lacking.append(run.path)
    if len(lacking) == len(runs):
        present = sorted({str(c) for r in runs for c in r.metrics.columns} - {"round", "time"})
        raise ConfigError(
            "--plot",
            column,
            "a metrics.csv column with values in at least one run: " + ", ".join(present),
            "No run has values in it.",
        )
    return lacking
