"""The communication axes people compare strategies on: the metric against bytes sent and messages sent.

metrics.csv counts per row (a round, or the time since the previous evaluation of asynchronous
gossip); the axes are their running sums. What counts as sent:

- **federated**: the server's model to each participant and each participant's update back, so
  bytes = ``bytes_down + bytes_up`` and messages = 2 x ``num_participants``;
- **gossip**: each message once, when it leaves its sender: bytes = ``bytes_up`` (``bytes_down``
  counts the same messages on arrival, lost ones excepted), messages = ``messages_sent``.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from sim.reporting.runs import Run

AXES = {"bytes": "bytes sent (cumulative)", "messages": "messages sent (cumulative)"}


def _per_row(run: Run, kind: str) -> pd.Series | None:
    m = run.metrics
    num = lambda c: pd.to_numeric(m[c], errors="coerce").fillna(0.0)  # noqa: E731
    gossip = str(run.config.get("mode", "federated")) == "gossip" or "messages_sent" in m.columns
    if kind == "bytes":
        if gossip and "bytes_up" in m.columns:
            return num("bytes_up")
        if {"bytes_up", "bytes_down"} <= set(m.columns):
            return num("bytes_up") + num("bytes_down")
        return None
    if gossip and "messages_sent" in m.columns:
        return num("messages_sent")
    if "num_participants" in m.columns:
        return 2 * num("num_participants")
    return None


def cumulative(run: Run, kind: str) -> pd.Series | None:
    """The running total of ``kind`` ("bytes" or "messages") at each metrics.csv row, in file order; None when the
    run lacks the counts. Rows without an evaluation still count what they sent."""
    per_row = _per_row(run, kind)
    return None if per_row is None else per_row.cumsum()


def with_cost_axis(run: Run, kind: str) -> Run | None:
    """The run with its x axis replaced by the running total of ``kind`` ("bytes" or "messages"); None
    when its metrics.csv lacks the counts."""
    total = cumulative(run, kind)
    if total is None:
        return None
    metrics = run.metrics.copy()
    metrics[AXES[kind]] = total
    return replace(run, metrics=metrics, x=AXES[kind])
