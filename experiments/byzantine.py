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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict
from tqdm import tqdm

import sim.run
from sim.errors import ConfigError, RunError
from sim.run import run_experiment

HERE = Path(__file__).resolve().parent
HONEST_FL, HONEST_GOSSIP, DEGREE, ROUNDS = 10, 12, 6, 20
COMMON = (
    "progress=false",
    "dataset=digits",
    "model=logreg",
    "backend=vectorized",
    "train.epochs=1",
    "train.batch_size=10",
    "train.lr=0.1",
)
HETEROGENEITY = {
    "iid": ("partition=iid",),
    "dir1": ("partition=dirichlet", "partition.alpha=1.0"),
    "dir0.1": ("partition=dirichlet", "partition.alpha=0.1"),
}
ATTACKS = {
    "none": (),
    "sign_flip": ("attack=sign_flip",),
    "label_flip": ("attack=label_flip",),
    "gaussian": ("attack=gaussian",),
    "ipm": ("attack=ipm",),
    "alie": ("attack=alie",),
    "alie_z1.5": ("attack=alie", "attack.z=1.5"),
    "min_max": ("attack=min_max",),
    "min_sum": ("attack=min_sum",),
    "mimic": ("attack=mimic",),
    "infinity": ("attack=infinity",),
}
ROBUST_FL = (
    "median",
    "trimmed_mean",
    "meamed",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
)
NNM_FL = ("median", "trimmed_mean", "krum")
FL_RULES = ("fedavg", *ROBUST_FL, *(f"nnm+{rule}" for rule in NNM_FL))
ALIE_RULES = ("fedavg", "median", "krum", "nnm+median", "nnm+krum")  # the literature's ALIE claim, at f = 1 and 3
GOSSIP_RULES = ("gossip_avg", "clipped_gossip", "median", "trimmed_mean")
CHANCE = 0.1  # a diverged (NaN) model: counted as a constant prediction on 10 balanced classes
DIVERGED = -1.0  # in the printed tables: every seed diverged


@dataclass(frozen=True)
class Grid:
    """One sweep: every rule x attack x heterogeneity x seed at each f (``attacks=None``: the top ones)."""

    name: str
    mode: str
    fs: tuple[int, ...]
    rules: tuple[str, ...]
    attacks: tuple[str, ...] | None
    top_from: str = ""  # attacks=None: the attacks most often worst in this grid's results
    hets: tuple[str, ...] = tuple(HETEROGENEITY)


def grids(smoke: bool) -> list[Grid]:
    """The sweeps, most informative first, so that a cut-short run still answers the main questions."""
    if smoke:
        return [
            Grid("fl_smoke", "federated", (2,), ("fedavg",), ("none", "gaussian"), hets=("iid",)),
            Grid("gossip_smoke", "gossip", (2,), ("clipped_gossip",), ("sign_flip",), hets=("iid",)),
        ]
    every = tuple(ATTACKS)
    return [
        Grid("fl_full", "federated", (2,), FL_RULES, every),
        Grid("gossip_full", "gossip", (2,), GOSSIP_RULES, every),
        Grid("fl_full", "federated", (4,), FL_RULES, every),
        Grid("fl_worst", "federated", (1, 3), FL_RULES, None, top_from="fl_full"),
        Grid("gossip_worst", "gossip", (4,), GOSSIP_RULES, None, top_from="gossip_full"),
        Grid("fl_alie", "federated", (1, 3), ALIE_RULES, ("none", "alie", "alie_z1.5")),
    ]


def tolerated(rule: str, mode: str, f: int) -> bool:
    """Skip what a rule refuses by construction (Bulyan needs n >= 4f + 3) instead of logging refusals."""
    return not (rule == "bulyan" and HONEST_FL + f < 4 * f + 3)


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


def effective(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy with diverged runs at chance level; refused runs dropped."""
    out = results[results.status.isin(["ok", "diverged"])].copy()
    out.loc[out.status == "diverged", "accuracy"] = CHANCE
    return out


def cell_means(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each (mode, f, heterogeneity, rule, attack)."""
    keys = ["mode", "f", "heterogeneity", "rule", "attack"]
    runs = effective(results).assign(diverged=lambda d: d.status == "diverged")
    means = runs.groupby(keys).agg(
        mean=("accuracy", "mean"), std=("accuracy", "std"), count=("accuracy", "count"), diverged=("diverged", "all")
    )
    means["shown"] = means["mean"].where(~means.diverged, DIVERGED)  # what the tables print
    return means.reset_index()


def worst_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per (mode, f, heterogeneity, rule): the attack with the lowest mean accuracy, over real attacks."""
    means = cell_means(results)
    means = means[means.attack != "none"]
    if means.empty:
        return pd.DataFrame(columns=["mode", "f", "heterogeneity", "rule", "worst", "worst_attack", "shown"])
    idx = means.groupby(["mode", "f", "heterogeneity", "rule"])["mean"].idxmin()
    worst = means.loc[idx].rename(columns={"mean": "worst", "attack": "worst_attack"})
    return worst.drop(columns=["std", "count", "diverged"]).reset_index(drop=True)


def fmt(value: float) -> str:
    return "-" if math.isnan(value) else "div" if value == DIVERGED else f"{value:.3f}"


def matrix(means: pd.DataFrame, worsts: dict[str, pd.DataFrame], mode: str, f: int, het: str) -> pd.DataFrame:
    """Rule x attack mean accuracy for one (mode, f, heterogeneity), then one column per worst case."""
    part = means[(means["mode"] == mode) & (means.f == f) & (means.heterogeneity == het)]
    table = part.pivot(index="rule", columns="attack", values="shown")
    order = [r for r in (FL_RULES if mode == "federated" else GOSSIP_RULES) if r in table.index]
    table = table.loc[order, [a for a in ATTACKS if a in table.columns]]
    for column, worst in worsts.items():
        table[column] = lowest(worst, mode, f, het).shown.reindex(table.index)
    return table


def lowest(worst: pd.DataFrame, mode: str, f: int, het: str) -> pd.DataFrame:
    return worst[(worst["mode"] == mode) & (worst.f == f) & (worst.heterogeneity == het)].set_index("rule")


def markdown(table: pd.DataFrame, attacks: dict[str, pd.Series] | None = None) -> list[str]:
    """A Markdown table; ``attacks`` names, for a worst-case column, the attack behind each cell."""
    head = ["rule", *table.columns]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(table.columns)]
    for rule, row in table.iterrows():
        cells = [fmt(v) for v in row]
        for column, worst_attack in (attacks or {}).items():
            if rule in worst_attack.index:
                cells[list(table.columns).index(column)] += f" ({worst_attack[rule]})"
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return lines


def heatmap(tables: dict[str, pd.DataFrame], path: Path, title: str, summaries: int = 0) -> None:
    """One panel per table (rule rows, attack columns, worst last); colours from 0.5 (and below) to 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(tables))
    rows = math.ceil(len(tables) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 0.45 * 13 * rows + 1), squeeze=False)
    for ax, (name, table) in zip(axes.flat, tables.items(), strict=False):
        ax.imshow(table.to_numpy(dtype=float), vmin=0.5, vmax=1.0, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(table.columns)), table.columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(table.index)), table.index, fontsize=7)
        if summaries:  # a line before the worst-case columns
            ax.axvline(len(table.columns) - summaries - 0.5, color="black", linewidth=1.5)
        for (i, j), value in pd.DataFrame(table.to_numpy()).stack().items():
            text = fmt(value).replace("0.", ".")
            ax.text(j, i, text, ha="center", va="center", fontsize=6)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(tables) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def literature_checks(means: pd.DataFrame, worst: pd.DataFrame) -> list[str]:
    """The numbers behind the two claims: ALIE against median / Krum at small f, NNM under heterogeneity.

    ``worst`` is taken without the infinity attack: NNM's output is non-finite under it (see the report),
    which would hide what NNM does against the attacks that rank the rules.
    """
    fl = means[means["mode"] == "federated"]
    lines = [
        "| f | heterogeneity | rule | no attack | alie | alie_z1.5 | worst attack (its accuracy) "
        "| rank of ALIE (1 = worst) |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for f, het, rule in itertools.product(
        sorted(fl.f.unique()), HETEROGENEITY, ("median", "krum", "nnm+median", "nnm+krum")
    ):
        part = fl[(fl.f == f) & (fl.heterogeneity == het) & (fl.rule == rule)].set_index("attack")["shown"]
        if "alie" not in part or "none" not in part:
            continue
        attacked = part.drop("none").sort_values()  # DIVERGED first
        rank = min(list(attacked.index).index(a) + 1 for a in ("alie", "alie_z1.5") if a in attacked.index)
        z15 = fmt(part["alie_z1.5"]) if "alie_z1.5" in part else "-"
        lines.append(
            f"| {f} | {het} | {rule} | {fmt(part['none'])} | {fmt(part['alie'])} | {z15} | "
            f"{attacked.index[0]} ({fmt(attacked.iloc[0])}) | {rank} of {len(attacked)} |"
        )
    lines += ["", "| f | heterogeneity | " + " | ".join(f"{r} -> nnm+{r}" for r in NNM_FL) + " |"]
    lines.append("| --- | --- |" + " --- |" * len(NNM_FL))
    w = worst[worst["mode"] == "federated"].set_index(["f", "heterogeneity", "rule"])
    for f, het in itertools.product(sorted(fl.f.unique()), HETEROGENEITY):
        cells = []
        for rule in NNM_FL:
            if (f, het, rule) not in w.index or (f, het, f"nnm+{rule}") not in w.index:
                cells.append("-")
                continue
            plain, mixed = w.loc[(f, het, rule)], w.loc[(f, het, f"nnm+{rule}")]
            gain = mixed.worst - plain.worst
            cells.append(f"{fmt(plain.shown)} -> {fmt(mixed.shown)} ({gain:+.3f})")
        lines.append(f"| {f} | {het} | " + " | ".join(cells) + " |")
    return lines


def diverging(results: pd.DataFrame) -> set[str]:
    """The rules of which every infinity run diverged."""
    inf = results[results.attack == "infinity"]
    return {rule for rule, part in inf.groupby("rule") if (part.status == "diverged").all()}


def worst_overview(worst: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Rule x (f, heterogeneity) worst-case accuracy: ByzFL's summary view."""
    part = worst[worst["mode"] == mode].copy()
    part["setting"] = [f"f={f} {het}" for f, het in zip(part.f, part.heterogeneity, strict=True)]
    order = [f"f={f} {het}" for f in sorted(part.f.unique()) for het in HETEROGENEITY]
    table = part.pivot(index="rule", columns="setting", values="shown")
    rules = [r for r in (FL_RULES if mode == "federated" else GOSSIP_RULES) if r in table.index]
    return table.loc[rules, [c for c in order if c in table.columns]]


def what_ran(results: pd.DataFrame) -> list[str]:
    lines = [
        "| grid | mode | f | rules | attacks | runs | ok | diverged | refused |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for (grid, mode, f), part in results.groupby(["grid", "mode", "f"], sort=False):
        refused = part.status.str.startswith("refused").sum()
        attacks = ", ".join(a for a in ATTACKS if a in set(part.attack))
        lines.append(
            f"| {grid} | {mode} | {f} | {part.rule.nunique()} | {attacks} | {len(part)} | "
            f"{(part.status == 'ok').sum()} | {(part.status == 'diverged').sum()} | {refused} |"
        )
    return lines


def write_report(results: pd.DataFrame, out: Path, command: str, minutes: float, seeds: list[int], rounds: int) -> None:
    means, worst = cell_means(results), worst_table(results)
    finite = worst_table(results[results.attack != "infinity"])  # NNM, clipping and averaging rules diverge on inf
    worsts = {"worst": worst, "worst w/o inf": finite}
    fl_full = sorted(results[results.grid.isin(["fl_full", "fl_smoke"])].f.unique())
    gossip_full = sorted(results[results.grid.isin(["gossip_full", "gossip_smoke"])].f.unique())
    lines = [
        "# Byzantine clients against robust rules, in FL and in gossip",
        "",
        f"Generated by `{command}` ({len(results)} runs, {minutes:.1f} min of run time on a 2-core machine shared with",
        "other jobs, plus Hydra's composition and the report;",
        "one row per run in [byzantine.csv](byzantine.csv)).",
        "",
        "## Setup",
        "",
        "- Data and model: scikit-learn's digits (1,797 images; 20% test, 10% validation), a logistic regression;",
        f"  {rounds} rounds of 1 local epoch (SGD, batch 10, lr 0.1), `backend=vectorized`, seeds "
        + ", ".join(map(str, seeds))
        + ".",
        "- Heterogeneity: `iid`; `dir1`, `dir0.1`: Dirichlet(alpha) label skew over all clients (Byzantine ones hold",
        "  a share of the data too, which they do not use; ByzFL splits the data over the honest clients only).",
        f"- FL: {HONEST_FL} honest clients plus f Byzantine ones, every client in every round",
        "  (`participation=uniform`, `clients_per_round = num_clients`). Robust rules and NNM get `f` fixed to the",
        "  number of Byzantine clients, also in the `none` column (which shows what tolerating f costs without an",
        "  attack: the f extra clients are honest there).",
        f"- Gossip: a random {DEGREE}-regular graph (Metropolis-Hastings weights) of {HONEST_GOSSIP} honest nodes",
        "  plus f Byzantine ones; each node trains, then merges its own model with its neighbours' (Byzantine",
        "  neighbours send models crafted for it). Rules keep `f: null`: each node tolerates its own number of",
        "  Byzantine neighbours. Accuracy is the mean over honest nodes.",
        "- Attacks (docs/attacks.md): their defaults, omniscient as in ByzFL; `alie` uses Baruch et al.'s z for",
        "  the aggregation's n and f (0.11 at f = 1 to 0.57 at f = 4 in FL), `alie_z1.5` ByzFL's default z = 1.5.",
        "  ByzFL's benchmark also tunes ALIE's and IPM's factor per run; this one does not. Rules",
        "  (docs/robust.md): their config defaults.",
        "- Cells: mean final test accuracy over seeds; `div`: the run stopped on a non-finite model (counted as",
        f"  {CHANCE:.2f}, chance level, in the worst case); `-`: not run. `worst`: the lowest seed-mean over the",
        "  attacks (not `none`).",
        "",
        "## What ran",
        "",
        *what_ran(results),
        "",
        "`fl_worst` / `gossip_worst` ran `infinity` plus the two attacks that were most often a rule's worst (infinity",
        "aside) in `fl_full` / `gossip_full`, so their worst case is over those attacks only (an upper bound on the",
        "true worst case). `fl_alie` adds ALIE (both z) and no attack at f = 1 and 3 for the rules of the",
        "literature's ALIE claim.",
    ]
    fl_tables = {
        f"FL f={f} {het}": matrix(means, worsts, "federated", f, het) for f in fl_full for het in HETEROGENEITY
    }
    gossip_tables = {
        f"gossip f={f} {het}": matrix(means, worsts, "gossip", f, het) for f in gossip_full for het in HETEROGENEITY
    }
    for title, tables in (("FL", fl_tables), ("Gossip", gossip_tables)):
        tables = {name: t for name, t in tables.items() if not t.empty}
        if not tables:
            continue
        slug = title.lower()
        heatmap(tables, out / f"byzantine_{slug}.png", f"{title}: mean test accuracy, rule x attack", len(worsts))
        lines += ["", f"## {title}: each rule under each attack", "", f"![{title} heatmaps](byzantine_{slug}.png)"]
        for name, table in tables.items():
            mode = "federated" if title == "FL" else "gossip"
            f, het = int(name.split("f=")[1].split()[0]), name.split()[-1]
            attacks = {column: lowest(w, mode, f, het).worst_attack for column, w in worsts.items()}
            lines += ["", f"### {name}", "", *markdown(table, attacks)]
    overviews = {f"{m}: worst case w/o infinity": worst_overview(finite, m) for m in ("federated", "gossip")}
    overviews = {k: v for k, v in overviews.items() if not v.empty}
    if overviews:
        heatmap(overviews, out / "byzantine_worst.png", "Worst case over the attacks other than infinity")
        lines += ["", "## Worst case over attacks other than infinity, every f", ""]
        lines += ["Under `infinity` every run of " + ", ".join(sorted(diverging(results))) + " stopped on a"]
        lines += ["non-finite model (see Findings); every other rule discarded the infinite models.", ""]
        lines += ["![worst case](byzantine_worst.png)"]
        for name, table in overviews.items():
            lines += ["", f"### {name}", "", *markdown(table)]
    lines += [
        "",
        "## Literature checks (computed from the tables)",
        "",
        *literature_checks(means, finite),
    ]
    md = out / "byzantine.md"
    findings = "## Findings\n\n(to be written from the tables above)\n"
    if md.exists() and "\n## Findings" in md.read_text():
        findings = md.read_text().split("\n## Findings", 1)[1]
        findings = "## Findings" + findings
    md.write_text("\n".join(lines) + "\n\n" + findings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="three short runs (seconds), for the test")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of byzantine.csv, .md and .png")
    parser.add_argument("--fresh", action="store_true", help="discard an existing byzantine.csv instead of resuming")
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
            for grid in grids(args.smoke):
                results = sweep(grid, results, seeds, composer, csv)
    command = "python experiments/byzantine.py" + (" --smoke" if args.smoke else "")
    minutes = float(results.wall_s.sum()) / 60 if len(results) else (time.perf_counter() - start) / 60
    write_report(results, args.out, command, minutes, seeds, rounds)
    print(f"{len(results)} runs; results in {csv}, report in {args.out / 'byzantine.md'}")


if __name__ == "__main__":
    main()
