"""Compare finished runs: ``python -m sim.report DIR [DIR...] [--out OUT] [--target ACC]``.

Finds every run (a folder with ``summary.json``) under the DIRs, skips the ones that did not
complete, refuses (exit 2, naming the file) a completed run whose summary.json or metrics.csv is
garbled, groups the rest by strategy and setting (the config keys that differ between runs, seed
aside), prints a markdown table of mean ± std over seeds (time: the rounds' loop, without setup and
process warm-up), and writes ``report.parquet`` (groups),
``runs.parquet`` (one row per run), ``report.md`` and ``comparison.png`` into OUT
(default ``DIR/report`` of the first DIR).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.errors import ConfigError, GossipsoupError


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
    return p


def _warn_skipped(skipped: list) -> None:
    if not skipped:
        return
    print(f"warning: skipped {len(skipped)} run(s) that did not complete:", file=sys.stderr)
    for s in skipped:
        print(f"  {s.path}: {s.reason}", file=sys.stderr)


def run_report(dirs: list[Path], out: Path | None, target: float, metric: str) -> int:
    # Everything is checked and computed before OUT is created: an error leaves no files behind.
    from sim.reporting.runs import check_metric, load_runs

    if not 0.0 <= target <= 1.0:  # also rejects NaN
        raise ConfigError("--target", target, "a fraction between 0 and 1 (0.9 means 90%)")
    out = out if out is not None else dirs[0] / "report"
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
    check_metric(runs, metric)

    from sim.reporting.plot import plot_comparison
    from sim.reporting.tables import group_table, runs_table, to_markdown, x_axis_name
    from sim.results import atomic_write_text as write_text_atomic
    from sim.results import write_atomic

    _warn_skipped(skipped)
    runs_df = runs_table(runs, metric, target)
    groups = group_table(runs_df)
    x = x_axis_name(runs)
    n_settings = runs_df["setting"].nunique()
    to_target = "rounds" if x == "round" else x
    title = (
        f"# Report: {metric}, target {target:g}\n\n"
        f"{len(runs_df)} completed run(s), {len(groups)} group(s) over {n_settings} setting(s); "
        f"{len(skipped)} skipped. Mean ± std over seeds (ddof=1, — for one run); "
        f"{to_target} to target averaged over the runs that reached it.\n\n"
    )
    markdown = title + to_markdown(groups, metric, target, x)
    # Runs are labelled in runs_df order; plot in that order too.
    by_dir = {str(r.path): r for r in runs}
    ordered = [by_dir[d] for d in runs_df["run_dir"]]
    fig = plot_comparison(ordered, list(runs_df["strategy"]), list(runs_df["setting"]), metric, target, x)

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.parquet", lambda t: groups.to_parquet(t, index=False))
    write_atomic(out / "runs.parquet", lambda t: runs_df.to_parquet(t, index=False))
    write_text_atomic(out / "report.md", markdown)
    write_atomic(out / "comparison.png", lambda t: fig.savefig(t, format="png", dpi=120))
    print(markdown, end="")
    print(f"wrote {out}/{{report.parquet,runs.parquet,report.md,comparison.png}}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        return run_report(args.dirs, args.out, args.target, args.metric)
    except GossipsoupError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
