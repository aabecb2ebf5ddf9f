"""Error feedback and the seeded streams compressors draw from.

Error feedback (Seide et al. 2014; Stich et al. 2018; Karimireddy et al. 2019): a sender adds what
its earlier messages left out before compressing, ``m = C(u + e)``, and keeps the rest,
``e <- (u + e) - m``. The residuals are rows of an ``[N, P]`` tensor (one per client or node), plain
data that the run state checkpoints, so a resumed run continues with the same residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sim.seeding import torch_generators

from .compressors import Compressor, Generators

#: where a run's checkpoint keeps the residuals (FL's strategy state and the gossip loops' carried tensors)
RESIDUALS_KEY = "compress_residuals"


class SharedEntries:
    """The entries a message carries: all of them (``shared=None``) or a rule's shared ones (local layers stay home).

    FL uploads and gossip messages both compress ``part(x)`` only and put the decoded part back over the
    sender's own local entries, so the index is built once per run here rather than by each.
    """

    def __init__(self, shared: torch.Tensor | None, num_values: int):
        self.index = None if shared is None else torch.nonzero(shared).squeeze(1)
        self.size = num_values if self.index is None else len(self.index)

    def part(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.index is None else x[..., self.index.to(x.device)]

    def put(self, base: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        """``base`` with its sent entries replaced by ``part`` (``part`` itself when every entry is sent)."""
        if self.index is None:
            return part
        out = base.clone()
        out[..., self.index.to(base.device)] = part
        return out


def compress_streams(seed: int, keys: tuple, round_: int, senders: torch.Tensor) -> list[torch.Generator]:
    """One generator per sender: ``torch_generator(seed, "compress", *keys, round_, sender)``.

    Per round and per sender, so a message's random draws depend on nothing but who sends it when:
    every backend, batch order and resume gives the same numbers.
    """
    ids = senders.numpy().astype(np.int64)
    return list(torch_generators(seed, ("compress", *keys), [np.full(len(ids), round_), ids]))


@dataclass
class ErrorFeedback:
    """A compressor with a residual per sender (``enabled=False``: the plain compressor, no residual)."""

    compressor: Compressor
    enabled: bool = True

    def init_memory(self, num_rows: int, num_values: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(num_rows, num_values, dtype=dtype)

    def apply(
        self, updates: torch.Tensor, memory: torch.Tensor | None, rows: torch.Tensor, generator: Generators = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(C(u + e_rows), memory with rows set to (u + e_rows) - C(u + e_rows))``; the input memory is unchanged.

        ``rows`` are the senders' rows of ``memory`` (unique). Without feedback memory stays None.
        """
        if not self.enabled or memory is None:
            return self.compressor.roundtrip(updates, generator), memory
        corrected = updates + memory[rows]
        sent = self.compressor.roundtrip(corrected, generator)
        memory = memory.clone()
        memory[rows] = corrected - sent
        return sent, memory
