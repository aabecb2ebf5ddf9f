"""Compressed messages: top-k, random-k, QSGD, scaled sign, b-bit quantization, error feedback (docs/compression.md).

``build_compressor(cfg.compress)`` gives a :class:`Compressor` (None for ``compress=none``) whose
``roundtrip`` is what the receiver decodes from a ``[K, P]`` stack and whose ``message_bytes`` is
the exact encoded size of one message. FL applies it to client uploads (sim/compress/fl.py); the
gossip loops to their messages (sim/gossip/).
"""

from .compressors import QSGD, Compressor, Quantize, RandomK, ScaledSign, TopK, count_for
from .config import CompressConfig, build_compressor
from .feedback import ErrorFeedback, compress_streams

__all__ = [
    "QSGD",
    "CompressConfig",
    "Compressor",
    "ErrorFeedback",
    "Quantize",
    "RandomK",
    "ScaledSign",
    "TopK",
    "build_compressor",
    "compress_streams",
    "count_for",
]
