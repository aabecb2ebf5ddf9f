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
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from torch.func import functional_call
from tqdm.auto import tqdm

import sim.federated as federated
import sim.run as sim_run
from sim.experiment import build_experiment
from sim.training import per_row_losses, steps_per_client

HERE = Path(__file__).resolve().parent
BASE = (
    "progress=false",
    "backend=vectorized",
    "model=logreg",
    "num_clients=30",
    "participation.clients_per_round=10",
    "train.batch_size=10",
)
#: learning rates from FedProx's paper (Synthetic 0.01; MNIST 0.03 for the image data set)
DATASETS = {
    "synthetic": ("dataset=synthetic", "train.lr=0.01"),
    "digits": ("dataset=digits", "partition=dirichlet", "partition.alpha=0.1", "train.lr=0.03"),
}
REGIMES = {
    "equal": ("train.local_steps=10",),
    "random": ("train.local_steps=20", "train.local_steps_min=1"),
    "epochs": ("train.epochs=1",),
}
REGIME_TEXT = {
    "equal": "every client 10 steps (control)",
    "random": "steps drawn uniformly in [1, 20] per client and round",
    "epochs": "1 local epoch: steps = ceil(rows / 10), fixed per client",
}
#: (strategy, overrides): the whole grid; nothing else was tuned
GRID = (
    ("fedavg", ()),
    ("fedprox", ("strategy.mu=0.01",)),
    ("fedprox", ("strategy.mu=0.1",)),
    ("fedprox", ("strategy.mu=1",)),
    ("scaffold", ()),
    ("feddyn", ("strategy.alpha=0.01",)),
    ("feddyn", ("strategy.alpha=0.1",)),
    ("fednova", ()),
)
STRATEGIES = ("fedavg", "fedprox", "scaffold", "feddyn", "fednova")
CURVE_EVERY = 5  # rounds between the rows of heterogeneity_curves.csv
OBJECTIVES = ("train_loss_pooled", "train_loss_clients")


@dataclass(frozen=True)
class Plan:
    datasets: tuple[str, ...]
    regimes: tuple[str, ...]
    grid: tuple[tuple[str, tuple[str, ...]], ...]
    seeds: tuple[int, ...]
    rounds: int

    def jobs(self) -> list[tuple[str, str, str, tuple[str, ...], int]]:
        return [
            (d, r, name, extra, s)
            for d in self.datasets
            for r in self.regimes
            for name, extra in self.grid
            for s in self.seeds
        ]


def config_label(name: str, extra: tuple[str, ...]) -> str:
    return " ".join([name, *(e.removeprefix("strategy.") for e in extra)])


def overrides(dataset: str, regime: str, extra: tuple[str, ...], strategy: str, seed: int, rounds: int) -> list[str]:
    return [
        *BASE,
        *DATASETS[dataset],
        *REGIMES[regime],
        f"strategy={strategy}",
        *extra,
        f"rounds={rounds}",
        f"seed={seed}",
    ]


def compose_config(items: list[str]):
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose("config", overrides=items)


def training_objectives(exp, params: torch.Tensor) -> dict[str, float]:
    """The global model's loss on all training rows pooled, and the mean of the clients' own mean losses."""
    data = exp.data
    losses = per_row_losses(exp.model, exp.layout, params, data.x, data.y, torch.arange(len(data.y)))
    sizes = data.client_sizes
    owner = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    per_client = torch.zeros(len(sizes), dtype=losses.dtype).index_add_(0, owner, losses) / sizes.clamp_min(1)
    return {"train_loss_pooled": float(losses.mean()), "train_loss_clients": float(per_client[sizes > 0].mean())}


@contextmanager
def global_objective_columns() -> Iterator[None]:
    """Every evaluation row also gets :func:`training_objectives`; the per-run accuracy.png is not drawn.

    The FL loop and run_experiment look both functions up per call. Each run writes to a temporary
    folder that is deleted, so drawing its figure (half the cost of a short run) would be wasted.
    """
    original_row, original_plot = federated.evaluation_row, sim_run.plot_accuracy

    def with_objectives(exp, params):
        return {**original_row(exp, params), **training_objectives(exp, params)}

    federated.evaluation_row = with_objectives
    sim_run.plot_accuracy = lambda *args, **kwargs: None
    try:
        yield
    finally:
        federated.evaluation_row, sim_run.plot_accuracy = original_row, original_plot


def row_weights(exp) -> dict[str, torch.Tensor]:
    """Per-row weights whose weighted loss sum is each of :data:`OBJECTIVES`."""
    sizes = exp.data.client_sizes
    per_row_size = torch.repeat_interleave(sizes, sizes).to(torch.float32)
    return {
        "train_loss_pooled": torch.full_like(per_row_size, 1.0 / len(per_row_size)),
        "train_loss_clients": 1.0 / (per_row_size * int((sizes > 0).sum())),
    }


def minimiser(exp, weights: torch.Tensor, iterations: int) -> torch.Tensor:
    """The minimiser of a weighted softmax-regression loss on the pooled rows (convex: L-BFGS from zero)."""
    params = torch.zeros_like(exp.initial_params, requires_grad=True)
    opt = torch.optim.LBFGS(
        [params], max_iter=iterations, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = weighted_loss(exp, params, weights)
        loss.backward()
        return loss

    opt.step(closure)
    return params.detach()


def weighted_loss(exp, params: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    logits = functional_call(exp.model, exp.layout.to_state_dict(params), (exp.data.x,))
    return (F.cross_entropy(logits, exp.data.y, reduction="none") * weights).sum()


def central_optimum(exp, weights: torch.Tensor, iterations: int) -> float:
    with torch.no_grad():
        return float(weighted_loss(exp, minimiser(exp, weights, iterations), weights))


def fixed_points(plan: Plan, iterations: int) -> pd.DataFrame:
    """Where each rule settles in the ``epochs`` regime (small learning rate), scored on both objectives.

    FedAvg and FedProx (small mu) with sample weights and tau_k local steps minimise
    ``sum_k n_k tau_k F_k`` (Wang et al. 2020, Theorem 1): each row weighted by its client's steps.
    FedNova minimises the pooled loss; SCAFFOLD and FedDyn (plain means over clients) the client mean.
    """
    rows = []
    for dataset in plan.datasets:
        for seed in plan.seeds:
            exp = build_experiment(compose_config(overrides(dataset, "epochs", (), "fedavg", seed, 1)))
            sizes = exp.data.client_sizes
            steps = steps_per_client(sizes, exp.train).to(torch.float32)
            per_row_steps = torch.repeat_interleave(steps, sizes)
            targets = {**row_weights(exp), "fedavg_surrogate": per_row_steps / per_row_steps.sum()}
            found = {k: training_objectives(exp, minimiser(exp, w, iterations)) for k, w in targets.items()}
            best = {o: found[o][o] for o in OBJECTIVES}
            row = {"dataset": dataset, "seed": seed, "steps": f"{int(steps.min())}..{int(steps.max())}"}
            for target in ("fedavg_surrogate", "train_loss_clients", "train_loss_pooled"):
                for objective in OBJECTIVES:
                    row[f"{target} -> {objective} excess"] = found[target][objective] - best[objective]
            rows.append(row)
    return pd.DataFrame(rows)


def optima(plan: Plan, iterations: int) -> pd.DataFrame:
    """f* of both objectives per (data set, seed): the data follow the seed."""
    rows = []
    for dataset in plan.datasets:
        for seed in plan.seeds:
            exp = build_experiment(compose_config(overrides(dataset, "equal", (), "fedavg", seed, 1)))
            sizes = exp.data.client_sizes
            row = {"dataset": dataset, "seed": seed, "rows": int(sizes.sum()), "min_rows": int(sizes.min())}
            row["max_rows"] = int(sizes.max())
            for objective, weights in row_weights(exp).items():
                row[f"{objective}_opt"] = central_optimum(exp, weights, iterations)
            rows.append(row)
    return pd.DataFrame(rows)


def run_all(plan: Plan) -> pd.DataFrame:
    """Every job's metrics, one row per (run, round), with the two objectives."""
    frames = []
    composed: dict[tuple, DictConfig] = {}  # Hydra's compose costs as much as a short run: once per config
    bar = tqdm(plan.jobs(), desc="heterogeneity", dynamic_ncols=True)
    with global_objective_columns():
        for dataset, regime, name, extra, seed in bar:
            label = config_label(name, extra)
            bar.set_postfix_str(f"{dataset} {regime} {label} seed={seed}")
            key = (dataset, regime, name, extra)
            if key not in composed:
                composed[key] = compose_config(overrides(dataset, regime, extra, name, 0, plan.rounds))
            cfg = composed[key].copy()
            cfg.seed = seed
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                sim_run.run_experiment(cfg, Path(tmp))
                metrics = pd.read_csv(Path(tmp) / "metrics.csv")
            cols = ["round", "test_accuracy", "test_loss", "val_accuracy", "train_loss", *OBJECTIVES]
            frame = metrics[cols].assign(
                dataset=dataset,
                regime=regime,
                strategy=name,
                config=label,
                seed=seed,
                wall_s=time.perf_counter() - start,
            )
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def summarise_runs(curves: pd.DataFrame, best: pd.DataFrame, rounds: int) -> pd.DataFrame:
    """One row per run: means over the last tenth of the rounds (SGD noise), and the excess over f*."""
    window = max(1, rounds // 10)
    last = curves[curves["round"] > rounds - window]
    keys = ["dataset", "regime", "strategy", "config", "seed"]
    runs = last.groupby(keys, sort=False)[["test_accuracy", "val_accuracy", *OBJECTIVES, "wall_s"]].mean().reset_index()
    runs = runs.merge(best[["dataset", "seed", *(f"{o}_opt" for o in OBJECTIVES)]], on=["dataset", "seed"])
    for objective in OBJECTIVES:
        runs[f"{objective}_excess"] = runs[objective] - runs[f"{objective}_opt"]
    return runs


def choose(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (data set, regime, strategy): the grid value with the best mean validation accuracy."""
    means = runs.groupby(["dataset", "regime", "strategy", "config"], sort=False)["val_accuracy"].mean().reset_index()
    top = means.loc[means.groupby(["dataset", "regime", "strategy"], sort=False)["val_accuracy"].idxmax()]
    return top[["dataset", "regime", "strategy", "config"]]


def mean_curves(curves: pd.DataFrame) -> pd.DataFrame:
    cols = ["test_accuracy", *OBJECTIVES]
    agg = curves.groupby(["dataset", "regime", "config", "round"], sort=False)[cols].agg(["mean", "std"])
    agg.columns = [f"{c}_{s}" for c, s in agg.columns]
    return agg.reset_index()


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


def kept_findings(md_path: Path) -> str:
    """The hand-written Findings section of an earlier report at the same place (empty if none)."""
    if not md_path.exists():
        return "_Not written yet: read the tables and figures above._\n"
    match = re.search(r"\n## Findings\n(.*?)(?=\n## |\Z)", md_path.read_text(), flags=re.S)
    return match.group(1).strip("\n") + "\n" if match else ""


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
    args = parser.parse_args(argv)
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
    command = "python experiments/heterogeneity.py" + "".join(
        f" {a}" for a in (argv if argv is not None else __import__("sys").argv[1:])
    )
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
