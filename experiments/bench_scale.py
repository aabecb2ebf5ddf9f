"""Sequential vs vectorized backend on a 1000-client FedAvg run (W1); prints a table, no asserts.

W1: FedAvg on Synthetic(1,1), 1000 clients (10 + lognormal(3, 1) rows, capped at 300), 50 clients per
round, MLP 60-64-10, 1 local epoch of batch 10 at lr 0.05, 50 rounds. Both backends run the same
config in this process; the time is the simulation loop (summary["loop_s"]), not data building.

    python experiments/bench_scale.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from sim.run import run_experiment

W1 = (
    "progress=false", "dataset=synthetic", "dataset.alpha=1", "dataset.beta=1", "num_clients=1000",
    "dataset.size_offset=10", "dataset.size_lognormal_mean=3", "dataset.size_lognormal_sigma=1",
    "dataset.size_cap=300", "dataset.val_fraction=0", "dataset.test_fraction=0.2",
    "participation=uniform", "participation.clients_per_round=50", "model=mlp", "model.hidden=[64]",
    "train.epochs=1", "train.batch_size=10", "train.lr=0.05", "strategy=fedavg",
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_module(config_module="configs", version_base="1.3"):
        for backend in ("sequential", "vectorized"):
            cfg = compose(config_name="config", overrides=[*W1, f"rounds={args.rounds}", f"backend={backend}"])
            summary = run_experiment(cfg, Path(tmp) / backend)
            rows.append((backend, summary["loop_s"], summary["final"]["test_accuracy"]))
    base = rows[0][1]
    print(f"W1: FedAvg, Synthetic(1,1), 1000 clients, 50/round, MLP 60-64-10, {args.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'backend':<12} {'loop_s':>9} {'final_acc':>10} {'speedup':>8}")
    for name, loop_s, acc in rows:
        print(f"{name:<12} {loop_s:>9.2f} {acc:>10.4f} {base / loop_s:>7.2f}x")


if __name__ == "__main__":
    main()
