"""Compare finished runs: ``python -m sim.report DIR [DIR...] [--out OUT] [--target ACC] [--x AXIS]``.

Finds every run (a folder with ``summary.json``) under the DIRs, skips the ones that did not
complete, refuses (exit 2, naming the file) a completed run whose summary.json or metrics.csv is
garbled, groups the rest by strategy and setting (the config keys that differ between runs, seed
aside), prints a markdown table of mean ± std over seeds (rounds, simulated seconds ``time_s`` and bytes
to reach ``--target``: sim/reporting/to_target.py; loop time: the rounds' loop, without setup and
process warm-up), and writes ``report.parquet`` (groups),
``runs.parquet`` (one row per run), ``report.md`` and ``comparison.png`` into OUT
(default ``DIR/report`` of the first DIR).

The plots overlay every (strategy, setting) on shared axes, one panel per x axis: round, bytes sent
and messages sent (sim/reporting/communication.py) and, when runs log it, simulated time ``time_s``
(``--x`` picks some of these panels, sim/reporting/axes.py); each line is
labelled by what differs between the lines only and keeps its colour in every plot
(sim/reporting/lines.py). For gossip runs, ``node_accuracy.png`` shows the spread of node accuracies.
``--plot COLUMN`` (repeatable) draws any metrics.csv column the same way as ``plot_COLUMN.png`` (runs
without it are named in a warning). A sweep folder holding fewer jobs than its ``multirun.yaml`` asked
for is named with the missing jobs' overrides, on stderr and in report.md (sim/reporting/sweep_jobs.py).
``--tuned`` compares every strategy at its own best setting, chosen on ``--select`` (default
val_accuracy) and reported on the metric (sim/reporting/tuned.py), into ``tuned.md`` and report.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sim.errors import ConfigError, GossipsoupError


def _save_png(figure: Any, path: str) -> None:
    figure.savefig(path, format="png", dpi=120)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sim.report",
        description="Compare finished gossipsoup runs: a table of mean ± std over seeds per "
        "strategy and setting, and a plot of the metric against round.",
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run or multirun folders")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/report)")
    p.add_argument("--target", type=float, default=0.9, help="accuracy to reach, a fraction in [0, 1] (default 0.9)")
    p.add_argument(
        "--metric",
        default="test_accuracy",
        help="metrics.csv column to compare, higher is better (default test_accuracy)",
    )
    p.add_argument(
        "--plot",
        action="append",
        default=[],
        metavar="COLUMN",
        help="also plot this metrics.csv column against round as plot_COLUMN.png (repeatable)",
    )
    p.add_argument(
        "--tuned",
        action="store_true",
        help="compare each strategy at its best setting: chosen by --select, reported on --metric",
    )
    p.add_argument("--select", default="val_accuracy", help="metrics.csv column that picks the best setting")
    p.add_argument(
        "--x",
        action="append",
        default=None,
        metavar="AXIS",
        help="x axes of the plots: round, bytes, messages, time (simulated seconds); repeatable or comma-separated "
        "(default: every axis some run has)",
    )
    return p


def _warn_skipped(skipped: list) -> None:
    if not skipped:
        return
    print(f"warning: skipped {len(skipped)} run(s) that did not complete:", file=sys.stderr)
    for s in skipped:
        print(f"  {s.path}: {s.reason}", file=sys.stderr)


@dataclass
class Report:
    """Everything the report writes, built before any file is: tables, markdown and figures by file name."""

    runs_df: Any
    groups: Any
    markdown: str
    figures: dict[str, Any]
    lines: list[Any]
    tuned_md: str | None = None
    warnings: list[str] = field(default_factory=list)


def _check_inputs(dirs: list[Path], out: Path, target: float) -> tuple[list, list]:
    from sim.reporting.runs import load_runs

    if not 0.0 <= target <= 1.0:  # also rejects NaN and inf
        raise ConfigError("--target", target, "a fraction between 0 and 1 (0.9 means 90%)")
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "a folder (it is created if missing)", "A file of that name exists.")
    runs, skipped = load_runs(dirs)
    if not runs and not skipped:
        raise ConfigError(
            "DIR",
            " ".join(str(d) for d in dirs),
            "run or multirun folders",
            "No summary.json was found under them, so they hold no run.",
        )
    if not runs:
        raise ConfigError(
            "DIR",
            " ".join(str(d) for d in dirs),
            'folders holding at least one completed run (a summary.json with status "completed")',
            f"Found {len(skipped)} run(s), none completed"
            + (": " + "; ".join(f"{s.path} ({s.reason})" for s in skipped[:5]) if skipped else "")
            + ".",
        )
    return runs, skipped


def _extra_plots(ordered: list, lines: list, plots: list[str], axes: list, warnings: list[str]) -> dict[str, Any]:
    """plot_COLUMN.png for each ``--plot`` column, drawn for the runs that have it (the others are named)."""
    from sim.reporting.plot import plot_lines
    from sim.reporting.runs import check_plot_column

    figures = {}
    for column in plots:
        lacking = check_plot_column(ordered, column)
        if lacking:
            warnings.append(
                f"--plot {column}: {len(lacking)} of {len(ordered)} run(s) have no {column} values, drawn without "
                f"them: {', '.join(str(p) for p in lacking[:5])}" + (" ..." if len(lacking) > 5 else "")
            )
        figures[f"plot_{column.replace('/', '_')}.png"] = plot_lines(lines, column, None, axes)
    return figures


def build_report(
    dirs: list[Path],
    out: Path,
    target: float,
    metric: str,
    plots: list[str] | None = None,
    tuned: bool = False,
    select: str = "val_accuracy",
    x: list[str] | None = None,
) -> Report:
    """Check the inputs and compute every table and figure; writes nothing (an error leaves no files).

    ``x``: the ``--x`` values (None: every axis some run has)."""
    from sim.reporting.axes import parse_axes, pick_axes, x_axes
    from sim.reporting.lines import make_lines
    from sim.reporting.nodes import plot_node_spread
    from sim.reporting.plot import plot_lines
    from sim.reporting.runs import check_metric
    from sim.reporting.sweep_jobs import missing_jobs
    from sim.reporting.tables import group_table, runs_table, to_markdown, x_axis_name

    x_names = parse_axes(x)
    runs, skipped = _check_inputs(dirs, out, target)
    check_metric(runs, metric)
    runs_df = runs_table(runs, metric, target)
    groups = group_table(runs_df)
    x_name = x_axis_name(runs)
    n_settings = runs_df["setting"].nunique()
    to_target = "rounds" if x_name == "round" else x_name
    incomplete = missing_jobs(dirs)
    warnings = [m.message() for m in incomplete]
    title = (
        f"# Report: {metric}, target {target:g}\n\n"
        f"{len(runs_df)} completed run(s), {len(groups)} group(s) over {n_settings} setting(s); "
        f"{len(skipped)} skipped. Mean ± std over seeds (ddof=1, — for one run); "
        f"{to_target}, simulated seconds (time_s) and bytes sent to target: at the first evaluation that "
        "reached it, averaged over the runs that reached it.\n\n"
    )
    if incomplete:
        title += "".join(f"**Warning: {w}**\n\n" for w in warnings)
    markdown = title + to_markdown(groups, metric, target, x_name)
    # Runs are labelled in runs_df order; plot in that order too.
    by_dir = {str(r.path): r for r in runs}
    ordered = [by_dir[d] for d in runs_df["run_dir"]]
    strategies, settings = list(runs_df["strategy"]), list(runs_df["setting"])
    lines = make_lines(ordered, strategies, settings)
    axes = pick_axes(x_axes(ordered, x_name), x_names)
    figures = {"comparison.png": plot_lines(lines, metric, target, axes)}
    line_of = {id(r): line for line in lines for r in line.runs}
    spread = plot_node_spread(ordered, [line_of[id(r)].label for r in ordered], [line_of[id(r)].color for r in ordered])
    if spread is not None:
        figures["node_accuracy.png"] = spread
    figures.update(_extra_plots(ordered, lines, plots or [], axes, warnings))
    tuned_md = None
    if tuned:
        from sim.reporting.tuned import tuned_markdown, tuned_table

        tuned_md = tuned_markdown(tuned_table(runs, metric, select), metric, select)
        markdown += "\n" + tuned_md
    _warn_skipped(skipped)
    return Report(runs_df, groups, markdown, figures, lines, tuned_md, warnings)


def run_report(
    dirs: list[Path],
    out: Path | None,
    target: float,
    metric: str,
    plots: list[str] | None = None,
    tuned: bool = False,
    select: str = "val_accuracy",
    x: list[str] | None = None,
) -> int:
    from sim.results import atomic_write_text as write_text_atomic
    from sim.results import write_atomic

    out = out if out is not None else dirs[0] / "report"
    report = build_report(dirs, out, target, metric, plots, tuned, select, x)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.parquet", lambda t: report.groups.to_parquet(t, index=False))
    write_atomic(out / "runs.parquet", lambda t: report.runs_df.to_parquet(t, index=False))
    write_text_atomic(out / "report.md", report.markdown)
    if report.tuned_md is not None:
        write_text_atomic(out / "tuned.md", report.tuned_md)
    for name, figure in report.figures.items():
        write_atomic(out / name, partial(_save_png, figure))
    print(report.markdown, end="")
    written = ["report.parquet", "runs.parquet", "report.md", *(["tuned.md"] if tuned else []), *report.figures]
    print(f"wrote {out}/{{{','.join(written)}}}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        return run_report(args.dirs, args.out, args.target, args.metric, args.plot, args.tuned, args.select, args.x)
    except GossipsoupError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
