"""FedAvg vs FedProx, SCAFFOLD, FedDyn and FedNova when clients do unequal local work (issue 16, item 4).

Softmax regression on FedProx's Synthetic(1, 1) (30 users, 10 sampled per round) and on scikit-learn's
digits split over 30 clients by Dirichlet(0.1) labels, in three local-work regimes: every client takes
10 SGD steps (the control); each client draws its steps uniformly in [1, 20] afresh every round
(FedProx's stragglers); each client runs one epoch, so its steps are fixed and proportional to its
data (FedNova's setting, where FedAvg's fixed point moves). Every strategy and grid value runs with 3
seeds; the script writes the tables to heterogeneity.md (keeping its hand-written Findings section),
one row per run to heterogeneity_runs.csv, mean curves to heterogeneity_curves.csv and one figure per
data set.

metrics.csv's ``train_loss`` is the clients' loss during local training, not the objective at the
global model, so this script adds two columns to every evaluation (by wrapping
``sim.federated.evaluation_row``): the training loss of the global model on all clients' rows pooled
(the objective that sample-weighted FedAvg and FedNova target) and the mean over clients of each
client's loss (the objective that SCAFFOLD's and FedDyn's plain means target). Both are compared with
their optimum, found by L-BFGS on the pooled data.

    python experiments/heterogeneity.py [--smoke] [--out DIR] [--rounds R] [--seeds 0 1 2]
    python experiments/heterogeneity.py --seed-check [--seeds 0 1 ... 9]

``--seed-check`` reruns FedAvg and the rules that the 3-seed tables put ahead on more seeds (10 by default)
and writes each rule's paired difference from FedAvg (mean ± std, range, wins out of N) into the report's
"Across seeds" section and heterogeneity_seeds.csv. The runs live in ``heterogeneity_sweep``, the tables
and figures in ``heterogeneity_report``; this file is the command line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the two modules beside this file, wherever it runs from

from heterogeneity_report import (  # noqa: E402
    SEEDS_TITLE,
    kept_findings,
    per_run,
    plot,
    replace_section,
    seed_table,
    swing_line,
    write_report,
)
from heterogeneity_sweep import (  # noqa: E402
    CURVE_EVERY,
    DATASETS,
    GRID,
    HERE,
    REGIMES,
    STRATEGIES,
    Plan,
    build_experiment,
    choose,
    compose_config,
    fixed_points,
    mean_curves,
    optima,
    overrides,
    per_row_losses,
    run_all,
    seed_check_jobs,
    summarise_runs,
    training_objectives,
)

__all__ = ["build_experiment", "compose_config", "kept_findings", "overrides", "per_row_losses", "training_objectives"]


def seed_section(runs: pd.DataFrame, seeds: tuple[int, ...], rounds: int, command: str, minutes: float) -> str:
    """The body of the report's seeds section: the command, what ran, the paired table and the swings."""
    return "\n".join(
        [
            "```bash",
            f"OMP_NUM_THREADS=1 nice {command}",
            "```",
            "",
            f"{len(runs)} runs, seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}), {rounds} rounds, the settings above;"
            f" {minutes:.1f} min wall on a shared 2-core machine. Each cell: the rule minus FedAvg on the same seed"
            " (the same data), mean ± std over seeds, its range, and in how many seeds the rule is better. Losses"
            " and accuracy are means over the last tenth of the rounds unless marked.",
            "",
            *seed_table(runs),
            "",
            swing_line(runs),
        ]
    )


def seed_check(out: Path, seeds: tuple[int, ...], rounds: int, command: str, smoke: bool = False) -> None:
    """Rerun :data:`SEED_CHECK` on ``seeds``; write heterogeneity_seeds.csv and the report's seeds section.

    Both are rewritten after each (data set, regime) group, so an interrupted check keeps what it finished.
    """
    start = time.perf_counter()
    jobs = seed_check_jobs(seeds)
    groups = list(dict.fromkeys((d, r) for d, r, *_ in jobs))[: 1 if smoke else None]
    done = []
    for group in groups:
        mine = [j for j in jobs if (j[0], j[1]) == group]
        done.append(per_run(run_all(Plan((), (), (), seeds, rounds), mine), rounds))
        runs = pd.concat(done, ignore_index=True)
        runs.to_csv(out / "heterogeneity_seeds.csv", index=False, float_format="%.6g")
        minutes = (time.perf_counter() - start) / 60
        body = seed_section(runs, seeds, rounds, command, minutes)
        md = out / "heterogeneity.md"
        if not md.exists():
            md.write_text("# Unequal local work: FedAvg, FedProx, SCAFFOLD, FedDyn, FedNova\n")
        replace_section(md, SEEDS_TITLE, body)
        print(f"wrote {out / 'heterogeneity_seeds.csv'} and the {SEEDS_TITLE!r} section of {md} ({minutes:.1f} min)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few rounds of a smaller grid (a test runs it)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the report, CSVs and figures")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument(
        "--fixed-points",
        action="store_true",
        help="only print where FedAvg, FedNova and SCAFFOLD/FedDyn settle in the epochs regime (L-BFGS, seconds)",
    )
    parser.add_argument(
        "--seed-check", action="store_true", help="rerun FedAvg and the leading rules on more seeds (default 0-9)"
    )
    args = parser.parse_args(argv)
    command = "python experiments/heterogeneity.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.seed_check:
        out = args.out or (Path(tempfile.mkdtemp(prefix="heterogeneity_smoke_")) if args.smoke else HERE)
        out.mkdir(parents=True, exist_ok=True)
        default_seeds = (0, 1) if args.smoke else tuple(range(10))
        seeds = tuple(args.seeds or default_seeds)
        seed_check(out, seeds, args.rounds or (3 if args.smoke else 200), command, smoke=args.smoke)
        return
    if args.fixed_points:
        plan = Plan(tuple(DATASETS), ("epochs",), (), tuple(args.seeds or (0, 1, 2)), 1)
        table = fixed_points(plan, 1000)
        print("| " + " | ".join(table.columns) + " |\n|" + " --- |" * len(table.columns))
        for row in table.itertuples(index=False):
            print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
        return
    if args.smoke:
        grid = tuple(next(g for g in GRID if g[0] == name) for name in STRATEGIES)  # the first value of each
        plan = Plan(("synthetic",), tuple(REGIMES), grid, tuple(args.seeds or (0, 1)), args.rounds or 3)
        out = args.out or Path(tempfile.mkdtemp(prefix="heterogeneity_smoke_"))
    else:
        plan = Plan(tuple(DATASETS), tuple(REGIMES), GRID, tuple(args.seeds or (0, 1, 2)), args.rounds or 200)
        out = args.out or HERE
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    best = optima(plan, iterations=20 if args.smoke else 1000)
    curves = run_all(plan)
    runs = summarise_runs(curves, best, plan.rounds)
    picks = choose(runs)
    runs.to_csv(out / "heterogeneity_runs.csv", index=False, float_format="%.6g")
    mean_curves(curves[curves["round"] % CURVE_EVERY == 0]).to_csv(
        out / "heterogeneity_curves.csv", index=False, float_format="%.5g"
    )
    plot(out, plan, curves, picks, best)
    write_report(out, plan, runs, picks, best, command, (time.perf_counter() - start) / 60)
    print(f"wrote {out / 'heterogeneity.md'} ({(time.perf_counter() - start) / 60:.1f} min)")


if __name__ == "__main__":
    main()
