"""The tables and figures of experiments/system_heterogeneity.md, from the three CSVs system_heterogeneity.py writes.

Every number is a mean ± sample std (ddof=1) over seeds; "k/n" counts the seeds that reached the target within
the run's budget, and the time to target is averaged over those. Figures draw the mean over seeds on the union of
the runs' evaluation times (each run interpolated linearly between its own evaluations) with a min-max band.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Client updates one server step (a row's round) of each method consumes.
UPDATES_PER_STEP = {"FedAvg": 10, "FedBuff": 5, "FedAsync": 1}
COLORS = {
    "FedAvg": "C0",
    "FedBuff": "C1",
    "FedAsync": "C2",
    "wait for all": "C0",
    "deadline 0.5 s": "C3",
    "deadline 0.3 s": "C4",
    "over-selection 1.3": "C1",
    "FL": "C0",
    "sync gossip": "C2",
    "async gossip": "C5",
}
FINDINGS = "## Findings"
HIGH_TARGET = 0.92  # a second, harder target for part 1, read off the curves


def pm(values: pd.Series, digits: int = 3) -> str:
    v = values.dropna()
    if v.empty:
        return "—"
    std = f"{v.std(ddof=1):.{digits}g}" if len(v) > 1 else "—"
    return f"{v.mean():.{digits}g} ± {std}"


def to_target(g: pd.DataFrame, column: str = "time_to_target", digits: int = 3) -> str:
    hit = g[column].dropna()
    return f"not reached (0/{len(g)})" if hit.empty else f"{pm(hit, digits)} ({len(hit)}/{len(g)})"


def acc_at(curves: pd.DataFrame, t: float) -> pd.Series:
    """Each run's test accuracy at simulated time ``t`` (linear between its evaluations), by seed."""
    return curves.groupby("seed").apply(lambda c: float(np.interp(t, c["time_s"], c["test_accuracy"])))


def time_to(curves: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per seed: the first evaluated time_s with test accuracy >= ``target`` (NaN: never), as column ``t``."""
    first = curves[curves.test_accuracy >= target].groupby("seed").time_s.min()
    return pd.DataFrame({"t": first.reindex(sorted(curves.seed.unique()))})


def _mean_band(curves: pd.DataFrame) -> tuple[np.ndarray, ...]:
    runs = [(c["time_s"].to_numpy(float), c["test_accuracy"].to_numpy(float)) for _, c in curves.groupby("seed")]
    grid = np.unique(np.concatenate([x for x, _ in runs]))
    ys = np.vstack([np.interp(grid, x, y, left=np.nan, right=np.nan) for x, y in runs])
    keep = ~np.isnan(ys).all(0)
    ys, grid = ys[:, keep], grid[keep]
    return grid, np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)


def _panel(ax, curves: pd.DataFrame, methods: list[str], target: float, title: str, xmax: float | None = None) -> None:
    for method in methods:
        c = curves[curves["method"] == method]
        if c.empty:
            continue
        grid, mean, lo, hi = _mean_band(c)
        ax.plot(grid, mean, color=COLORS[method], lw=1.8, label=method)
        ax.fill_between(grid, lo, hi, color=COLORS[method], alpha=0.18, linewidth=0)
    ax.axhline(target, color="0.4", ls="--", lw=0.9, label=f"target {target:g}")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylim(0.0, 1.0)
    if xmax is not None:
        ax.set_xlim(0, xmax)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")


def _figure(panels: int) -> tuple[Figure, np.ndarray]:
    """``panels`` axes in one row (four: two rows of two), y labelled on the left."""
    ncols = 2 if panels == 4 else panels
    nrows = -(-panels // ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.0 * nrows + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for ax in grid[:, 0]:
        ax.set_ylabel("test accuracy")
    return fig, grid.ravel()


def fedbuff_section(runs: pd.DataFrame, curves: pd.DataFrame, target: float, out: Path) -> str:
    runs, curves = runs[runs.part == "fedbuff"], curves[curves.part == "fedbuff"]
    settings = list(dict.fromkeys(runs.setting))
    methods = list(UPDATES_PER_STEP)
    rows = [
        "| devices | method | time_s to target (reached) | speed-up vs FedAvg | client updates to target | "
        f"time_s to {HIGH_TARGET:g} (reached) | acc at T | T (s) | final acc (400 updates) | time_s of 400 updates |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    fig, axes = _figure(len(settings))
    for ax, setting in zip(axes, settings, strict=True):
        r, c = runs[runs.setting == setting], curves[curves.setting == setting]
        t_common = float(r.final_time_s.min())  # every run of the panel has data up to here
        base = r[r.method == "FedAvg"].time_to_target.dropna().mean()
        for method in methods:
            g = r[r.method == method]
            hit = g.time_to_target.dropna()
            speedup = f"{base / hit.mean():.2f}×" if len(hit) and not np.isnan(base) else "—"
            updates = g.rounds_to_target * UPDATES_PER_STEP[method]
            acc_t = acc_at(c[c.method == method], t_common)
            high = to_target(time_to(c[c.method == method], HIGH_TARGET), "t")
            rows.append(
                f"| {setting} | {method} | {to_target(g)} | {speedup} | {to_target(g.assign(u=updates), 'u')} | "
                f"{high} | {pm(acc_t)} | {t_common:.3g} | {pm(g.final_acc)} | {pm(g.final_time_s)} |"
            )
        cut = 3 * float(r[r.method == "FedBuff"].final_time_s.max())  # FedAvg's tail would squeeze the rest
        longest = float(r.final_time_s.max())
        title = f"devices: {setting}" + (f" (FedAvg runs to {longest:.0f} s)" if longest > cut else "")
        _panel(ax, c, methods, target, title, xmax=min(cut, longest))
    fig.suptitle(
        "FedAvg (10 clients/round) vs FedBuff (C=10, K=5) vs FedAsync (C=10), 400 client updates each;\n"
        "mean over seeds (line), min–max (band)",
        fontsize=11,
    )
    fig.savefig(out / "system_heterogeneity_fedbuff.png", dpi=110)
    return "\n".join(rows) + "\n"


def _tertile_shares(clients: pd.DataFrame) -> pd.DataFrame:
    """Kept / selected per speed tertile (by task time within each seed), mean ± std over seeds."""
    c = clients.copy()
    c["tertile"] = c.groupby(["method", "seed"])["task_s"].transform(
        lambda s: pd.qcut(s.rank(method="first"), 3, labels=["fast", "middle", "slow"])
    )
    per_seed = c.groupby(["method", "seed", "tertile"], observed=True)[["kept", "selected"]].sum()
    per_seed["share"] = per_seed["kept"] / per_seed["selected"]
    return per_seed.reset_index()


def _label_drift(clients: pd.DataFrame) -> pd.DataFrame:
    """Per method and seed: share of selected samples lost, and the total-variation distance between the label mix
    of the kept updates' data and that of the selected clients' data (each weighted by samples and times chosen)."""
    rows = []
    for (method, seed), g in clients.groupby(["method", "seed"]):
        labels = np.vstack([np.array(s.split(), dtype=float) for s in g["labels"]])
        sel = (labels * g["selected"].to_numpy()[:, None]).sum(0)
        kept = (labels * g["kept"].to_numpy()[:, None]).sum(0)
        lost = 1 - (g["samples"] * g["kept"]).sum() / (g["samples"] * g["selected"]).sum()
        tv = 0.5 * np.abs(kept / kept.sum() - sel / sel.sum()).sum()
        rows.append(
            {
                "method": method,
                "seed": seed,
                "lost": lost,
                "tv": tv,
                "never": int(((g["kept"] == 0) & (g["selected"] > 0)).sum()),
            }
        )
    return pd.DataFrame(rows)


def deadline_section(runs: pd.DataFrame, curves: pd.DataFrame, clients: pd.DataFrame, target: float, out: Path) -> str:
    runs, curves = runs[runs.part == "deadline"], curves[curves.part == "deadline"]
    methods = list(dict.fromkeys(runs.method))
    shares, drift = _tertile_shares(clients), _label_drift(clients)
    rows = [
        "| rule | time_s to target (reached) | rounds to target | final acc | time_s of 40 rounds | "
        "dropped / round | kept share fast / middle / slow | samples lost | label TV kept vs selected | "
        "clients never kept |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for method in methods:
        g = runs[runs.method == method]
        s = shares[shares.method == method]
        tert = " / ".join(f"{s[s.tertile == t].share.mean():.2f}" for t in ("fast", "middle", "slow"))
        d = drift[drift.method == method]
        rows.append(
            f"| {method} | {to_target(g)} | {to_target(g, 'rounds_to_target')} | {pm(g.final_acc)} | "
            f"{pm(g.final_time_s)} | {pm(g.dropped / 40)} | {tert} | {pm(d.lost)} | {pm(d.tv)} | {pm(d.never)} |"
        )
    fig, axes = _figure(2)
    shortest_long = float(runs.groupby("method").final_time_s.median().nsmallest(2).iloc[-1])
    _panel(axes[0], curves, methods, target, "accuracy against simulated time", xmax=1.1 * shortest_long)
    ax, width = axes[1], 0.8 / len(methods)
    for i, method in enumerate(methods):
        s = shares[shares.method == method].groupby("tertile", observed=True)["share"]
        mean, lo, hi = s.mean(), s.min(), s.max()
        x = np.arange(3) + (i - (len(methods) - 1) / 2) * width
        ax.bar(x, mean, width, color=COLORS[method], label=method, yerr=[mean - lo, hi - mean], capsize=3)
    ax.set_xticks(range(3), ["fastest third", "middle third", "slowest third"])
    ax.set_ylabel("share of selections whose update was kept")
    ax.set_title("whose updates arrive (bars: min–max over seeds)", fontsize=11)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=9, loc="lower left")
    fig.suptitle(
        "FedAvg, 10 clients/round on lognormal devices: waiting for all, a deadline, over-selection (13 → 10);"
        "\nleft: mean over seeds (line), min–max (band); right: clients in thirds by task time",
        fontsize=11,
    )
    fig.savefig(out / "system_heterogeneity_deadline.png", dpi=110)
    return "\n".join(rows) + "\n"


def gossip_section(runs: pd.DataFrame, curves: pd.DataFrame, target: float, out: Path) -> str:
    runs, curves = runs[runs.part == "gossip"], curves[curves.part == "gossip"]
    settings = list(dict.fromkeys(runs.setting))
    methods = list(dict.fromkeys(runs.method))
    rows = [
        "| server link | method | time_s to target (reached) | final acc | time_s at the end | bytes to target |",
        "|---|---|--:|--:|--:|--:|",
    ]
    fig, axes = _figure(len(settings))
    for ax, setting in zip(axes, settings, strict=True):
        r = runs[runs.setting == setting]
        for method in methods:
            g = r[r.method == method]
            mb = g.bytes_to_target / 1e6
            rows.append(
                f"| {setting} | {method} | {to_target(g)} | {pm(g.final_acc)} | {pm(g.final_time_s)} | "
                f"{pm(mb) + ' MB' if mb.notna().any() else 'not reached'} |"
            )
        _panel(ax, curves[curves.setting == setting], methods, target, setting)
    fig.suptitle(
        "FL (FedAvg, 10 of 30 clients/round) vs gossip (30 nodes, random 4-regular graph) on the same "
        "devices;\nFL: global model, gossip: mean node accuracy; mean over seeds (line), min–max (band)",
        fontsize=11,
    )
    fig.savefig(out / "system_heterogeneity_gossip.png", dpi=110)
    return "\n".join(rows) + "\n"


def kept_findings(md: Path) -> str:
    if not md.exists():
        return f"{FINDINGS}\n\n(to be written from the tables above)\n"
    text = md.read_text()
    found = re.search(rf"^{FINDINGS}\b.*", text, flags=re.S | re.M)
    return found.group(0) if found else f"{FINDINGS}\n\n(to be written from the tables above)\n"


def write_report(
    runs: pd.DataFrame, curves: pd.DataFrame, clients: pd.DataFrame, out: Path, target: float, command: str
) -> None:
    seeds = sorted(runs.seed.unique())
    parts = []
    if (runs.part == "fedbuff").any():
        parts.append(
            "## 1. FedBuff against synchronous FedAvg and FedAsync\n\n"
            + fedbuff_section(runs, curves, target, out)
            + "\n![accuracy against simulated time](system_heterogeneity_fedbuff.png)\n"
        )
    if (runs.part == "deadline").any():
        parts.append(
            "## 2. Deadlines and over-selection against waiting for all\n\n"
            + deadline_section(runs, curves, clients, target, out)
            + "\n![accuracy against time, kept share by speed](system_heterogeneity_deadline.png)\n"
        )
    if (runs.part == "gossip").any():
        parts.append(
            "## 3. FL against synchronous and asynchronous gossip on the same devices\n\n"
            + gossip_section(runs, curves, target, out)
            + "\n![FL and gossip against simulated time](system_heterogeneity_gossip.png)\n"
        )
    md = out / "system_heterogeneity.md"
    head = (
        f"# Simulated time under device heterogeneity\n\nGenerated by `{command}` "
        f"({len(runs)} rows, seeds {', '.join(map(str, seeds))}; target test accuracy {target:g}). "
        "Numbers are mean ± std over seeds (ddof=1); (k/n): seeds that reached the target, whose mean the "
        "time is.\n\n"
        "Setup: scikit-learn digits, an MLP (64 hidden units), 30 clients with Dirichlet(0.5) label skew, "
        "2 local epochs of SGD (batch 10, lr 0.1); the system model `system=lognormal` (docs/system.md): "
        "per-sample compute time, up/down bandwidth and latency drawn per client as median × exp(σ N(0,1)) "
        "(compute median 2 ms/sample, σ=1; σ=2 where stated), a task = download + compute + upload. "
        "`system=constant` gives every client the same speed, so task times differ only by the clients' data "
        "sizes. time_s is simulated seconds; the runs of one seed and one system setting share the devices. "
        "Time to target is the time_s of the first evaluation at or above it (`sim.reporting.to_target`, as "
        "`python -m sim.report --target` computes it).\n\n"
    )
    md.write_text(head + "\n".join(parts) + "\n" + kept_findings(md))
