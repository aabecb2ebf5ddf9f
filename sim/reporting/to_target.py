"""What a run paid to first reach the target accuracy: rounds, simulated seconds and bytes sent.

Issue 25 puts every mode on one clock (``time_s`` in metrics.csv: FL, sync and async gossip, async FL),
so rules are compared by the simulated time they need, not only by their rounds. The first reaching row
is the evaluated row (metric not empty) with the smallest x (round, or ``time`` for runs that log only
time) whose metric (``--metric``: in gossip runs ``test_accuracy`` is the mean over the evaluated nodes,
sim/run_metrics.py) is at least the target; the three costs are read off that one row:

- rounds: its x value;
- time: its ``time_s`` (cumulative simulated seconds); NaN, with ``has_time`` False, for runs written before
  ``time_s`` existed, which the table marks "no time_s";
- bytes: the bytes sent up to and including that row (sim/reporting/communication.py's running total, which
  also counts the rows skipped by ``eval_every``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sim.reporting.communication import cumulative
from sim.reporting.runs import Run

TIME_COLUMN = "time_s"


@dataclass(frozen=True)
class ToTarget:
    rounds: float  # NaN: not reached
    time_s: float  # NaN: not reached, or the run has no time_s
    bytes: float  # NaN: not reached, or the run has no byte counts
    has_time: bool  # the run logs time_s (some row has a number in it)


def has_time(run: Run) -> bool:
    return TIME_COLUMN in run.metrics.columns and pd.to_numeric(run.metrics[TIME_COLUMN], errors="coerce").notna().any()


def first_reach(run: Run, metric: str, target: float) -> int | None:
    """Position (in file order) of the evaluated row with the smallest x whose ``metric`` is >= ``target``."""
    x = pd.to_numeric(run.metrics[run.x], errors="coerce").to_numpy(float)
    y = pd.to_numeric(run.metrics[metric], errors="coerce").to_numpy(float)
    hit = ~np.isnan(x) & (y >= target)  # NaN (not evaluated) compares False
    if not hit.any():
        return None
    candidates = np.flatnonzero(hit)
    return int(candidates[np.argmin(x[candidates])])  # argmin: the first of equal x values


def to_target(run: Run, metric: str, target: float) -> ToTarget:
    timed = has_time(run)
    row = first_reach(run, metric, target)
    if row is None:
        return ToTarget(math.nan, math.nan, math.nan, timed)
    rounds = float(pd.to_numeric(run.metrics[run.x], errors="coerce").iloc[row])
    seconds = float(pd.to_numeric(run.metrics[TIME_COLUMN], errors="coerce").iloc[row]) if timed else math.nan
    total = cumulative(run, "bytes")
    sent = float(total.iloc[row]) if total is not None else math.nan
    return ToTarget(rounds, seconds, sent, timed)
