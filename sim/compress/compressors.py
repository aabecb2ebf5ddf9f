"""Message compressors on a stack of K messages ``[K, P]``, vectorized over rows (docs/compression.md).

Each compressor gives what the receiver decodes (:meth:`Compressor.roundtrip`) and the exact size of
the encoded message (:meth:`Compressor.message_bytes`), so a run can count bytes without building the
bit stream. Encodings (one message of n float32 values):

- top-k / random-k: k = max(1, ceil(fraction * n)) entries as int32 indices + float32 values: 8k bytes;
- QSGD with s levels: one float32 norm + per value a sign bit and a level in [0, s], packed in
  ``1 + ceil(log2(s + 1))`` bits: ``4 + ceil(n * bits / 8)`` bytes;
- scaled sign: one float32 scale + one bit per value: ``4 + ceil(n / 8)`` bytes;
- b-bit uniform quantization: float32 minimum and step + b bits per value: ``8 + ceil(n * b / 8)`` bytes.

Randomness comes from the caller's generator(s): one ``torch.Generator`` draws the whole ``[K, P]`` stack,
a list of K generators draws row k from generator k (a per-client stream gives client k the same
numbers whoever else is in the stack). Deterministic compressors ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def uniform(shape: tuple[int, int], generator: Generators, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[K, P]`` uniform draws in [0, 1): from one generator, or row k from ``generator[k]``."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, dtype=dtype)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"{len(gens)} generators for {shape[0]} rows")
    if not gens:
        return torch.empty(shape, dtype=dtype)
    return torch.stack([torch.rand(shape[1], generator=g, dtype=dtype) for g in gens])


def count_for(fraction: float, num_values: int) -> int:
    """k = max(1, ceil(fraction * n)); the product is rounded to 6 decimals first (0.1 * 4810 is 481, not 482)."""
    return max(1, math.ceil(round(fraction * num_values, 6)))


def packed_bytes(num_values: int, bits: int) -> int:
    return (num_values * bits + 7) // 8


def _as_stack(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"compressors take a [K, P] stack, got shape {tuple(x.shape)}")
    return x


class Compressor:
    """Base class: ``roundtrip`` (encode then decode, ``[K, P] -> [K, P]``) and ``message_bytes``."""

    name = "compressor"
    #: True when ``roundtrip`` draws random numbers (the caller must pass a seeded generator)
    random = False

    def roundtrip(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        raise NotImplementedError

    def message_bytes(self, num_values: int) -> int:
        raise NotImplementedError


class TopK(Compressor):
    """The k entries of largest magnitude per row, the rest zero (Stich et al. 2018; ChocoSGD's ``top_k``).

    Ties at the k-th magnitude go to the lowest indices (``torch.topk`` leaves that order unspecified).
    """

    name = "topk"

    def __init__(self, fraction: float):
        self.fraction = float(fraction)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_stack(x)
        k = count_for(self.fraction, x.shape[1])
        if k >= x.shape[1]:
            return torch.ones_like(x, dtype=torch.bool)
        mag = x.abs()
        threshold = mag.topk(k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
        keep = mag >= threshold
        if bool((keep.sum(dim=1) == k).all()):
            return keep
        above = mag > threshold  # fewer than k: fill with the tied entries of lowest index
        tied = mag == threshold
        need = k - above.sum(dim=1, keepdim=True)
        return above | (tied & (tied.cumsum(dim=1) <= need))

    def roundtrip(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        return torch.where(self.mask(x), x, torch.zeros((), dtype=x.dtype))

    def message_bytes(self, num_values: int) -> int:
        return 8 * min(num_values, count_for(self.fraction, num_values))


class RandomK(Compressor):
    """k entries per row drawn uniformly without replacement, the rest zero.

    ``scaled=False`` (the default) sends the entries as they are: a contraction, what error feedback
    (Stich et al. 2018) and CHOCO (Koloskova et al. 2019) assume; ``scaled=True`` multiplies them by
    n / k, which makes the message unbiased (ChocoSGD's ``is_biased=False``) but not a contraction.
    The indices are the k smallest of n uniform draws per row (a uniform k-subset).
    """

    name = "randomk"
    random = True

    def __init__(self, fraction: float, scaled: bool = False):
        self.fraction, self.scaled = float(fraction), bool(scaled)

    def mask(self, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        x = _as_stack(x)
        n = x.shape[1]
        k = count_for(self.fraction, n)
        draws = uniform((x.shape[0], n), generator)
        if k >= n:
            return torch.ones_like(x, dtype=torch.bool)
        index = draws.topk(k, dim=1, largest=False, sorted=False).indices
        return torch.zeros_like(x, dtype=torch.bool).scatter_(1, index, True)

    def roundtrip(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        out = torch.where(self.mask(x, generator), x, torch.zeros((), dtype=x.dtype))
        if self.scaled:
            n = x.shape[1]
            out = out * (n / min(n, count_for(self.fraction, n)))
        return out

    def message_bytes(self, num_values: int) -> int:
        return 8 * min(num_values, count_for(self.fraction, num_values))


class QSGD(Compressor):
    """QSGD, s levels (Alistarh et al. 2017): ``||x||_2 sign(x_i) xi_i / s``, xi_i = s |x_i| / ||x|| rounded at random.

    Unbiased. ``rescaled=True`` divides by ``tau = 1 + min(n / s^2, sqrt(n) / s)``, the contraction
    CHOCO-SGD uses (ChocoSGD's ``is_biased=True``). An all-zero row stays zero.
    """

    name = "qsgd"
    random = True

    def __init__(self, levels: int, rescaled: bool = False):
        self.levels, self.rescaled = int(levels), bool(rescaled)

    def roundtrip(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        x = _as_stack(x)
        s = self.levels
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        safe = torch.where(norm > 0, norm, torch.ones((), dtype=x.dtype))
        level = s * x.abs() / safe
        low = level.floor()
        up = uniform(tuple(x.shape), generator, x.dtype) < (level - low)  # type: ignore[arg-type]
        out = torch.sign(x) * norm * (low + up.to(x.dtype)) / s
        if self.rescaled:
            n = x.shape[1]
            out = out / (1.0 + min(n / s**2, math.sqrt(n) / s))
        return out

    def bits_per_value(self) -> int:
        return 1 + math.ceil(math.log2(self.levels + 1))

    def message_bytes(self, num_values: int) -> int:
        return 4 + packed_bytes(num_values, self.bits_per_value())


class ScaledSign(Compressor):
    """``(||x||_1 / n) sign(x)`` per row (Karimireddy et al. 2019, EF-SGD), one bit per value.

    A zero entry is sent as +1 (the bit has two states; ``torch.sign`` would need a third), so a row
    with some zeros decodes them to +scale; an all-zero row has scale 0 and decodes to zeros.
    """

    name = "sign"

    def roundtrip(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        x = _as_stack(x)
        scale = x.abs().sum(dim=1, keepdim=True) / x.shape[1]
        return torch.where(x < 0, -scale, scale)

    def message_bytes(self, num_values: int) -> int:
        return 4 + packed_bytes(num_values, 1)


class Quantize(Compressor):
    """b-bit uniform quantization per row: ``min + round((x - min) / step) * step``, step = (max - min) / (2^b - 1).

    Rounds to nearest (deterministic; ties to even, as ``torch.round``): the error of each value is at
    most step / 2 and error feedback carries it to the next message. A constant row is sent exactly.
    """

    name = "quantize"

    def __init__(self, bits: int):
        self.bits = int(bits)

    def roundtrip(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        x = _as_stack(x)
        if x.shape[1] == 0:
            return x.clone()
        low = x.min(dim=1, keepdim=True).values
        step = (x.max(dim=1, keepdim=True).values - low) / (2**self.bits - 1)
        safe = torch.where(step > 0, step, torch.ones((), dtype=x.dtype))
        q = ((x - low) / safe).round().clamp_(0, 2**self.bits - 1)
        return torch.where(step > 0, low + q * step, low)

    def message_bytes(self, num_values: int) -> int:
        return 8 + packed_bytes(num_values, self.bits)
