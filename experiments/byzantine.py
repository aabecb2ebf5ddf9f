"""Robust rules against Byzantine attacks, in FL and in gossip, in the style of ByzFL's benchmark.

10 honest clients plus f Byzantine ones (``num_clients = 10 + f``, every client in every round) on
scikit-learn's digits, a logistic regression, label heterogeneity IID / Dirichlet(1) / Dirichlet(0.1),
seeds 0, 1, 2. Each rule's final test accuracy under each attack, and its worst case over the attacks.
The same for gossip on a random 6-regular graph of 12 honest nodes plus f Byzantine ones.

    OMP_NUM_THREADS=1 nice python experiments/byzantine.py [--smoke] [--out DIR] [--fresh]

Results go to DIR/byzantine.csv (one row per run, appended as runs finish, so an interrupted sweep
resumes where it stopped unless ``--fresh``), DIR/byzantine.md and DIR/byzantine_*.png (DIR defaults
to experiments/). The "## Findings" section of an existing byzantine.md is kept: it is written by a
person from the tables; everything above it is regenerated.
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from byzantine_grid import (
    ATTACKS,
    COMMON,
    DEGREE,
    HERE,
    HETEROGENEITY,
    HONEST_FL,
    HONEST_GOSSIP,
    ROUNDS,
    Grid,
    grids,
    tolerated,
)
from byzantine_report import worst_table, write_report
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict
from tqdm import tqdm

import sim.run
from sim.errors import ConfigError, RunError
from sim.run import run_experiment

__all__ = ["Grid", "grids", "sweep", "top_attacks", "run_one"]


def overrides(mode: str, f: int, het: str, attack: str, rounds: int) -> list[str]:
    """Hydra overrides of a run's setting; the rule and the seed are set by :func:`configure`."""
    out = [*COMMON, *HETEROGENEITY[het], f"rounds={rounds}", f"eval_every={rounds}"]
    if mode == "federated":
        n = HONEST_FL + f
        out += [f"num_clients={n}", "participation=uniform", f"participation.clients_per_round={n}"]
    else:
        out += ["mode=gossip", f"num_clients={HONEST_GOSSIP + f}", "topology=random_regular"]
        out += [f"topology.degree={DEGREE}"]
    if attack != "none":
        out += [*ATTACKS[attack], f"attack.f={f}"]
    return out


def rule_overrides(mode: str, f: int, rule: str) -> list[str]:
    """FL robust rules get f fixed (so the no-attack column pays for it); gossip keeps f=null, each
    node's own count of Byzantine neighbours."""
    inner = rule.split("+")[-1]
    out = [f"strategy={inner}"]
    if "+" in rule:
        out += ["preagg=nnm", f"preagg.f={f}"]
    if mode == "federated" and inner != "fedavg":
        out.append(f"strategy.f={f}")
    return out


@contextmanager
def without_run_plots() -> Iterator[None]:
    """Each run's own accuracy.png costs as much as its training here and lands in a deleted temp folder."""
    original = sim.run.plot_accuracy
    sim.run.plot_accuracy = lambda *_, **__: None
    try:
        yield
    finally:
        sim.run.plot_accuracy = original


class Composer:
    """Hydra's compose costs more than a run here (0.2-0.6 s), so compose each setting and each rule
    once and assemble: the strategy and preagg groups are self-contained nodes of the config."""

    def __init__(self, rounds: int):
        self.rounds = rounds
        self.settings: dict[tuple[str, int, str, str], DictConfig] = {}
        self.rules: dict[tuple[str, int, str], DictConfig] = {}

    def __call__(self, mode: str, f: int, het: str, rule: str, attack: str, seed: int) -> DictConfig:
        key = (mode, f, het, attack)
        if key not in self.settings:
            self.settings[key] = compose("config", overrides=overrides(mode, f, het, attack, self.rounds))
        if (mode, f, rule) not in self.rules:
            self.rules[mode, f, rule] = compose("config", overrides=rule_overrides(mode, f, rule))
        cfg = self.settings[key].copy()
        chosen = self.rules[mode, f, rule]
        with open_dict(cfg):
            cfg.strategy, cfg.preagg, cfg.seed = chosen.strategy.copy(), chosen.preagg.copy(), seed
        return cfg


def run_one(cfg) -> dict:
    """Final test accuracy of one run (gossip: mean and worst over honest nodes), or why there is none."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run_experiment(cfg, Path(tmp), progress=False)
        except RunError:  # an infinite model reached an averaging rule
            return {"status": "diverged", "accuracy": math.nan, "wall_s": round(time.perf_counter() - start, 2)}
        except ConfigError as exc:  # a gossip node with more Byzantine neighbours than its rule tolerates
            return {
                "status": f"refused: {exc}"[:120],
                "accuracy": math.nan,
                "wall_s": round(time.perf_counter() - start, 2),
            }
        last = pd.read_csv(Path(tmp) / "metrics.csv").dropna(subset=["test_accuracy"]).iloc[-1]
    return {  # 4 digits tell apart every count of the 360 test images; the CSV stays small
        "status": "ok",
        "accuracy": round(float(last["test_accuracy"]), 4),
        "accuracy_min": round(float(last.get("test_accuracy_min", math.nan)), 4),  # gossip: the worst honest node
        "num_byzantine": int(last.get("num_byzantine", 0)),
        "wall_s": round(time.perf_counter() - start, 2),
    }


def top_attacks(results: pd.DataFrame, grid: str, k: int = 2) -> tuple[str, ...]:
    """Infinity plus the k attacks most often a rule's worst (mean over seeds) among the others in ``grid``.

    Infinity's outcome needs no search (every averaging step turns it into a non-finite model, a
    robust one discards it), so it would only crowd out the attacks that rank the rules.
    """
    finite = results[(results.grid == grid) & (results.attack != "infinity")]
    counts = Counter(worst_table(finite).worst_attack)
    return ("infinity", *(a for a, _ in counts.most_common(k)))


def sweep(grid: Grid, results: pd.DataFrame, seeds: list[int], composer: Composer, csv: Path) -> pd.DataFrame:
    attacks = grid.attacks or top_attacks(results, grid.top_from)
    cells = [
        (f, het, rule, attack, seed)
        for f, het, rule, attack, seed in itertools.product(grid.fs, grid.hets, grid.rules, attacks, seeds)
        if tolerated(rule, grid.mode, f)
    ]
    done = set()
    if len(results):
        done = set(
            results[results.grid == grid.name][["f", "heterogeneity", "rule", "attack", "seed"]].itertuples(
                index=False, name=None
            )
        )
    todo = [c for c in cells if c not in done]
    bar = tqdm(todo, desc=f"{grid.name} f={','.join(map(str, grid.fs))}", dynamic_ncols=True)
    for f, het, rule, attack, seed in bar:
        cfg = composer(grid.mode, f, het, rule, attack, seed)
        row = {"grid": grid.name, "mode": grid.mode, "f": f, "heterogeneity": het, "rule": rule, "attack": attack}
        row |= {"seed": seed, "num_clients": int(cfg.num_clients), **run_one(cfg)}
        bar.set_postfix(rule=rule, attack=attack, acc=f"{row['accuracy']:.3f}")
        pd.DataFrame([row]).to_csv(csv, mode="a", header=not csv.exists(), index=False)
        results = pd.concat([results, pd.DataFrame([row])], ignore_index=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="three short runs (seconds), for the test")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of byzantine.csv, .md and .png")
    parser.add_argument("--fresh", action="store_true", help="discard an existing byzantine.csv instead of resuming")
    parser.add_argument("--reduced", action="store_true", help="FL at f = 2 with 8 attacks only (a shared machine)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the md and PNGs from the CSV")
    args = parser.parse_args()
    seeds, rounds = ([0], 8) if args.smoke else ([0, 1, 2], ROUNDS)
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "byzantine.csv"
    if args.fresh and csv.exists():
        csv.unlink()
    results = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    start = time.perf_counter()
    if not args.report_only:
        with initialize_config_module(config_module="configs", version_base="1.3"), without_run_plots():
            composer = Composer(rounds)
            for grid in grids(args.smoke, args.reduced):
                results = sweep(grid, results, seeds, composer, csv)
    flags = [flag for flag, on in (("--smoke", args.smoke), ("--reduced", args.reduced)) if on]
    command = " ".join(["python experiments/byzantine.py", *flags])
    minutes = float(results.wall_s.sum()) / 60 if len(results) else (time.perf_counter() - start) / 60
    write_report(results, args.out, command, minutes, seeds, rounds)
    print(f"{len(results)} runs; results in {csv}, report in {args.out / 'byzantine.md'}")


if __name__ == "__main__":
    main()
