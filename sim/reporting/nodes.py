"""node_accuracy.png: how far gossip nodes' test accuracies spread at the end of each run.

Gossip has no global model: every node has its own, and the mean hides nodes left behind. metrics.csv
keeps each evaluation's node mean, std, min and max (``test_accuracy_mean`` ...); this draws, for the
last evaluation of every gossip run, the min-max range (thin line), mean ± std (thick bar) and mean
(dot), each run in its line's colour and labelled by its line and seed.
"""

from __future__ import annotations

import textwrap

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


def tick_labels(runs: list[Run], labels: list[str]) -> list[str]:
    """``label`` and seed per run; runs that would still share one also get their folder's name."""
    ticks = [f"{label}, seed {run.config.get('seed', '?')}" for run, label in zip(runs, labels, strict=True)]
    shared = {t for t in ticks if ticks.count(t) > 1}
    return [f"{t} ({run.path.name})" if t in shared else t for t, run in zip(ticks, runs, strict=True)]


def plot_node_spread(runs: list[Run], labels: list[str], colors: list[str]) -> Figure | None:
    """One bar per gossip run; ``labels``/``colors``: each run's line label and colour (sim/reporting/lines.py)."""
    points = [
        (run, label, color, spread)
        for run, label, color in zip(runs, labels, colors, strict=True)
        if (spread := node_spread(run)) is not None
    ]
    if not points:
        return None
    ticks = tick_labels([p[0] for p in points], [p[1] for p in points])
    fig = Figure(figsize=(max(6.4, 1.5 * len(points) + 1.5), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (_, _, color, p) in enumerate(points):
        ax.vlines(i, p["min"], p["max"], color=color, linewidth=1)
        ax.vlines(i, p["mean"] - p["std"], p["mean"] + p["std"], color=color, linewidth=6, alpha=0.5)
        ax.plot([i], [p["mean"]], "o", color=color)
    wrapped = ["\n".join(w for part in t.split(", ") for w in textwrap.wrap(part, 26)) for t in ticks]
    ax.set_xticks(range(len(points)), wrapped, fontsize=8)
    ax.set_xlim(-0.6, len(points) - 0.4)
    ax.set_ylabel("node test accuracy at the last evaluation")
    title = "Spread over the nodes of each gossip run\nmin–max (line) · mean ± std (bar) · mean (dot)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return fig
