"""Compressed FL messages: client uploads and, with ``compress.downlink``, the server's broadcast.

Client k trains from the global model w and sends ``m_k = C(x_k - w + e_k)``; the server decodes
``w + m_k`` and aggregates those models as it would the exact ones (so every rule that reads models
works unchanged). With error feedback ``e_k <- x_k - w + e_k - m_k``, a row per client in ``[N, S]``
(S the shared entries: entries a rule keeps local are neither sent nor compressed). With the downlink,
the server sends ``d = C(w' - w + e_s)`` for its new model w', every client applies it, and the
server continues from the same ``w + d`` (DoubleSqueeze, Tang et al. 2019, with the model change in
place of the gradient); ``e_s`` is its own residual. A broadcast reaches every client (a client that
missed rounds is assumed to catch up on the messages it missed), and a round nobody completed
broadcasts nothing new.

Random draws: ``("compress", "up", round, client)`` and ``("compress", "down", round, 0)``. The residuals
live in the strategy state under :data:`KEY` while it is checkpointed; the strategy never sees them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .compressors import Compressor
from .config import CompressConfig
from .feedback import RESIDUALS_KEY, ErrorFeedback, SharedEntries, compress_streams

if TYPE_CHECKING:
    from sim.experiment import Experiment

KEY = RESIDUALS_KEY


class FLCompression:
    """One FL run's compressed uploads (and broadcast), with their residuals."""

    def __init__(
        self,
        conf: CompressConfig,
        compressor: Compressor,
        seed: int,
        num_clients: int,
        num_params: int,
        shared: torch.Tensor | None,
        element_size: int = 4,
    ):
        self.seed = seed
        self.entries = SharedEntries(shared, num_params)
        sent = self.entries.size
        self.up = ErrorFeedback(compressor, conf.error_feedback)
        self.down = ErrorFeedback(compressor, conf.error_feedback) if conf.downlink else None
        self.upload_bytes = compressor.message_bytes(sent)
        self.download_bytes = compressor.message_bytes(sent) if conf.downlink else sent * element_size
        self.memory: dict[str, Any] = {
            "up": self.up.init_memory(num_clients, sent) if conf.error_feedback else None,
            "down": self.up.init_memory(1, sent) if conf.error_feedback and conf.downlink else None,
        }

    @classmethod
    def for_run(cls, exp: Experiment, shared: torch.Tensor | None) -> FLCompression | None:
        conf = CompressConfig.from_config(exp.cfg.get("compress"))
        compressor = conf.build()
        if compressor is None:
            return None
        p = exp.initial_params
        return cls(conf, compressor, int(exp.cfg.seed), exp.data.num_clients, p.numel(), shared, p.element_size())

    def take(self, state: Any) -> Any:
        """The strategy's own state; the residuals a resumed state carries become this object's."""
        if isinstance(state, dict) and KEY in state:
            self.memory = dict(state[KEY])
            return {k: v for k, v in state.items() if k != KEY}
        return state

    def join(self, state: Any) -> Any:
        """The state to checkpoint: the strategy's state with the residuals."""
        return {**state, KEY: dict(self.memory)}

    def upload(
        self, models: torch.Tensor, client_ids: torch.Tensor, reference: torch.Tensor, round_: int
    ) -> torch.Tensor:
        """``[K, P]``: the models the server decodes from the K clients' compressed updates."""
        ref = self.entries.part(reference)
        gens = compress_streams(self.seed, ("up",), round_, client_ids)
        sent, self.memory["up"] = self.up.apply(self.entries.part(models) - ref, self.memory["up"], client_ids, gens)
        return self.entries.put(models, ref + sent)

    def broadcast(self, new: torch.Tensor, old: torch.Tensor, round_: int) -> torch.Tensor:
        """``[P]``: the global model after the broadcast (``new`` itself without ``compress.downlink``)."""
        if self.down is None:
            return new
        ref = self.entries.part(old)
        gens = compress_streams(self.seed, ("down",), round_, torch.zeros(1, dtype=torch.int64))
        delta = (self.entries.part(new) - ref).unsqueeze(0)
        sent, self.memory["down"] = self.down.apply(delta, self.memory["down"], torch.zeros(1, dtype=torch.int64), gens)
        return self.entries.put(new, ref + sent[0])
