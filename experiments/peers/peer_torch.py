"""The hand-written PyTorch loop: FedAvg as a researcher would write it in one file, the floor for overhead.

One ``nn.Module`` for the server and one reused for the clients; each round samples ``clients_per_round``
distinct clients uniformly, loads the global weights, trains (peer_common.local_train), and the server
averages the clients' state dicts weighted by their rows, then scores the test set.

    python peer_torch.py --workload w1 --data w1_seed0.npz --seed 0
"""

from __future__ import annotations

import argparse

import peer_common as pc
import torch


def run(work: pc.Workload, data: pc.Data, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    server = pc.build_model(work, data)
    client = pc.build_model(work, data)
    gen = torch.Generator().manual_seed(seed)
    clock = pc.LoopClock()
    clock.begin()
    acc = 0.0
    for _ in range(work.rounds):
        chosen = torch.randperm(len(data.clients), generator=gen)[: work.clients_per_round].tolist()
        total = sum(len(data.clients[k][1]) for k in chosen)
        global_state = {k: v.clone() for k, v in server.state_dict().items()}
        new_state = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for k in chosen:
            x, y = data.clients[k]
            client.load_state_dict(global_state)
            pc.local_train(client, x, y, work, gen)
            w = len(y) / total
            for name, value in client.state_dict().items():
                new_state[name].add_(value, alpha=w)
        server.load_state_dict(new_state)
        acc = pc.accuracy(server, data.x_test, data.y_test)
    clock.stop()
    return clock.seconds, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(pc.WORKLOADS), required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = pc.WORKLOADS[args.workload]
    loop_s, acc = run(work, pc.load(args.data), args.seed)
    pc.report(work, loop_s, acc, peer="torch")


if __name__ == "__main__":
    main()
