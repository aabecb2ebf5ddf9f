"""Every client's accuracy, not only the pooled one (issue 27): three reproductions with per-client evaluation.

1. q-FedAvg (Li et al. 2020, q-FFL): q > 0 raises the worst-10% accuracy and lowers the spread across clients at
   little cost to the mean. The global model on each client's local test rows, q = 0 (uniform FedAvg) to q = 5,
   FedAvg (sample-weighted) beside them, on the paper's own Synthetic(1, 1) (100 users, softmax regression, 2000
   rounds) and on digits with Dirichlet(0.1) labels (MLP, 100 rounds).
2. Personalization (Ditto, FedPer, FedRep, fine-tuning, local-only training) against FedAvg under label skew
   (Dirichlet 0.1, two shards per client) and feature skew (IID labels, images rotated by 0/90/180/270 degrees per
   client group, ``partition.feature_skew=rotate``): mean and worst-10% accuracy of the model each client uses
   itself; FedBN, which needs normalization layers, on a BatchNorm ResNet-8 beside FedAvg on the same model.
3. Gossip on a ring of 16: each node's own model on its own local test rows and on the pooled test set, plain
   gossip averaging against variance-corrected gossip (Tian et al. 2024).

Digits and an MLP unless a setting or method names others, 20 clients (16 gossip nodes), 30 rounds, 25 % of each
client's rows as its local test, seeds 0 1 2 by default:

    OMP_NUM_THREADS=1 nice -n 10 python experiments/personalization.py [--seeds 0 1 2] [--jobs 2]

A method is one entry of :data:`METHODS` (a name and its overrides; :data:`ONLY` limits some to some
settings); one whose strategy file does not exist yet
is listed as ``missing`` in the CSV, one the configuration refuses as ``refused: <reason>``. Each run is a real
``sim`` run whose folder under ``--runs`` is reused when complete. Results: experiments/personalization.csv (one
row per run), the report personalization.md (its "## Findings" section, written by a person, is kept) and
personalization.png. ``--report-only`` redraws both from the CSV.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the repository, wherever this runs from

FINDINGS = "## Findings"
LOCAL_TEST = 0.25
#: the data and model every run uses unless its setting or method names others (an override of the same key wins)
BASE = ["dataset=digits", "model=mlp"]
DIRICHLET = ("Dirichlet 0.1", ["partition=dirichlet", "partition.alpha=0.1", "partition.min_partition_size=8"])
SHARDS = ("shards 2", ["partition=shards", "partition.shards_per_client=2"])
ROTATE = ("rotate 4 groups", ["partition=iid", "partition.feature_skew=rotate", "partition.feature_skew_groups=4"])
#: pixels blended toward white by g / 8 in group g: a shift of the input statistics, what FedBN's local BN layers absorb
INTENSITY = (
    "intensity 4 groups",
    ["partition=iid", "partition.feature_skew=intensity", "partition.feature_skew_groups=4"],
)
#: FedProx's Synthetic(1, 1), the q-FedAvg paper's own synthetic set (litian96/fair_flearn data/synthetic: 100
#: users, a softmax regression, lognormal sizes): one user per client, 10 a round, one epoch of batches of 10
SYNTHETIC = (
    "Synthetic(1,1)",
    ["dataset=synthetic", "model=logreg", "num_clients=100", "train.epochs=1", "rounds=2000"],
)
#: FedBN needs normalization layers: the zoo's ResNet-8 with BatchNorm (only the sequential backend trains it)
RESNET_BN = ["model=resnet", "model.depth=8", "model.norm=batch", "backend=sequential"]
#: rounds of each part's runs (--rounds sets all; a setting's own rounds= wins over both): q-FFL's reweighting
#: slows convergence, so part 1 runs longer
ROUNDS = {"qfedavg": 100, "personalization": 30, "gossip": 30}
FINETUNE = "eval.finetune_steps=10"
#: part -> (settings, methods); a method is (name, overrides). Adding a rule to a part is one entry here.
METHODS: dict[str, tuple[list, list[tuple[str, list[str]]]]] = {
    "qfedavg": (
        [SYNTHETIC, DIRICHLET],
        [
            ("FedAvg", ["strategy=fedavg"]),
            *[(f"q-FedAvg q={q}", ["strategy=qfedavg", f"strategy.q={q}"]) for q in ("0", "0.1", "0.5", "1", "5")],
        ],
    ),
    "personalization": (
        [DIRICHLET, SHARDS, ROTATE, INTENSITY],
        [
            ("FedAvg", ["strategy=fedavg"]),
            ("FedAvg + fine-tune 10", ["strategy=fedavg", FINETUNE]),
            ("local only", ["strategy=local_only"]),
            ("Ditto", ["strategy=ditto"]),
            ("Ditto + fine-tune 10", ["strategy=ditto", FINETUNE]),
            ("FedPer", ["strategy=fedper"]),
            ("FedRep", ["strategy=fedrep"]),
            ("FedAvg, ResNet-8 BN", ["strategy=fedavg", *RESNET_BN]),
            ("FedBN, ResNet-8 BN", ["strategy=fedbn", *RESNET_BN]),
        ],
    ),
    "gossip": (
        [DIRICHLET, ROTATE],
        [
            ("gossip averaging", ["mode=gossip", "topology=ring", "strategy=gossip_avg"]),
            ("variance-corrected", ["mode=gossip", "topology=ring", "strategy=variance_corrected"]),
        ],
    ),
}

#: methods run in some settings only (the rest: every setting of their part): FedBN in its natural setting, feature
#: skew, beside FedAvg on the same model; Synthetic's runs are the costly ones, so q there is the paper's (1) only
ONLY: dict[str, set[str]] = {
    "FedAvg, ResNet-8 BN": {ROTATE[0], INTENSITY[0]},
    "FedBN, ResNet-8 BN": {ROTATE[0], INTENSITY[0]},
    **{f"q-FedAvg q={q}": {DIRICHLET[0]} for q in ("0.1", "0.5", "5")},
}
#: settings that run some methods only: intensity skew is there for FedBN (FedAvg on the MLP as a reference)
ONLY_IN: dict[str, set[str]] = {INTENSITY[0]: {"FedAvg", "FedAvg, ResNet-8 BN", "FedBN, ResNet-8 BN"}}


@dataclass(frozen=True)
class Spec:
    part: str
    setting: str
    method: str
    overrides: tuple[str, ...]


def specs(parts: set[str]) -> list[Spec]:
    return [
        Spec(part, setting, method, (*where, *how))
        for part, (settings, methods) in METHODS.items()
        if part in parts
        for setting, where in settings
        for method, how in methods
        if setting in ONLY.get(method, {setting}) and method in ONLY_IN.get(setting, {method})
    ]


def merged(*groups: list[str] | tuple[str, ...]) -> list[str]:
    """The overrides of all groups, a later value of a key replacing an earlier one (Hydra takes a key once)."""
    out: dict[str, str] = {}
    for group in groups:
        for o in group:
            out[o.split("=", 1)[0]] = o
    return list(out.values())


def run_overrides(spec: Spec, clients: int, rounds_arg: int | None) -> list[str]:
    """Every override of one run: the base, the per-client evaluation, then the setting's and method's own."""
    gossip = "mode=gossip" in spec.overrides
    own = merged(spec.overrides)
    rounds = next((int(o.split("=")[1]) for o in own if o.startswith("rounds=")), ROUNDS[spec.part])
    if rounds_arg is not None:
        rounds = rounds_arg
    common = [
        *BASE,
        f"num_clients={16 if gossip and clients == 20 else clients}",
        f"eval_every={rounds}",
        "eval.clients=all",
        f"eval.local_test_fraction={LOCAL_TEST}",
        "progress=false",
        "checkpoint.every=null",
    ]
    out = merged(common, own, [f"rounds={rounds}"])
    if clients != 20:  # --clients: every setting at that size (a smoke run), Synthetic's 100 users too
        out = merged(out, [f"num_clients={clients}"])
    return out


def _finetune_landed() -> bool:
    """Whether some module reads ``eval.finetune_steps`` beyond its config check (the key exists before that)."""
    import re

    pattern = re.compile(r"(?<!eval)\.finetune_steps\b")
    sources = (p for p in (ROOT / "sim").rglob("*.py") if p.name != "config.py")
    return any(pattern.search(p.read_text()) for p in sources)


def missing_strategy(overrides: tuple[str, ...]) -> str | None:
    """The strategy (or fine-tuning) a run names that has not landed yet: its config file does not exist."""
    if any(o.startswith("eval.finetune_steps=") for o in overrides) and not _finetune_landed():
        return "eval.finetune_steps (fine-tuning)"
    for o in overrides:
        if o.startswith("strategy=") and not (ROOT / "configs" / "strategy" / f"{o.split('=')[1]}.yaml").exists():
            return o.split("=")[1]
    return None


def run_dir(root: Path, overrides: list[str], seed: int) -> Path:
    key = hashlib.sha1(" ".join(sorted(overrides)).encode()).hexdigest()[:10]
    return root / f"{key}-seed{seed}"


def run_one(job: tuple[tuple[str, ...], int, str]) -> str:
    """One run in this process (a worker of the pool); a refusal is written beside it instead of raising."""
    overrides, seed, folder_name = job
    folder = Path(folder_name)
    summary = folder / "summary.json"
    if (folder / "refused.txt").exists() or (
        summary.exists() and json.loads(summary.read_text()).get("status") == "completed"
    ):
        return "cached"
    from hydra import compose, initialize_config_module

    import sim.run
    from sim.errors import ConfigError

    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"seed={seed}"])  # a refusal here is a bug of this script
    folder.mkdir(parents=True, exist_ok=True)
    drawn = sim.run.plot_accuracy
    sim.run.plot_accuracy = lambda *_, **__: None  # each run's own accuracy.png: not needed here
    try:  # put back afterwards: a caller in the same process (the smoke test) keeps its figures
        sim.run.run_experiment(cfg, folder, progress=False)
    except ConfigError as err:
        (folder / "refused.txt").write_text(str(err))
        return "refused"
    finally:
        sim.run.plot_accuracy = drawn
    return "ran"


def run_all(todo: list[tuple[Spec, int]], root: Path, clients: int, rounds: int | None, jobs: int) -> None:
    jobs_list = []
    for spec, seed in todo:
        if missing_strategy(spec.overrides) is None:
            overrides = run_overrides(spec, clients, rounds)
            jobs_list.append((tuple(overrides), seed, str(run_dir(root, overrides, seed))))
    unique = list(dict.fromkeys(jobs_list))
    start = time.perf_counter()
    if jobs <= 1:
        results = map(run_one, unique)
    else:
        pool = ProcessPoolExecutor(max_workers=jobs)
        results = pool.map(run_one, unique)
    for i, outcome in enumerate(results):
        print(f"[{i + 1}/{len(unique)}] {outcome} ({time.perf_counter() - start:.0f} s)", flush=True)
    if jobs > 1:
        pool.shutdown()


def worst_share(values: np.ndarray, share: float = 0.1) -> float:
    """Mean of the lowest max(1, floor(share * K)) values (the metrics' client_accuracy_p10)."""
    from sim.client_eval.scores import worst_share_mean

    return worst_share_mean(values, share)


def collect(todo: list[tuple[Spec, int]], root: Path, clients: int, rounds: int | None) -> pd.DataFrame:
    rows = []
    for spec, seed in todo:
        ident = {"part": spec.part, "setting": spec.setting, "method": spec.method, "seed": seed}
        overrides = run_overrides(spec, clients, rounds)
        absent = missing_strategy(spec.overrides)
        folder = run_dir(root, overrides, seed)
        if absent is not None:
            what = absent if absent.startswith("eval.") else f"strategy={absent}"
            rows.append({**ident, "status": f"missing: {what} does not exist yet"})
            continue
        if (folder / "refused.txt").exists():
            rows.append({**ident, "status": "refused: " + (folder / "refused.txt").read_text().strip()})
            continue
        if not (folder / "summary.json").exists():  # its rule landed while this sweep ran: rerun to fill it in
            rows.append({**ident, "status": "not run"})
            continue
        m = pd.read_csv(folder / "metrics.csv")
        last = m[m["client_accuracy_mean"].notna()].iloc[-1]
        final = pd.read_csv(folder / "clients.csv")
        final = final[final["round"] == final["round"].max()]
        pooled = final["test_accuracy"].to_numpy() if "test_accuracy" in final else None
        summary = json.loads((folder / "summary.json").read_text())
        rows.append(
            {
                **ident,
                "status": "ok",
                "test_accuracy": float(last["test_accuracy"]),  # FL: the global model; gossip: mean over nodes
                "client_mean": float(last["client_accuracy_mean"]),
                "client_p10": float(last["client_accuracy_p10"]),
                "client_std": float(last["client_accuracy_std"]),
                "client_var": float(last["client_accuracy_std"]) ** 2 * 1e4,  # fair_flearn's variance (ddof 0)
                "client_min": float(last["client_accuracy_min"]),
                "pooled_mean": float(pooled.mean()) if pooled is not None else np.nan,
                "pooled_p10": worst_share(pooled) if pooled is not None else np.nan,
                "clients": int(last["clients_evaluated"]),
                "loop_s": float(summary.get("loop_s", np.nan)),
                "overrides": " ".join(spec.overrides),
            }
        )
    return pd.DataFrame(rows)


def pm(values: pd.Series) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return "—"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def summary_table(runs: pd.DataFrame, part: str, columns: list[tuple[str, str]]) -> str:
    """Markdown: one line per (setting, method), mean ± std over seeds of each column."""
    sub = runs[runs["part"] == part]
    if sub.empty:
        return "(not run)\n"
    head = "| setting | method | seeds | " + " | ".join(label for _, label in columns) + " |"
    lines = [head, "|" + "---|" * (3 + len(columns))]
    for (setting, method), g in sub.groupby(["setting", "method"], sort=False):
        ok = g[g["status"] == "ok"]
        if ok.empty:
            lines.append(f"| {setting} | {method} | 0 | {g['status'].iloc[0][:110]} |" + " |" * (len(columns) - 1))
            continue
        cells = " | ".join(pm(ok[c]) for c, _ in columns)
        lines.append(f"| {setting} | {method} | {len(ok)} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(runs: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = runs[runs["status"] == "ok"]
    panels = [(p, s) for p in METHODS for s, _ in METHODS[p][0] if not ok[(ok.part == p) & (ok.setting == s)].empty]
    if not panels:
        return
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (part, setting) in zip(axes.flat[: len(panels)], panels, strict=True):
        g = ok[(ok.part == part) & (ok.setting == setting)].groupby("method", sort=False)
        mean, p10 = g["client_mean"], g["client_p10"]
        names = list(mean.mean().index)
        pos = np.arange(len(names))
        ax.bar(pos - 0.2, mean.mean(), 0.4, yerr=mean.std(ddof=1).fillna(0), label="mean", color="C0")
        ax.bar(pos + 0.2, p10.mean(), 0.4, yerr=p10.std(ddof=1).fillna(0), label="worst 10 %", color="C3")
        ax.set_xticks(pos, names, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{part}: {setting}", fontsize=8)
    for row in axes:
        row[0].set_ylabel("accuracy on own local test")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CLIENT_COLUMNS = [
    ("client_mean", "mean"),
    ("client_p10", "worst 10 %"),
    ("client_std", "std across clients"),
    ("test_accuracy", "pooled test (global model)"),
]
Q_COLUMNS = [
    ("client_mean", "mean"),
    ("client_p10", "worst 10 %"),
    ("client_var", "variance x 1e4"),
    ("client_min", "worst client"),
    ("test_accuracy", "pooled test"),
]
GOSSIP_COLUMNS = [
    ("client_mean", "own data: mean"),
    ("client_p10", "own data: worst 10 %"),
    ("pooled_mean", "pooled test: mean"),
    ("pooled_p10", "pooled test: worst 10 %"),
]


def write_report(runs: pd.DataFrame, out: Path, command: str) -> None:
    md = out / "personalization.md"
    findings = ""
    if md.exists() and FINDINGS in md.read_text():
        findings = md.read_text().split(FINDINGS, 1)[1]
    seeds = sorted(runs["seed"].unique().tolist())
    text = [
        "# Per-client accuracy: q-FedAvg, personalization, gossip (issue 27)\n",
        f"Generated by `experiments/personalization.py` (tables: mean ± std over seeds {seeds}; accuracy of the model "
        f"each client uses on its own local test rows, {LOCAL_TEST:.0%} of its training rows carved by "
        "`eval.local_test_fraction`, at the last round; worst 10 % is the mean of the lowest max(1, floor(K/10)) "
        "clients, as q-FedAvg's authors compute it). Reproduce with\n",
        f"    {command}\n",
        "![per-client accuracy](personalization.png)\n",
        "## 1. q-FedAvg: fairness at little cost to the mean (the global model on each client's local test)\n",
        "Synthetic(1,1): 100 users (one client each), softmax regression, 10 clients a round, 1 epoch, 2000 rounds. "
        "Dirichlet 0.1: digits, MLP, 20 clients, 10 a round, 2 epochs, 100 rounds. Variance is fair_flearn's "
        "`np.var(accuracies) * 10000`.\n",
        summary_table(runs, "qfedavg", Q_COLUMNS),
        "## 2. Personalization under label and feature skew (digits, 20 clients, 10 a round, 30 rounds)\n",
        "MLP unless the method names the BatchNorm ResNet-8 (depth 8, `model.norm=batch`, sequential backend). "
        "Pooled test: the run's global model on the server's test set (for FedPer/FedRep/FedBN the averaged shared "
        "layers with the initial, never-trained local layers; for local-only the initial model).\n",
        summary_table(runs, "personalization", CLIENT_COLUMNS),
        "## 3. Gossip on a ring of 16: own data against pooled data\n",
        summary_table(runs, "gossip", GOSSIP_COLUMNS),
        FINDINGS + (findings if findings else "\n\n(to be written from the tables above)\n"),
    ]
    md.write_text("\n".join(t if t.endswith("\n") else t + "\n" for t in text[:-1]) + "\n" + text[-1])
    plot(runs, out / "personalization.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--clients", type=int, default=20, help="FL clients (gossip: 16 when 20, else the same)")
    p.add_argument("--rounds", type=int, default=None, help="every part's rounds (default: ROUNDS)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (processes)")
    p.add_argument("--parts", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    p.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "personalization_runs")
    p.add_argument("--out", type=Path, default=HERE, help="folder of the CSV, the report and the figure")
    p.add_argument("--report-only", action="store_true", help="redraw the report and figure from the CSV")
    args = p.parse_args(argv)
    csv = args.out / "personalization.csv"
    command = "OMP_NUM_THREADS=1 nice -n 10 python experiments/personalization.py"
    if args.seeds != [0, 1, 2]:
        command += " --seeds " + " ".join(map(str, args.seeds))
    if not args.report_only:
        todo = [(s, seed) for s in specs(set(args.parts.split(","))) for seed in args.seeds]
        start = time.perf_counter()
        run_all(todo, args.runs, args.clients, args.rounds, args.jobs)
        runs = collect(todo, args.runs, args.clients, args.rounds)
        args.out.mkdir(parents=True, exist_ok=True)
        runs.to_csv(csv, index=False, float_format="%.6g")
        print(f"{len(todo)} runs in {(time.perf_counter() - start) / 60:.1f} min; table in {csv}")
    write_report(pd.read_csv(csv), args.out, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
