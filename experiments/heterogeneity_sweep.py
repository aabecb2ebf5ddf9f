"""The sweep of experiments/heterogeneity.py: settings, runs, the two training objectives and their optima.

Softmax regression on FedProx's Synthetic(1, 1) and on digits (Dirichlet(0.1) labels), 30 clients, 10 a
round, in three local-work regimes (equal steps, steps redrawn per round, one epoch per client). Every
evaluation row also gets the global model's training loss on all rows pooled and the mean of the clients'
own losses (:func:`global_objective_columns`), compared with their L-BFGS optima (:func:`optima`). This
module runs and summarises; ``heterogeneity_report`` turns the frames into tables and figures.
"""

from __future__ import annotations

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
#: the across-seeds check (--seed-check): FedAvg and the rule each 3-seed claim puts ahead, where it puts it
#: ahead; (data set, regime, configs), run and written in this order
SEED_CHECK = (
    ("synthetic", "epochs", (("fedavg", ()), ("fednova", ()))),
    ("digits", "epochs", (("fedavg", ()), ("feddyn", ("strategy.alpha=0.01",)))),
    ("synthetic", "random", (("fedavg", ()), ("fednova", ()))),
)
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

    def with_objectives(exp, params, *args, **kwargs):
        return {**original_row(exp, params, *args, **kwargs), **training_objectives(exp, params)}

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


def seed_check_jobs(seeds: tuple[int, ...]) -> list[tuple[str, str, str, tuple[str, ...], int]]:
    """The jobs of :data:`SEED_CHECK` for ``seeds``, in the order of :meth:`Plan.jobs`."""
    return [(d, r, name, extra, s) for d, r, grid in SEED_CHECK for name, extra in grid for s in seeds]


def run_all(plan: Plan, jobs: list[tuple[str, str, str, tuple[str, ...], int]] | None = None) -> pd.DataFrame:
    """Every job's metrics (``jobs``, by default the plan's), one row per (run, round), with the two objectives."""
    frames = []
    composed: dict[tuple, DictConfig] = {}  # Hydra's compose costs as much as a short run: once per config
    bar = tqdm(plan.jobs() if jobs is None else jobs, desc="heterogeneity", dynamic_ncols=True)
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
