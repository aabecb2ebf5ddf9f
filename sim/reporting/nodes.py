"""node_accuracy.png: how far gossip nodes' test accuracies spread at the end of each run.

Gossip has no global model: every node has its own, and the mean hides nodes left behind. metrics.csv
keeps each evaluation's node mean, std, min and max (``test_accuracy_mean`` ...); this draws, for the
last evaluation of every gossip run, the min-max range (thin line), mean ± std (thick bar) and mean
(dot), runs of one strategy side by side.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sim.reporting.runs import Run

COLUMNS = ("test_accuracy_mean", "test_accuracy_std", "test_accuracy_min", "test_accuracy_max")


def node_spread(run: Run) -> dict[str, float] | None:
    """The last evaluation's node statistics of a gossip run; None for runs without them (FL)."""
    if not set(COLUMNS) <= set(run.metrics.columns):
        return None
    rows = run.metrics[list(COLUMNS)].apply(pd.to_numeric, errors="coerce").dropna()
    if rows.empty:
        return None
    last = rows.iloc[-1]
    return {c.removeprefix("test_accuracy_"): float(last[c]) for c in COLUMNS}


def plot_node_spread(runs: list[Run], strategies: list[str]) -> Figure | None:
    points: list[tuple[str, Run, dict[str, float]]] = []
    for run, strategy in zip(runs, strategies, strict=True):
        spread = node_spread(run)
        if spread is not None:
            points.append((strategy, run, spread))
    if not points:
        return None
    order = list(dict.fromkeys(s for s, _, _ in points))
    fig = Figure(figsize=(max(5.0, 1.2 * len(points)), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ticks, labels = [], []
    for i, (strategy, run, p) in enumerate(points):
        color = f"C{order.index(strategy) % 10}"
        ax.vlines(i, p["min"], p["max"], color=color, linewidth=1)
        ax.vlines(i, p["mean"] - p["std"], p["mean"] + p["std"], color=color, linewidth=6, alpha=0.5)
        ax.plot([i], [p["mean"]], "o", color=color)
        ticks.append(i)
        labels.append(f"{strategy}\nseed {run.config.get('seed', '?')}")
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_ylabel("node test accuracy at the last evaluation")
    ax.set_title("spread of node accuracies: min–max (line), mean ± std (bar), mean (dot)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return fig
