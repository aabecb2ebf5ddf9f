"""The lines of the report's plots: one per (strategy, setting), one label and one colour in every plot.

A line's label names only what differs between the lines: the strategy when several strategies are
compared, the setting when several settings are, both when both differ. The colour is fixed per line
in the report's order, so a setting has the same colour in comparison.png, plot_*.png and
node_accuracy.png.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sim.reporting.runs import Run

# Ten distinct colours first; past twenty lines the colours repeat with another dash pattern.
_PALETTE = [f"C{i}" for i in range(10)] + [
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#e6550d",
    "#31a354",
    "#756bb1",
    "#636363",
]
Dash = Literal["-", "--", ":", "-."]
_DASHES: list[Dash] = ["-", "--", ":", "-."]


@dataclass(frozen=True)
class Line:
    """The runs (seeds) of one strategy and setting, drawn as one mean line with a min-max band."""

    strategy: str
    setting: str
    label: str
    color: str
    linestyle: Dash
    runs: tuple[Run, ...]


def line_label(strategy: str, setting: str, strategies: set[str], settings: set[str]) -> str:
    parts = []
    if len(strategies) > 1 or len(settings) == 1:
        parts.append(strategy)
    if len(settings) > 1:
        parts.append(setting)
    return ", ".join(parts)


def make_lines(runs: list[Run], strategies: list[str], settings: list[str]) -> list[Line]:
    """Lines in the order their first run appears; ``strategies``/``settings``: each run's labels."""
    members: dict[tuple[str, str], list[Run]] = {}
    for run, strategy, setting in zip(runs, strategies, settings, strict=True):
        members.setdefault((strategy, setting), []).append(run)
    all_strategies, all_settings = set(strategies), set(settings)
    return [
        Line(
            strategy,
            setting,
            line_label(strategy, setting, all_strategies, all_settings),
            _PALETTE[i % len(_PALETTE)],
            _DASHES[(i // len(_PALETTE)) % len(_DASHES)],
            tuple(group),
        )
        for i, ((strategy, setting), group) in enumerate(members.items())
    ]
