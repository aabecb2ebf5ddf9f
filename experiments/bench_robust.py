"""What robust aggregation costs: each rule's time on K models of P parameters against FedAvg's, in one run.

The stack is ``[K, P]`` float32 (normal noise around a shared model, a tenth of the rows shifted
far away as Byzantine ones would be), built once; every rule aggregates the same stack, FedAvg
first, each once to warm up and then ``--repeats`` times; the median time counts. Pre-aggregators are timed in front of
FedAvg. ``f`` is the number of Byzantine rows (Bulyan needs K >= 4f + 3).

    OMP_NUM_THREADS=1 python experiments/bench_robust.py [--models 100] [--params 1000000] [--f 10]
                                                         [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from sim.layout import Layout, TensorSpec
from strategies import FedAvg, Strategy
from strategies.base import AggregationInfo
from strategies.preagg import build_preagg
from strategies.robust import (
    Bulyan,
    CenteredClipping,
    ClippedGossip,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MeaMed,
    TrimmedMean,
)
from strategies.robust.common import pairwise_sq_distances


def rules() -> list[tuple[str, Strategy]]:
    run = OmegaConf.create({"seed": 0})
    preaggs = [
        ("nnm+fedavg", {"name": "nnm"}),
        ("bucketing+fedavg", {"name": "bucketing", "s": 2}),
        ("clipping+fedavg", {"name": "clipping", "c": 2.0}),
        ("arc+fedavg", {"name": "arc"}),
    ]
    return [
        ("fedavg", FedAvg()),
        ("median", CoordinateMedian()),
        ("trimmed_mean", TrimmedMean()),
        ("meamed", MeaMed()),
        ("krum", Krum()),
        ("multi_krum", Krum(m=None)),
        ("bulyan", Bulyan()),
        ("geometric_median (RFA, 4 steps)", GeometricMedian()),
        ("geometric_median (100 steps)", GeometricMedian(max_iter=100, eps=0.0)),
        ("geometric_median (ByzFL)", GeometricMedian(nu=0.1, max_iter=3, eps=0.0, init="reference", weights="uniform")),
        ("centered_clipping", CenteredClipping()),
        ("clipped_gossip", ClippedGossip()),
        *[(name, build_preagg(OmegaConf.create(cfg), FedAvg(), run)) for name, cfg in preaggs],
    ]


class Distances(Strategy):
    """The ``[K, K]`` squared distances alone (float64 Gram about the median, far clusters measured directly)."""

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: dict) -> tuple[torch.Tensor, dict]:
        return pairwise_sq_distances(models), state


def stack(k: int, p: int, f: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    models = torch.randn(p, generator=g) + 0.01 * torch.randn(k, p, generator=g)
    models[:f] += 5.0
    return models


def info(k: int, p: int, f: int, gossip: bool) -> AggregationInfo:
    return AggregationInfo(
        client_ids=torch.arange(k),
        num_samples=torch.full((k,), 50.0),
        round=1,
        num_clients=k,
        layout=Layout((TensorSpec("w", (p,), 0, "weight"),)),
        reference=torch.zeros(p),
        self_index=k - 1 if gossip else None,
        mixing_weights=torch.full((k,), 1.0 / k) if gossip else None,
        num_byzantine=f,
    )


def seconds(rule: Strategy, models: torch.Tensor, info_: AggregationInfo, repeats: int) -> float:
    state = rule.init_state(info_.reference, len(models))
    rule.aggregate(models, info_, state)  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rule.aggregate(models, info_, state)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--f", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: K=12, P=1000, f=2, one repeat")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.params, args.f, args.repeats = 12, 1000, 2, 1
    k, p, f = args.models, args.params, args.f
    models = stack(k, p, f)
    print(
        f"Robust aggregation: K={k} models of P={p:,} float32 parameters, f={f}, "
        f"median of {args.repeats}, {torch.get_num_threads()} thread(s)"
    )
    print(f"| {'rule':<32} | {'seconds':>9} | {'x FedAvg':>9} |")
    print(f"|{'-' * 34}|{'-' * 10}:|{'-' * 10}:|")
    base = None
    took = seconds(Distances(), models, info(k, p, f, gossip=False), args.repeats)
    print(f"| {'pairwise distances (K x K)':<32} | {took:>9.4f} | {'':>9} |", flush=True)
    for name, rule in rules():
        took = seconds(rule, models, info(k, p, f, gossip=name == "clipped_gossip"), args.repeats)
        base = took if base is None else base
        print(f"| {name:<32} | {took:>9.4f} | {took / base:>8.1f}x |", flush=True)


if __name__ == "__main__":
    main()
