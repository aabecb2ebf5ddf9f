"""Tables and figures of experiments/heterogeneity.py from the frames of ``heterogeneity_sweep``.

``write_report`` writes heterogeneity.md (keeping its hand-written sections), ``plot`` one figure per data
set, and ``seed_table`` the across-seeds check: each rule's paired difference from FedAvg per seed, with
mean, std, range and wins out of N, so a claim is stated with its spread.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from heterogeneity_sweep import BASE, DATASETS, OBJECTIVES, REGIME_TEXT, REGIMES, Plan, config_label


def pm(values: pd.Series, digits: int = 3) -> str:
    std = values.std() if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def regime_table(runs: pd.DataFrame, chosen: set[str]) -> list[str]:
    lines = [
        "| strategy | test accuracy | pooled train loss | excess over f* (pooled) | excess over f* (client mean) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for config, group in runs.groupby("config", sort=False):
        mark = " *" if config in chosen else ""
        cells = [pm(group["test_accuracy"]), pm(group["train_loss_pooled"])]
        cells += [pm(group[f"{o}_excess"], 4) for o in OBJECTIVES]
        lines.append(f"| {config}{mark} | " + " | ".join(cells) + " |")
    return lines


def paired(runs: pd.DataFrame, base: pd.DataFrame, column: str, digits: int) -> str:
    """Mean ± std over seeds of ``column`` minus FedAvg's on the same seed (the data follow the seed)."""
    delta = runs.set_index("seed")[column] - base.set_index("seed")[column]
    return f"{delta.mean():+.{digits}f} ± {delta.std() if len(delta) > 1 else 0.0:.{digits}f}"


def summary_table(runs: pd.DataFrame, picks: pd.DataFrame, dataset: str, regimes: tuple[str, ...]) -> list[str]:
    """Best grid value per strategy and regime; each metric also as a paired difference from FedAvg."""
    lines = [
        "| regime | strategy | test accuracy | Δ vs FedAvg | excess (pooled) | Δ vs FedAvg"
        " | excess (client mean) | Δ vs FedAvg |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    metrics = (("test_accuracy", 3), ("train_loss_pooled_excess", 4), ("train_loss_clients_excess", 4))
    for regime in regimes:
        here = runs[(runs.dataset == dataset) & (runs.regime == regime)]
        base = here[here.config == "fedavg"]
        for pick in picks[(picks.dataset == dataset) & (picks.regime == regime)].itertuples():
            group = here[here.config == pick.config]
            cells = [f"{pm(group[col], digits)} | {paired(group, base, col, digits)}" for col, digits in metrics]
            lines.append(f"| {regime} | {pick.config} | " + " | ".join(cells) + " |")
    return lines


SEEDS_TITLE = "Across seeds"


def kept_section(md_path: Path, title: str) -> str | None:
    """The body of the ``## title`` section of an earlier report at the same place (None if none)."""
    if not md_path.exists():
        return None
    match = re.search(rf"\n## {re.escape(title)}\n(.*?)(?=\n## |\Z)", md_path.read_text(), flags=re.S)
    return match.group(1).strip("\n") + "\n" if match else None


def kept_findings(md_path: Path) -> str:
    """The hand-written Findings section of an earlier report at the same place (empty if none)."""
    if not md_path.exists():
        return "_Not written yet: read the tables and figures above._\n"
    return kept_section(md_path, "Findings") or ""


def replace_section(md_path: Path, title: str, body: str, before: str = "Findings") -> None:
    """Put ``body`` as the ``## title`` section of the report: in place of the old one, else before ``## before``."""
    text = md_path.read_text()
    block = f"\n## {title}\n\n{body.strip(chr(10))}\n"
    pattern = rf"\n## {re.escape(title)}\n.*?(?=\n## |\Z)"
    if re.search(pattern, text, flags=re.S):
        text = re.sub(pattern, lambda _: block, text, count=1, flags=re.S)
    elif f"\n## {before}\n" in text:
        text = text.replace(f"\n## {before}\n", f"{block}\n## {before}\n", 1)
    else:
        text = text.rstrip("\n") + "\n" + block
    md_path.write_text(text)


def per_run(curves: pd.DataFrame, rounds: int) -> pd.DataFrame:
    """One row per run: last-tenth and last-half means, and the accuracy's round-to-round std in the last tenth."""
    keys = ["dataset", "regime", "strategy", "config", "seed"]
    cols = ["test_accuracy", *OBJECTIVES]
    tenth = curves[curves["round"] > rounds - max(1, rounds // 10)].groupby(keys, sort=False)
    half = curves[curves["round"] > rounds // 2].groupby(keys, sort=False)[cols].mean().add_suffix("_half")
    runs = tenth[cols].mean().join(half).join(tenth["test_accuracy"].std().rename("test_accuracy_swing"))
    return runs.reset_index()


def paired_deltas(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per (data set, regime, config): ``column`` minus FedAvg's on the same seed, one row per seed."""
    keys = ["dataset", "regime", "seed"]
    base = runs[runs.config == "fedavg"].set_index(keys)[column].rename("base")
    out = runs[runs.config != "fedavg"].join(base, on=keys)
    return out.assign(delta=out[column] - out["base"])[["dataset", "regime", "config", "seed", "delta"]]


def spread(delta: pd.Series, digits: int, better: str) -> str:
    """``mean ± std`` (over seeds), the range and in how many seeds the rule is better (``lower`` / ``higher``)."""
    wins = int((delta < 0).sum() if better == "lower" else (delta > 0).sum())
    std = delta.std() if len(delta) > 1 else 0.0
    return (
        f"{delta.mean():+.{digits}f} ± {std:.{digits}f} | {delta.min():+.{digits}f} .. {delta.max():+.{digits}f}"
        f" | {wins}/{len(delta)}"
    )


def seed_table(runs: pd.DataFrame) -> list[str]:
    """Paired differences from FedAvg over every seed: pooled loss first (steady), then accuracy."""
    measures = (
        ("train_loss_pooled", 4, "lower", "Δ pooled train loss"),
        ("train_loss_clients", 4, "lower", "Δ client-mean loss"),
        ("test_accuracy", 3, "higher", "Δ test accuracy (last tenth)"),
        ("test_accuracy_half", 3, "higher", "Δ test accuracy (last half)"),
    )
    header = "| data set, regime | rule | " + " | ".join(f"{m[3]} | range | better in" for m in measures) + " |"
    lines = [header, "| --- | --- |" + " ---: | --- | ---: |" * len(measures)]
    deltas = {m[0]: paired_deltas(runs, m[0]) for m in measures}
    first = deltas[measures[0][0]]
    for (dataset, regime, config), _ in first.groupby(["dataset", "regime", "config"], sort=False):
        cells = []
        for column, digits, better, _title in measures:
            d = deltas[column]
            here = d[(d.dataset == dataset) & (d.regime == regime) & (d.config == config)]
            cells.append(spread(here["delta"], digits, better))
        lines.append(f"| {dataset}, {regime} | {config} | " + " | ".join(cells) + " |")
    return lines


def swing_line(runs: pd.DataFrame) -> str:
    """How much each rule's test accuracy moves from one round to the next at the end of the runs."""
    parts = []
    for (d, r, c), g in runs.groupby(["dataset", "regime", "config"], sort=False):
        if g.test_accuracy_swing.isna().all():  # one round in the last tenth (a smoke run): no spread
            continue
        worst = g.loc[g.test_accuracy_swing.idxmax()]
        parts.append(
            f"{d}, {r}, {c}: {g.test_accuracy_swing.mean():.3f}"
            f" (seed {int(worst.seed)}: {worst.test_accuracy_swing:.3f})"
        )
    return (
        "Std of the test accuracy over the rounds of the last tenth, mean over seeds (and the largest): "
        + "; ".join(parts)
        + "."
    )


def write_report(out: Path, plan: Plan, runs, picks, best, command: str, minutes: float) -> None:
    setup = ", ".join(b for b in BASE if b != "progress=false")
    lines = [
        "# Unequal local work: FedAvg, FedProx, SCAFFOLD, FedDyn, FedNova",
        "",
        "```bash",
        f"OMP_NUM_THREADS=1 nice {command}",
        "```",
        "",
        f"Measured: {minutes:.1f} min wall on a shared 2-core machine, {len(plan.jobs())} runs.",
        "",
        "## Setup",
        "",
        f"- Every run: {setup}, SGD without momentum, {plan.rounds} rounds, seeds {list(plan.seeds)}"
        " (the data follow the seed).",
        *(f"- `{d}`: {', '.join(DATASETS[d])}." for d in plan.datasets),
        *(f"- regime `{r}` ({', '.join(REGIMES[r])}): {REGIME_TEXT[r]}." for r in plan.regimes),
        "- Grid (nothing else tuned): " + ", ".join(config_label(n, e) for n, e in plan.grid) + ";"
        " other strategy settings are the defaults in configs/strategy/ (server_lr 1, weighting by samples)."
        " `*` marks the grid value with the best mean validation accuracy, used in the summary and the figures.",
        "- Accuracy and losses are means over the last tenth of the rounds, then mean ± std over seeds."
        " Pooled train loss: the global model's cross-entropy on all training rows (what FedAvg and FedNova with"
        " sample weights minimise); client mean: the mean of each client's own mean loss (what SCAFFOLD's and"
        " FedDyn's plain means minimise). f*: their minima by L-BFGS on the pooled rows.",
        "",
        "Client sizes and optima per seed:",
        "",
        "| data set | seed | training rows | rows per client | f* pooled | f* client mean |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in best.itertuples():
        lines.append(
            f"| {row.dataset} | {row.seed} | {row.rows} | {row.min_rows}..{row.max_rows} |"
            f" {row.train_loss_pooled_opt:.4f} | {row.train_loss_clients_opt:.4f} |"
        )
    separable = sorted(set(best[best.train_loss_pooled_opt < 1e-3].dataset))
    if separable:
        lines += [
            "",
            f"On {', '.join(separable)} the pooled training rows are linearly separable (L-BFGS drives the loss to"
            " 0): f* is 0 and the excess is the loss itself.",
        ]
    lines += ["", "## Results", ""]
    for dataset in plan.datasets:
        lines += [
            f"### {dataset}: summary (best grid value per strategy; Δ: paired difference from FedAvg per seed)",
            "",
        ]
        lines += summary_table(runs, picks, dataset, plan.regimes)
        lines += ["", f"![curves on {dataset}](heterogeneity_{dataset}.png)", ""]
        for regime in plan.regimes:
            here = runs[(runs.dataset == dataset) & (runs.regime == regime)]
            mine = picks[(picks.dataset == dataset) & (picks.regime == regime)]
            lines += [f"#### {dataset}, {regime}: {REGIME_TEXT[regime]}", ""]
            lines += regime_table(here, set(mine.config)) + [""]
    seeds = kept_section(out / "heterogeneity.md", SEEDS_TITLE)
    if seeds is not None:  # written by --seed-check; a rerun of the grid keeps it
        lines += [f"## {SEEDS_TITLE}", "", seeds]
    lines += ["## Findings", "", kept_findings(out / "heterogeneity.md")]
    (out / "heterogeneity.md").write_text("\n".join(lines))


def plot(out: Path, plan: Plan, curves: pd.DataFrame, picks: pd.DataFrame, best: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = curves.merge(best[["dataset", "seed", "train_loss_pooled_opt"]], on=["dataset", "seed"])
    curves["excess"] = curves["train_loss_pooled"] - curves["train_loss_pooled_opt"]
    for dataset in plan.datasets:
        fig, axes = plt.subplots(len(plan.regimes), 2, figsize=(11, 3.2 * len(plan.regimes)), squeeze=False)
        for (acc_ax, loss_ax), regime in zip(axes, plan.regimes, strict=True):
            mine = picks[(picks.dataset == dataset) & (picks.regime == regime)]
            for config in mine.config:
                run = curves[(curves.dataset == dataset) & (curves.regime == regime) & (curves.config == config)]
                # FedAvg on top, dashed: FedProx with a small mu and FedNova with equal steps lie on it
                style = {"color": "black", "linestyle": "--", "zorder": 3} if config == "fedavg" else {}
                for ax, column in ((acc_ax, "test_accuracy"), (loss_ax, "excess")):
                    stats = run.groupby("round")[column].agg(["mean", "std"]).fillna(0.0)
                    line = ax.plot(stats.index, stats["mean"], label=config, linewidth=1.2, **style)[0]
                    ax.fill_between(
                        stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=line.get_color(), alpha=0.12, linewidth=0,
                    )  # fmt: skip
            loss_ax.set_yscale("log")
            acc_ax.set(title=f"{dataset}, {regime}: test accuracy", xlabel="round", ylabel="test accuracy")
            loss_ax.set(
                title=f"{dataset}, {regime}: pooled training loss - f*", xlabel="round", ylabel="excess loss (log)"
            )
            acc_ax.set_ylim(
                bottom=max(0.0, float(curves[curves.dataset == dataset].test_accuracy.quantile(0.05)) - 0.05)
            )
            loss_ax.legend(fontsize=7)
        fig.suptitle(f"{dataset}: mean over seeds {list(plan.seeds)}, band ± 1 std (f* of each seed's data)")
        fig.tight_layout()
        fig.savefig(out / f"heterogeneity_{dataset}.png", dpi=110)
        plt.close(fig)
