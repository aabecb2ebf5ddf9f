"""comparison.png and plot_COLUMN.png: every line on shared axes, one panel per x axis.

All strategies and settings are overlaid on one axes per x (round, bytes sent, messages sent and,
when runs have it, simulated time), the y axis shared, so FL and gossip, or a rule and its
pre-aggregated variant, are read off one scale. Each line is the mean over its seeds, its band the
min-max; labels and colours come from sim/reporting/lines.py, one legend below the panels.

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
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, MaxNLocator

from sim.reporting.axes import XAxis
from sim.reporting.lines import Line
from sim.reporting.runs import curve


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


def _curves(line: Line, axis: XAxis, metric: str) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for run in line.runs:
        moved = axis.move(run)
        if moved is None or metric not in moved.metrics.columns:
            continue
        c = curve(moved, metric)
        if len(c):
            out.append((c["x"].to_numpy(float), c["y"].to_numpy(float)))
    return out


Curves = list[tuple[np.ndarray, np.ndarray]]


def _draw_panel(ax, lines: list[Line], data: list[Curves], axis: XAxis, metric: str, target: float | None) -> None:
    """Every line that has data on this axis; the title counts the lines that have none."""
    for line, curves in zip(lines, data, strict=True):
        if not curves:
            continue
        grid, mean, lo, hi = _band(curves)
        marker = "o" if len(grid) <= 40 else None
        ax.plot(grid, mean, color=line.color, ls=line.linestyle, marker=marker, ms=3.5, lw=1.6, label=line.label)
        if len(curves) > 1:
            ax.fill_between(grid, lo, hi, color=line.color, alpha=0.18, linewidth=0)
    if target is not None:
        ax.axhline(target, color="0.4", linestyle="--", linewidth=0.9, label=f"target {target:g}")
    ax.set_xlabel(axis.label)
    ax.set_ylabel(metric)
    if axis.integer:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axis.unit is not None:
        ax.xaxis.set_major_formatter(EngFormatter(unit=axis.unit))
    ax.grid(True, alpha=0.3)
    lacking = sum(not curves for curves in data)
    if lacking:
        ax.set_title(f"{lacking} of {len(lines)} line(s) have no data on this axis", fontsize=9, color="0.35")


def plot_lines(lines: list[Line], metric: str, target: float | None, axes: list[XAxis]) -> Figure:
    """The metric against each axis in ``axes`` on which some line has data, every line in every panel it can be.

    The legend lists the lines drawn somewhere, in the order of ``lines``; a panel's title counts the lines
    it lacks.
    """
    data = {axis.name: [_curves(line, axis, metric) for line in lines] for axis in axes}
    axes = [axis for axis in axes if any(data[axis.name])]
    drawn = [i for i in range(len(lines)) if any(data[axis.name][i] for axis in axes)]
    ncols = 2 if len(axes) == 4 else len(axes)
    nrows = math.ceil(len(axes) / ncols)
    # legend entries side by side as far as the figure's width holds them (about 0.065 in a character at 8.5 pt)
    entry_inches = 0.065 * min(max(len(lines[i].label) for i in drawn), 70) + 0.8
    legend_cols = max(1, min(len(drawn) + (target is not None), int(5.6 * ncols / entry_inches)))
    legend_rows = math.ceil((len(drawn) + (target is not None)) / legend_cols)
    fig = Figure(figsize=(5.6 * ncols, 4.0 * nrows + 0.9 + 0.22 * legend_rows), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax in panels[len(axes) :]:
        ax.set_visible(False)
    for ax, axis in zip(panels, axes, strict=False):
        _draw_panel(ax, lines, data[axis.name], axis, metric, target)
    handles = [
        Line2D([], [], color=lines[i].color, linestyle=lines[i].linestyle, marker="o", markersize=3.5, lw=1.6)
        for i in drawn
    ]
    labels = ["\n".join(textwrap.wrap(lines[i].label, 70)) or lines[i].label for i in drawn]
    if target is not None:
        handles.append(Line2D([], [], color="0.4", linestyle="--", linewidth=0.9))
        labels.append(f"target {target:g}")
    fig.legend(handles, labels, loc="outside lower center", ncols=legend_cols, fontsize=8.5, frameon=False)
    seeds = sorted({len(lines[i].runs) for i in drawn})
    n = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    shared = {line.strategy for line in lines}
    prefix = f"{shared.pop()}: " if len(shared) == 1 and lines[0].label != lines[0].strategy else ""
    title = f"{prefix}{metric}, mean over seeds (line, n = {n} per line), min–max over seeds (band)"
    fig.suptitle(title, fontsize=11)
    return fig
