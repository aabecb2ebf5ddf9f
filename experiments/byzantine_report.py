"""The Byzantine sweep's report: byzantine.md tables, heatmaps and the literature checks, from byzantine.csv.

    python experiments/byzantine_report.py [--out DIR]

rewrites DIR/byzantine.md (keeping its "## Findings" section) and DIR/byzantine_*.png from DIR/byzantine.csv,
as ``python experiments/byzantine.py --report-only`` does.
"""

from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import pandas as pd
from byzantine_grid import (
    ATTACKS,
    CHANCE,
    DEGREE,
    DIVERGED,
    FL_RULES,
    GOSSIP_RULES,
    HERE,
    HETEROGENEITY,
    HONEST_FL,
    HONEST_GOSSIP,
    NNM_FL,
    ROUNDS,
)


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
    fl_full = sorted(results[results.grid.isin(["fl_full", "fl_reduced", "fl_smoke"])].f.unique())
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
    parser.add_argument("--out", type=Path, default=HERE, help="folder of byzantine.csv, .md and .png")
    parser.add_argument("--command", default="python experiments/byzantine.py", help="the sweep command to cite")
    args = parser.parse_args()
    results = pd.read_csv(args.out / "byzantine.csv")
    seeds = sorted(int(s) for s in results.seed.unique())
    write_report(results, args.out, args.command, float(results.wall_s.sum()) / 60, seeds, ROUNDS)


if __name__ == "__main__":
    main()
