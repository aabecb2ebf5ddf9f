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
#: top_entries looks at every SAMPLE_STRIDE-th entry first
SAMPLE_STRIDE = 8


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


def top_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """``[K, n]`` bool: the k largest entries of each row; ties at the k-th value go to the lowest indices."""
    threshold = values.topk(k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    keep = values >= threshold
    if bool((keep.sum(dim=1, dtype=torch.int64) == k).all()):
        return keep
    above = values > threshold  # fewer than k: fill with the tied entries of lowest index
    tied = values == threshold
    need = k - above.sum(dim=1, keepdim=True, dtype=torch.int64)
    return above | (tied & (tied.cumsum(dim=1) <= need))


def top_entries(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of the k largest entries of each row of finite ``values`` ``[K, n]``, ties to the lowest index.

    ``torch.topk`` over rows of a million entries and full-size passes dominate the cost, so for k < 0.4 n it
    looks at every 8th entry first: that sample's ``1.25 k / 8 + 32``-th largest is a bound about 1.25 k entries
    of the row reach, and the k largest are among those candidates, selected on a ``[K, ~1.25 k]`` matrix of them
    alone (kept in index order, so ties resolve as on the full row). A row where fewer than k entries reach the
    bound (a sample unlike its row) is selected on the full row. Either way the result is exact.
    """
    rows, n = values.shape
    if k >= n:
        mask = torch.ones_like(values, dtype=torch.bool)
    elif 2.5 * k >= n or n < 64:
        mask = top_mask(values, k)
    if k >= n or 2.5 * k >= n or n < 64:
        r, c = mask.nonzero(as_tuple=True)
        return r, c
    sample = values[:, ::SAMPLE_STRIDE]
    q = min(sample.shape[1], math.ceil(1.25 * k / SAMPLE_STRIDE) + 32)
    bound = sample.topk(q, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    row, col = (values >= bound).nonzero(as_tuple=True)  # row-major: each row's candidates in index order
    counts = torch.bincount(row, minlength=rows)
    short = counts < k
    out_rows, out_cols = [], []
    if bool(short.any()):
        keep = ~short[row]
        row, col = row[keep], col[keep]
        counts = counts.masked_fill(short, 0)
        short_ids = short.nonzero().squeeze(1)
        r, c = top_mask(values[short_ids], k).nonzero(as_tuple=True)
        out_rows.append(short_ids[r])
        out_cols.append(c)
    if not bool(short.all()):
        ok_ids = (~short).nonzero().squeeze(1)
        position = torch.cumsum(~short, 0) - 1  # row id -> its row in the candidate matrix
        counts_ok = counts[ok_ids]
        offsets = torch.cumsum(counts_ok, 0) - counts_ok
        r = position[row]
        j = torch.arange(len(row)) - offsets[r]
        width = int(counts_ok.max())
        padded = torch.full((len(ok_ids), width), -math.inf, dtype=values.dtype)
        padded[r, j] = values[row, col]
        cols = torch.zeros((len(ok_ids), width), dtype=torch.int64)
        cols[r, j] = col
        sel_r, sel_j = top_mask(padded, k).nonzero(as_tuple=True)
        out_rows.append(ok_ids[sel_r])
        out_cols.append(cols[sel_r, sel_j])
    return torch.cat(out_rows), torch.cat(out_cols)


def keep_entries(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x`` with every entry but ``(rows, cols)`` set to zero."""
    out = torch.zeros_like(x)
    out[rows, cols] = x[rows, cols]
    return out


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


class Sparse(Compressor):
    """k = max(1, ceil(fraction * n)) entries per row, the rest zero, sent as k int32 indices + k float32 values."""

    def __init__(self, fraction: float):
        self.fraction = float(fraction)

    def entries(self, x: torch.Tensor, generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, cols)`` of the kept entries of each row."""
        raise NotImplementedError

    def mask(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        out = torch.zeros_like(x, dtype=torch.bool)
        out[self.entries(x, generator)] = True
        return out

    def message_bytes(self, num_values: int) -> int:
        return 8 * min(num_values, count_for(self.fraction, num_values))


class TopK(Sparse):
    """The k entries of largest magnitude per row, the rest zero (Stich et al. 2018; ChocoSGD's ``top_k``).

    Ties at the k-th magnitude go to the lowest indices (``torch.topk`` leaves that order unspecified).
    """

    name = "topk"

    def entries(self, x: torch.Tensor, generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = _as_stack(x)
        return top_entries(x.abs(), count_for(self.fraction, x.shape[1]))

    def roundtrip(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        return keep_entries(x, *self.entries(x))


class RandomK(Sparse):
    """k entries per row drawn uniformly without replacement, the rest zero.

    ``scaled=False`` (the default) sends the entries as they are: a contraction, what error feedback
    (Stich et al. 2018) and CHOCO (Koloskova et al. 2019) assume; ``scaled=True`` multiplies them by
    n / k, which makes the message unbiased (ChocoSGD's ``is_biased=False``) but not a contraction.
    The indices are those of the k smallest of n uniform draws per row (a uniform k-subset; tied draws: lowest index).
    """

    name = "randomk"
    random = True

    def __init__(self, fraction: float, scaled: bool = False):
        super().__init__(fraction)
        self.scaled = bool(scaled)

    def entries(self, x: torch.Tensor, generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = _as_stack(x)
        draws = uniform(tuple(x.shape), generator)  # type: ignore[arg-type]
        return top_entries(-draws, count_for(self.fraction, x.shape[1]))  # float32 draws repeat: ties to lowest index

    def roundtrip(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        out = keep_entries(x, *self.entries(x, generator))
        if self.scaled:
            n = x.shape[1]
            out = out * (n / min(n, count_for(self.fraction, n)))
        return out


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
