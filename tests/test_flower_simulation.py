"""(b) Flower's simulation runtime with the adapter: it completes and the global model improves.

The run happens in a child process: ``run_simulation`` starts and shuts down its own Ray, which must
not touch the Ray session this test session may hold for other tests. That child also runs docs/flower.md's apps
before it (tests/flower_runs.py: one interpreter's imports for the three simulations). One ServerApp runs two
strategies back to back on the same virtual nodes (Ray starts once): FedAU with half of the nodes
sampled per round (its per-node memory must follow Flower's node ids), then fisher_merge (the
adapter asks for Fisher diagonals in the config; clients send them in a "fisher" record), then a
robust rule (trimmed mean dropping one model per side and coordinate). FedAU runs three rounds (its state
must carry across rounds); the other two one round each, which is all their checks need. One ClientApp
actor (``num_cpus`` 2 of 2) serves all nodes: each actor process would build the experiment again.
"""

import json
import textwrap

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

SCRIPT = textwrap.dedent("""
    import json, sys
    from flwr.app import ConfigRecord, Context, Message, MetricRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from sim.flower_client import cached_experiment, train_reply
    from sim.training import evaluate
    from strategies.flower import GossipsoupStrategy, from_arrayrecord, to_arrayrecord

    NODES, ROUNDS = 4, 3
    OVERRIDES = ("progress=false", "dataset=digits", "partition=iid", "model=mlp", f"num_clients={NODES}",
                 "participation=uniform", f"participation.clients_per_round={NODES}", "backend=sequential",
                 "strategy=fedau")
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        exp = cached_experiment(OVERRIDES)
        part = int(context.node_config["partition-id"])
        return train_reply(msg, exp.model, exp.layout, *exp.data.client(part), exp.train, client=part)

    server = ServerApp()
    report = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from strategies import FisherMerge
        from strategies.robust import TrimmedMean
        exp = cached_experiment(OVERRIDES)
        params = exp.initial_params
        rules = (("fedau", exp.strategy, 0.5, ROUNDS), ("fisher_merge", FisherMerge(), 1.0, 1),
                 ("trimmed", TrimmedMean(f=1), 1.0, 1))
        for name, rule, fraction, rounds in rules:
            accuracy = []
            def central(rnd, arrays):
                acc, _ = evaluate(exp.model, exp.layout, from_arrayrecord(exp.layout, arrays), exp.data.x_test,
                                  exp.data.y_test)
                accuracy.append(acc)
                return MetricRecord({"accuracy": acc})
            adapter = GossipsoupStrategy(rule, exp.layout, fraction_train=fraction, fraction_evaluate=0.0,
                                         min_train_nodes=2, min_available_nodes=NODES)
            result = adapter.start(grid=grid, initial_arrays=to_arrayrecord(exp.layout, params), num_rounds=rounds,
                                   evaluate_fn=central)
            params = from_arrayrecord(exp.layout, result.arrays)
            state = adapter.state
            report[name] = {"accuracy": accuracy, "nodes": sorted(adapter.aggregator.node_index.values()),
                            "aggregated": [m["gossipsoup-aggregated"] for m in result.train_metrics_clientapp.values()],
                            "rejected": adapter.aggregator.rejected_total,
                            "participations": float(state["interval_num"].sum()) if "interval_num" in state else None}

    run_simulation(server_app=server, client_app=client, num_supernodes=NODES,
                   backend_config={"client_resources": {"num_cpus": 2, "num_gpus": 0.0},
                                   "init_args": {"address": "local", "num_cpus": 2, "num_gpus": 0}})
    print("RESULT " + json.dumps(report), flush=True)
""")


@pytest.mark.slow
def test_flower_simulation_with_the_adapter_completes_and_improves():
    from flower_runs import flower_parts

    code, log = flower_parts()["flower_sim"]
    lines = [line for line in log.splitlines() if line.startswith("RESULT ")]
    assert code == 0 and lines, f"simulation failed:\n{log[-8000:]}"
    report = json.loads(lines[-1][len("RESULT ") :])

    fedau, fisher = report["fedau"], report["fisher_merge"]
    assert len(fedau["accuracy"]) == 4  # round 0 and three rounds
    assert fedau["accuracy"][-1] > fedau["accuracy"][0] + 0.3, fedau
    assert fedau["nodes"] == [0, 1, 2, 3]  # four Flower node ids became FedAU's clients 0..3
    assert fedau["aggregated"] == [2, 2, 2] and fedau["participations"] == 6  # 2 of 4 per round, each counted
    assert len(fisher["accuracy"]) == len(report["trimmed"]["accuracy"]) == 2  # round 0 and one round
    assert fisher["aggregated"] == [4] and fisher["rejected"] == 0
    assert fisher["accuracy"][-1] >= fisher["accuracy"][0] - 0.05, fisher  # from FedAU's model, still good
    trimmed = report["trimmed"]
    assert trimmed["aggregated"] == [4] and trimmed["rejected"] == 0
    assert trimmed["accuracy"][-1] >= trimmed["accuracy"][0] - 0.05, trimmed
