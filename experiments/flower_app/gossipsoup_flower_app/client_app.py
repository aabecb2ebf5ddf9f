"""ClientApp: gossipsoup's local training on this node's partition (``partition-id`` of ``num-partitions``).

The node's partition comes from its node config: Flower's simulation sets both keys itself; a real
SuperNode gets them from ``--node-config 'partition-id=0 num-partitions=2'``.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from sim.flower_client import evaluate_reply, train_reply

from .task import experiment, run_config

app = ClientApp()


def _partition(context: Context):
    part, parts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    exp = experiment(run_config(context), parts)
    return exp, part


@app.train()
def train(msg: Message, context: Context) -> Message:
    exp, part = _partition(context)
    x, y = exp.data.client(part)
    return train_reply(msg, exp.model, exp.layout, x, y, exp.train, seed=int(exp.cfg.seed), client=part)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    exp, part = _partition(context)
    x, y = exp.data.client(part)
    return evaluate_reply(msg, exp.model, exp.layout, x, y)
