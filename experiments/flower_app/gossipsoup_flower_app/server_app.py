"""ServerApp: a gossipsoup strategy (FedAU by default) through the Flower adapter, evaluated centrally.

Flower's ``FedAvg.start`` drives the rounds; ``GossipsoupStrategy`` replaces only the aggregation.
After every round the global model is scored on gossipsoup's test split; each score is logged as
``gossipsoup-flower round=R accuracy=A loss=L`` and, when ``result-path`` is set, the whole history
is rewritten atomically to that JSON file (so a test or a person can read it during and after the run).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from sim.results import write_json
from sim.training import evaluate
from strategies.flower import GossipsoupStrategy, from_arrayrecord, to_arrayrecord

from .task import experiment, run_config

app = ServerApp()
log = logging.getLogger("flwr")


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = run_config(context)
    min_nodes = int(rc["min-nodes"])
    # the server uses the model, the test split and (greedy soups) the validation split; for digits
    # these do not depend on how the training rows are partitioned
    exp = experiment(rc, min_nodes)
    validate = exp.validation_fn() if exp.strategy.needs_validation else None
    strategy = GossipsoupStrategy(
        exp.strategy,
        exp.layout,
        validate=validate,
        fraction_train=float(rc["fraction-train"]),
        fraction_evaluate=0.0,
        min_train_nodes=min(2, min_nodes),
        min_available_nodes=min_nodes,
    )
    history: list[dict] = []
    started = time.perf_counter()
    out = str(rc.get("result-path", "")).strip()

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        params = from_arrayrecord(exp.layout, arrays)
        acc, loss = evaluate(exp.model, exp.layout, params, exp.data.x_test, exp.data.y_test)
        history.append(
            {"round": server_round, "test_accuracy": acc, "test_loss": loss, "wall_s": time.perf_counter() - started}
        )
        log.info("gossipsoup-flower round=%d accuracy=%.4f loss=%.4f", server_round, acc, loss)
        if out:
            write_json(Path(out), {"status": "running", "strategy": exp.strategy.name, "rounds": history})
        return MetricRecord({"accuracy": acc, "loss": loss})

    result = strategy.start(
        grid=grid,
        initial_arrays=to_arrayrecord(exp.layout, exp.initial_params),
        num_rounds=int(rc["num-server-rounds"]),
        evaluate_fn=central,
        train_config=ConfigRecord(
            {"lr": float(rc["lr"]), "local-epochs": int(rc["local-epochs"]), "batch-size": int(rc["batch-size"])}
        ),
    )
    if out:
        agg = strategy.aggregator
        write_json(
            Path(out),
            {
                "status": "completed",
                "strategy": exp.strategy.name,
                "rounds": history,
                "nodes": len(agg.node_index),
                "rejected_replies": agg.rejected_total,
                "failed_replies": agg.failed_total,
                "train_metrics": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
            },
        )
