"""gossipsoup's local training inside a Flower ``ClientApp`` (Flower's message API).

A ClientApp's ``@app.train()`` function receives a ``Message`` holding the global model (an
``ArrayRecord``) and a ``ConfigRecord``; :func:`train_reply` runs :func:`sim.training.local_train` on
the client's rows and builds the reply the adapter in ``strategies/flower.py`` reads:

- ``"arrays"``: the trained model, one array per layout tensor (the model's state-dict names);
- ``"metrics"``: ``num-examples`` (Flower's weighting key), ``train-loss``, ``train-steps``;
- ``"fisher"``: the diagonal Fisher at the trained model over the client's inputs, when the server's
  config asks for it (``gossipsoup-requires``, set by the adapter for ``fisher_merge``) or when
  ``fisher=True``.

Batches are drawn from ``torch_generator(seed, "train", server_round, client)``, the stream every
gossipsoup backend uses, so a Flower client with the same seed, round and client id trains exactly as
the simulator would. :func:`evaluate_reply` scores the received model for ``@app.evaluate()``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from functools import lru_cache

import torch
from flwr.app import DEFAULT_TTL, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from torch import nn

from strategies.flower import REQUIRES_KEY, START_LOSS_METRIC, from_arrayrecord, to_arrayrecord

from .errors import ConfigError, RunError
from .layout import Layout
from .seeding import torch_generator
from .training import TrainConfig, evaluate, local_train, per_row_losses

#: ConfigRecord keys a server may send to override the client's TrainConfig, and the field each sets
CONFIG_OVERRIDES = {
    "lr": "lr",
    "local-epochs": "epochs",
    "batch-size": "batch_size",
    "local-steps": "local_steps",
    "momentum": "momentum",
    "weight-decay": "weight_decay",
}


PROXIMAL_MU_KEY = "proximal-mu"  # flwr's FedProx puts its mu in the train config under this key


def received_model(msg: Message, layout: Layout, arrayrecord_key: str = "arrays") -> torch.Tensor:
    """The flat ``[P]`` model in the server's message (the one ArrayRecord, or the one under ``arrayrecord_key``)."""
    records = msg.content.array_records
    record = records.get(arrayrecord_key)
    if record is None and len(records) == 1:
        record = next(iter(records.values()))
    if record is None:
        raise RunError(f"the server's message has no ArrayRecord {arrayrecord_key!r} (it has {sorted(records)})")
    return from_arrayrecord(layout, record, "the server's model")


def received_config(msg: Message) -> ConfigRecord:
    """The message's ConfigRecord (``"config"``, or its only one), empty when there is none."""
    records = msg.content.config_records
    if "config" in records:
        return records["config"]
    return next(iter(records.values())) if len(records) == 1 else ConfigRecord()


def train_config(config: ConfigRecord, base: TrainConfig) -> TrainConfig:
    """``base`` with the values the server sent (``lr``, ``local-epochs``, ...), checked like a ``train`` config."""
    updates = {field: config[key] for key, field in CONFIG_OVERRIDES.items() if key in config}
    return TrainConfig.from_config({**asdict(base), **updates}) if updates else base


def train_reply(
    msg: Message,
    model: nn.Module,
    layout: Layout,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    client: int = 0,
    fisher: bool | None = None,
    arrayrecord_key: str = "arrays",
) -> Message:
    """Train from the received model on ``(x, y)`` and return the reply message.

    ``client`` is the client's id in the seeded streams (its partition id); ``fisher=None`` sends the
    Fisher diagonal only when the server asked for it.
    """
    params = received_model(msg, layout, arrayrecord_key)
    config = received_config(msg)
    cfg = train_config(config, cfg)
    server_round = int(config.get("server-round", 0))
    requested = config.get(REQUIRES_KEY, [])
    requested = requested.split(",") if isinstance(requested, str) else list(requested)  # legacy: "a,b"
    unknown = sorted(set(requested) - {"fisher", "start_loss"})
    if unknown:
        raise RunError(
            f"the server asks for client extras {unknown}; this client can compute only 'fisher' and 'start_loss'"
        )
    metrics: dict[str, int | float] = {}
    if "start_loss" in requested:  # q-FedAvg: the loss at the received model, before training
        metrics[START_LOSS_METRIC] = float(per_row_losses(model, layout, params, x, y, torch.arange(len(y))).mean())
    # flwr's FedProx sends its mu as "proximal-mu": the client adds mu (w - w_received) to every gradient
    prox = float(config.get(PROXIMAL_MU_KEY, 0.0))
    result = local_train(
        model, layout, params, x, y, cfg, torch_generator(seed, "train", server_round, client), prox=prox
    )
    metrics.update({"num-examples": result.num_samples, "train-steps": result.steps})
    if result.steps:
        metrics["train-loss"] = result.loss
    content = RecordDict({"arrays": to_arrayrecord(layout, result.params), "metrics": MetricRecord(metrics)})
    if fisher or (fisher is None and "fisher" in requested):
        from .fisher import diagonal_fisher

        diag = diagonal_fisher(model, layout, result.params, x) if len(x) else torch.zeros_like(result.params)
        content["fisher"] = to_arrayrecord(layout, diag)
    return Message(content, reply_to=msg)


def evaluate_reply(
    msg: Message, model: nn.Module, layout: Layout, x: torch.Tensor, y: torch.Tensor, arrayrecord_key: str = "arrays"
) -> Message:
    """Score the received model on ``(x, y)``: ``num-examples``, ``accuracy`` and ``loss``."""
    params = received_model(msg, layout, arrayrecord_key)
    metrics: dict[str, int | float] = {"num-examples": int(len(y))}
    if len(y):
        acc, loss = evaluate(model, layout, params, x, y)
        metrics.update(accuracy=float(acc), loss=float(loss))
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@lru_cache(maxsize=4)
def cached_experiment(overrides: tuple[str, ...]):
    """gossipsoup's experiment for these Hydra overrides, built once per process.

    Flower runs a ClientApp per message (a fresh process on a real SuperNode, a long-lived Ray
    actor in simulation); every client composes the same config and seed, so all of them derive the
    same data split and partition without data moving, and an actor builds it only once. A function
    of this importable module (not of a script) so that the cache lives in the actor, not in a
    pickled copy of the caller.
    """
    from hydra import compose, initialize_config_module

    from .experiment import build_experiment
    from .threads import configure_for_experiment

    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    exp = build_experiment(cfg)
    if exp.attack is not None and exp.attack.name != "label_flip":
        raise ConfigError(
            "attack.name",
            exp.attack.name,
            "none or label_flip in a Flower app",
            "Crafted attacks replace Byzantine models at gossipsoup's own server (python -m sim); a Flower "
            "ServerApp never sees them. label_flip works: its clients train on flipped labels.",
        )
    configure_for_experiment(exp)  # torch's threads as in a simulator run (sim/threads.py)
    return exp


def model_message(
    layout: Layout,
    params: torch.Tensor,
    config: dict | None = None,
    *,
    node_id: int = 1,
    message_type: str = "train",
    run_id: int = 1,
) -> Message:
    """An instruction message with the records Flower's FedAvg sends, for driving a client outside a run.

    Inside a ServerApp, Flower fills the metadata from the running task; here it is given explicitly
    (the SuperLink's node id is 0), so tests and scripts need no ServerApp process.
    """
    content = RecordDict({"arrays": to_arrayrecord(layout, params), "config": ConfigRecord(config or {})})
    metadata = Metadata(
        run_id=run_id,
        message_id=f"{run_id}-{node_id}-{time.time_ns()}",
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


__all__ = [
    "cached_experiment",
    "train_reply",
    "evaluate_reply",
    "received_model",
    "received_config",
    "train_config",
    "model_message",
]
