"""The x axes every run of a report is drawn on together: round, bytes sent, messages sent, simulated time.

Each axis maps a run to the same run with its x column replaced, or to None when the run's metrics.csv
lacks what the axis needs (runs written before ``time_s`` existed have no simulated time, asynchronous
gossip excepted). An axis is drawn when at least one run has it; runs without it are left out of that
panel only. ``--x`` picks some of them (:func:`pick_axes`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pandas as pd

from sim.errors import ConfigError
from sim.reporting.communication import AXES, with_cost_axis
from sim.reporting.runs import Run

# Every mode logs time_s (simulated seconds, issue 25); asynchronous gossip written before it logged only its
# clock `time` (in units of gossip.wake_interval) beside its fractional round.
SIM_TIME_COLUMNS = ("time_s", "time")
AXIS_NAMES = ("round", "bytes", "messages", "time")


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
    timed = [moved.x for r in runs if (moved := simulated_time(r)) is not None]
    if timed:
        labels = {
            frozenset({"time_s"}): "simulated time (s)",
            frozenset({"time"}): "simulated time (units of gossip.wake_interval)",
            frozenset({"time_s", "time"}): "simulated time (s; runs without time_s: gossip.wake_interval units)",
        }
        axes.append(XAxis("time", labels[frozenset(timed)], simulated_time))
    return axes


def parse_axes(values: list[str] | None) -> list[str] | None:
    """``--x`` values (repeatable, each a comma list) as axis names in AXIS_NAMES order; None: every axis."""
    if not values:
        return None
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in AXIS_NAMES]
    if bad or not names:
        raise ConfigError(
            "--x",
            ",".join(values),
            "x axes among " + ", ".join(AXIS_NAMES) + " (repeat --x or separate them by commas)",
            f"{bad[0]!r} is none of them." if bad else "",
        )
    return [n for n in AXIS_NAMES if n in names]


def pick_axes(axes: list[XAxis], names: list[str] | None) -> list[XAxis]:
    """The axes named by ``--x`` (all when None); ConfigError when no run has data on one of them."""
    if names is None:
        return axes
    have = {a.name for a in axes}
    for name in names:
        if name not in have:
            need = {
                "time": "a time_s column (or, for asynchronous gossip, time) in metrics.csv",
                "bytes": "bytes_up (and for FL bytes_down) columns in metrics.csv",
                "messages": "messages_sent (gossip) or num_participants (FL) columns in metrics.csv",
            }.get(name, "")
            raise ConfigError(
                "--x", name, f"an x axis at least one run has data for; {name} needs {need}", "No run has it."
            )
    return [a for a in axes if a.name in names]
