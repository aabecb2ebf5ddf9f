"""Naive compressed gossip: a node's message is its compressed model ``C(x_j)`` (compress=..., any merge rule).

This is the baseline CHOCO (strategy=choco, :mod:`.choco`) improves on: the receiver merges its own exact
model with what it decodes from its neighbours' messages, so a sparsifier's zeros or a quantizer's error
enter every merge, and nothing corrects them later (Koloskova et al. 2019 show such schemes stall or
diverge; experiments/compression.md measures it). With ``compress.error_feedback`` the sender keeps a
residual ``e_j`` and sends ``C(x_j + e_j)``; the residuals are a row per node in the run's checkpoints.

Synchronous gossip compresses every node's model once per round (one message to all its neighbours),
drawing from ``("compress", "gossip", round, node)``; asynchronous gossip compresses each message when it
is sent, drawing from ``("compress", "gossip_async", n, node)``, n the run's count of sent messages
(checkpointed), so the draws do not depend on how deliveries are batched. The merge of a compressed
round goes through the per-node path (every rule; the sparse all-node product assumes exact messages).
"""

from __future__ import annotations

from typing import Any

import torch

from sim.compress import CompressConfig, ErrorFeedback, compress_streams
from sim.compress.config import refuse_model_sized_extras
from sim.compress.feedback import RESIDUALS_KEY, SharedEntries
from sim.errors import ConfigError

from .choco import check_choco_run, find_choco

KEY = RESIDUALS_KEY

__all__ = ["KEY", "ModelCodec", "check_gossip_compress_run", "message_bytes"]


def check_gossip_compress_run(cfg: Any, mode: str, strategy: Any) -> None:
    """CHOCO's combinations (:func:`.choco.check_choco_run`), and what naive compressed gossip refuses."""
    check_choco_run(cfg, mode, strategy)
    conf = CompressConfig.from_config(cfg.get("compress"))
    if mode != "gossip" or conf.name == "none" or find_choco(strategy) is not None:
        return
    refuse_model_sized_extras(
        conf, strategy, "The rule merges with each sender's exact {needs}, as large as the model itself."
    )
    attack = (cfg.get("attack") or {}).get("name", "none")
    if attack != "none":
        raise ConfigError(
            "attack.name",
            attack,
            "none with compressed gossip messages",
            "Byzantine nodes craft exact models; compressed gossip runs without an attack.",
        )


def message_bytes(exp: Any) -> int:
    """Bytes of one gossip model message of this run: encoded when compress=... is set, else float models.

    A message carries the strategy's shared entries only (``shared_mask``: FedPer, FedBN keep local layers home), as
    FL's uploads do (sim/federated.py).
    """
    shared = exp.strategy.shared_mask(exp.layout)
    p = exp.layout.size if shared is None else int(shared.sum())
    # under CHOCO a message is its q_i, encoded by the same compress= compressor (sim/gossip/choco.py)
    compressor = CompressConfig.from_config(exp.cfg.get("compress")).build()
    return p * exp.initial_params.element_size() if compressor is None else compressor.message_bytes(p)


class ModelCodec:
    """What receivers decode from the senders' compressed models, with the senders' residuals."""

    def __init__(
        self, conf: CompressConfig, seed: int, num_nodes: int, num_values: int, shared: torch.Tensor | None = None
    ):
        compressor = conf.build()
        assert compressor is not None
        self.feedback = ErrorFeedback(compressor, conf.error_feedback)
        self.seed = seed
        # only the shared entries are sent and compressed (local layers stay home); residuals are [N, shared]
        self.entries = SharedEntries(shared, num_values)
        self.residuals = self.feedback.init_memory(num_nodes, self.entries.size) if conf.error_feedback else None

    @classmethod
    def for_run(cls, exp: Any) -> ModelCodec | None:
        """The run's codec; None without compression and under CHOCO (which compresses differences itself)."""
        conf = CompressConfig.from_config(exp.cfg.get("compress"))
        if conf.name == "none" or find_choco(exp.strategy) is not None:
            return None
        shared = exp.strategy.shared_mask(exp.layout)
        return cls(conf, int(exp.cfg.seed), exp.data.num_clients, exp.layout.size, shared)

    def encode(self, models: torch.Tensor, senders: torch.Tensor, stream: str, key: int) -> torch.Tensor:
        """``[K, P]``: the decoded messages of ``senders`` (unique), their residuals updated."""
        gens = compress_streams(self.seed, (stream,), key, senders) if self.feedback.compressor.random else None
        part, self.residuals = self.feedback.apply(self.entries.part(models), self.residuals, senders, gens)
        return self.entries.put(models, part)  # local entries are not sent: a merge keeps the receiver's own

    def carried(self) -> dict[str, torch.Tensor]:
        return {} if self.residuals is None else {KEY: self.residuals}

    def restore(self, carried: dict[str, Any]) -> None:
        if KEY in carried:
            self.residuals = carried[KEY].clone()
