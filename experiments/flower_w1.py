"""Flower's own simulation on workload W1, for comparing Flower's overhead with gossipsoup's backends.

W1 (``experiments/workloads.py``): FedAvg on Synthetic(1,1), 1000 clients, 50 sampled per round,
MLP 60-64-10, 1 local epoch of batch 10 at lr 0.05. The data and model are the ones gossipsoup
builds (``compose_workload(W1)`` + ``build_experiment``); a ``ClientApp`` trains partition
``partition-id`` (= gossipsoup's client id) with ``sim.flower_client.train_reply``; the
``ServerApp`` runs Flower's *own* ``FedAvg`` (not the adapter) and scores the global model on W1's
test split after every round. Ray gets the machine's cores, one per virtual client, and each client
uses one torch thread, so as many clients train at once as there are cores.

    python experiments/flower_w1.py --rounds 50

``run_flower_w1(rounds)`` returns ``loop_s`` (the ServerApp's round loop: from the first round's
configuration to the last round's evaluation, so round 1 includes Ray's actors starting up),
``process_s`` (the whole ``run_simulation`` call, Ray start and shutdown included),
``final_accuracy`` and ``per_round_s`` (each round's seconds).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import workloads` also when imported from elsewhere

import workloads  # noqa: E402

CLIENTS_PER_ROUND = 50


def w1_overrides(rounds: int) -> tuple[str, ...]:
    # gossipsoup's backend is not used (Flower runs the clients): build the cheapest one
    return (*workloads.W1, f"rounds={rounds}", "backend=sequential")


def run_flower_w1(rounds: int, num_cpus: int | None = None) -> dict:
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from sim.flower_client import cached_experiment, train_reply
    from sim.training import evaluate
    from strategies.flower import from_arrayrecord, to_arrayrecord

    overrides = w1_overrides(rounds)
    exp = cached_experiment(overrides)
    num_clients = exp.data.num_clients
    num_cpus = num_cpus or os.cpu_count() or 1
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)  # one core per virtual client; Ray runs num_cpus of them at once
        e = cached_experiment(overrides)  # built once per Ray actor
        k = int(context.node_config["partition-id"])
        x, y = e.data.client(k)
        return train_reply(msg, e.model, e.layout, x, y, e.train, seed=int(e.cfg.seed), client=k)

    out: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        marks: list[float] = []
        accuracy: list[float] = []

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            acc, loss = evaluate(
                exp.model, exp.layout, from_arrayrecord(exp.layout, arrays), exp.data.x_test, exp.data.y_test
            )
            marks.append(time.perf_counter())
            accuracy.append(acc)
            return MetricRecord({"accuracy": acc, "loss": loss})

        strategy = FedAvg(
            fraction_train=CLIENTS_PER_ROUND / num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=CLIENTS_PER_ROUND,
            min_available_nodes=num_clients,
        )
        strategy.start(
            grid=grid,
            initial_arrays=to_arrayrecord(exp.layout, exp.initial_params),
            num_rounds=rounds,
            evaluate_fn=central,
            train_config=ConfigRecord({}),
        )
        # marks[0] is taken right after the initial evaluation, just before round 1 is configured
        out.update(
            loop_s=marks[-1] - marks[0],
            per_round_s=[b - a for a, b in itertools.pairwise(marks)],
            final_accuracy=accuracy[-1],
            initial_accuracy=accuracy[0],
        )

    start = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": num_cpus, "num_gpus": 0},
        },
    )
    out["process_s"] = time.perf_counter() - start
    out.update(rounds=rounds, clients=num_clients, clients_per_round=CLIENTS_PER_ROUND, num_cpus=num_cpus)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    result = run_flower_w1(args.rounds)
    rounds = result["per_round_s"]
    print(
        f"Flower run_simulation on W1: {result['clients']} clients, {result['clients_per_round']}/round, "
        f"{args.rounds} rounds, {result['num_cpus']} CPUs"
    )
    print(
        f"loop_s={result['loop_s']:.2f} process_s={result['process_s']:.2f} "
        f"final_accuracy={result['final_accuracy']:.4f} first_round_s={rounds[0]:.2f} "
        f"median_round_s={sorted(rounds)[len(rounds) // 2]:.3f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
