"""Flower's ``run_simulation`` on a peers workload, written as Flower's PyTorch quickstart writes an app.

A ``ClientApp`` whose ``train`` loads the received ``ArrayRecord`` into the peer_common model, trains
partition ``partition-id`` of the data file (read once per Ray actor) with peer_common.local_train and replies
with its weights and ``num-examples``; a ``ServerApp`` runs Flower's own ``FedAvg`` (weighted by
``num-examples``, ``fraction_train`` = clients_per_round / clients, no client-side evaluation) with an
``evaluate_fn`` that scores the test set after every round. Ray gets ``--cores`` CPUs (default 1, like every
other peer), one per virtual client, and each client trains with one torch thread.

    python peer_flower.py --workload w1 --data w1_seed0.npz --seed 0
"""

from __future__ import annotations

import argparse
import os
import time

import peer_common as pc
import torch


def run(work: pc.Workload, path: str, seed: int, cores: int) -> tuple[float, float, float]:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    data = pc.cached_load(path)
    num_clients = len(data.clients)
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        d = pc.cached_load(path)
        k = int(context.node_config["partition-id"])
        model = pc.build_model(work, d)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = d.clients[k]
        server_round = int(msg.content["config"]["server-round"])
        pc.local_train(model, x, y, work, torch.Generator().manual_seed(seed * 1_000_003 + server_round * 10_007 + k))
        content = RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(y)})}
        )
        return Message(content=content, reply_to=msg)

    out: dict[str, float] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(seed)
        model = pc.build_model(work, data)
        clock = pc.LoopClock()
        accuracy: list[float] = []

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            accuracy.append(pc.accuracy(model, data.x_test, data.y_test))
            if server_round == 0:
                clock.begin()  # right after the initial evaluation, before round 1 is configured
            else:
                clock.stop()
            return MetricRecord({"accuracy": accuracy[-1]})

        strategy = FedAvg(
            fraction_train=work.clients_per_round / num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=work.clients_per_round,
            min_available_nodes=num_clients,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=work.rounds,
            evaluate_fn=central,
            train_config=ConfigRecord({}),
        )
        out.update(loop_s=clock.seconds, accuracy=accuracy[-1])

    start = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cores, "num_gpus": 0},
        },
    )
    return out["loop_s"], out["accuracy"], time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(pc.WORKLOADS), required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cores", type=int, default=1, help="CPUs Ray may use (one virtual client each)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("PYTHONPATH", os.path.dirname(os.path.abspath(__file__)))  # Ray actors import peer_common
    work = pc.WORKLOADS[args.workload]
    loop_s, acc, simulation_s = run(work, os.path.abspath(args.data), args.seed, args.cores)
    pc.report(work, loop_s, acc, peer="flower", run_simulation_s=simulation_s)


if __name__ == "__main__":
    main()
