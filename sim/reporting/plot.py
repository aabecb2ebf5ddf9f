"""comparison.png: the metric against round (or time), one line per strategy, a panel per setting.

Uses matplotlib's object API with the Agg canvas directly, so importing this module never switches
the process-wide pyplot backend.
"""

from __future__ import annotations

import math
import textwrap
import warnings

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sim.reporting.runs import Run, curve


def _band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Mean, min and max over runs on the union of their x values.

    Each run is linearly interpolated between its own evaluated points and left out outside them,
    so runs evaluated on different rounds (or async runs on different times) still line up.
    """
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    ys = np.vstack([np.interp(grid, x, y, left=np.nan, right=np.nan) for x, y in curves])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return grid, np.nanmean(ys, axis=0), np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)


def plot_comparison(
    runs: list[Run], strategies: list[str], settings: list[str], metric: str, target: float | None, x: str
) -> Figure:
    """``strategies``/``settings``: each run's labels, in the order of ``runs``; ``target`` None: no target line."""
    setting_order = list(dict.fromkeys(settings))
    strategy_order = list(dict.fromkeys(strategies))
    colors = {s: f"C{i % 10}" for i, s in enumerate(strategy_order)}
    ncols = min(len(setting_order), 3)
    nrows = math.ceil(len(setting_order) / ncols)
    fig = Figure(figsize=(6.4 * ncols, 4.4 * nrows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax in axes[len(setting_order) :]:
        ax.set_visible(False)
    for ax, setting in zip(axes[: len(setting_order)], setting_order, strict=True):
        for strategy in strategy_order:
            members = [r for r, s, t in zip(runs, settings, strategies, strict=True) if (s, t) == (setting, strategy)]
            points = [curve(r, metric) for r in members]
            data = [(c["x"].to_numpy(float), c["y"].to_numpy(float)) for c in points if len(c)]
            if not data:
                continue
            grid, mean, lo, hi = _band(data)
            color = colors[strategy]
            marker = "o" if len(grid) <= 40 else None
            ax.plot(
                grid, mean, color=color, marker=marker, markersize=3, linewidth=1.6, label=f"{strategy} (n={len(data)})"
            )
            if len(data) > 1:
                ax.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0)
        if target is not None:
            ax.axhline(target, color="0.4", linestyle="--", linewidth=0.9, label=f"target {target:g}")
        if len(setting_order) > 1 or setting != "default":
            ax.set_title("\n".join(textwrap.wrap(setting, 60)), fontsize=10)
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{metric} vs {x}\nline: mean over seeds · shaded band: min–max over seeds", fontsize=11)
    return fig
