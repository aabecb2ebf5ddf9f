"""The x axes every run of a report is drawn on together: round, bytes sent, messages sent, simulated time.

Each axis maps a run to the same run with its x column replaced, or to None when the run's metrics.csv
lacks what the axis needs (an FL run has no simulated time). An axis is drawn when at least one run has
it; runs without it are left out of that panel only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pandas as pd

from sim.reporting.communication import AXES, with_cost_axis
from sim.reporting.runs import Run

# Asynchronous gossip logs the simulated clock (in units of gossip.wake_interval) beside its fractional round.
SIM_TIME_COLUMNS = ("time_s", "time")


@dataclass(frozen=True)
class XAxis:
    name: str  # round, bytes, messages or time
    label: str
    move: Callable[[Run], Run | None]
    integer: bool = False  # ticks on whole numbers only (rounds, message counts)
    unit: str | None = None  # an engineering-notation unit for the ticks (bytes: kB, MB, ...)


def simulated_time(run: Run) -> Run | None:
    for column in SIM_TIME_COLUMNS:
        if column in run.metrics.columns and column != run.x:
            if pd.to_numeric(run.metrics[column], errors="coerce").notna().any():
                return replace(run, x=column)
    return None


def _whole(run: Run) -> bool:
    x = pd.to_numeric(run.metrics[run.x], errors="coerce").dropna()
    return bool((x == x.round()).all())


def x_axes(runs: list[Run], x_name: str) -> list[XAxis]:
    """The axes at least one run has, round (or time, for runs that only log time) first."""
    axes = [XAxis("round", x_name, lambda r: r, integer=all(_whole(r) for r in runs))]
    for kind, label in AXES.items():
        if any(with_cost_axis(r, kind) is not None for r in runs):
            axes.append(
                XAxis(
                    kind,
                    label,
                    lambda r, kind=kind: with_cost_axis(r, kind),  # type: ignore[misc]
                    integer=kind == "messages",
                    unit="B" if kind == "bytes" else None,
                )
            )
    if any(simulated_time(r) is not None for r in runs):
        axes.append(XAxis("time", "simulated time (units of gossip.wake_interval)", simulated_time))
    return axes
