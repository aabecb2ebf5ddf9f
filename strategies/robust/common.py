"""What every robust rule shares: the number f of Byzantine inputs, its limit, and stack-wide kernels.

ByzFL and the papers write the rules for gradients or updates; here the stack holds models. Rules
that only compare the inputs with each other (median, Krum, NNM...) give the same answer either way,
because they commute with a shift of every input; rules that measure a norm from an origin
(clipping, ARC, the start of Weiszfeld's iteration) take ``info.reference`` (FL: the global model,
gossip: the receiver's own model) as that origin, which is the zero update of the papers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sim.errors import ConfigError
from sim.validation import integer

from ..base import AggregationInfo, Strategy


def check_f(field: str, f: Any) -> int | None:
    """``f`` as given in a config: null (take it from the run) or an integer >= 0."""
    if f is None:
        return None
    return integer(field, f, 0, allowed="null (the run's number of Byzantine models) or an integer >= 0")


def resolve_f(f: int | None, num_byzantine: int) -> int:
    """The configured ``f``, or the run's count when the config left it null."""
    return int(num_byzantine) if f is None else f


def refuse_f(field: str, rule: str, n: int, f: int, most: int, limit: str, configured: bool) -> None:
    """The error every tolerance check raises: which limit, how many models, and where f came from."""
    origin = "set in the config" if configured else "the number of Byzantine models the run declares (strategy.f=null)"
    allowed = f"at most {most} for {rule} with n={n} models per aggregation ({limit})"
    if most < 0:
        allowed = f"none: {rule} needs more than n={n} models per aggregation ({limit})"
    raise ConfigError(
        field,
        f,
        allowed,
        f"f is {origin}. Use fewer Byzantine clients, more models per aggregation, or a rule with a higher limit.",
    )


class RobustRule(Strategy):
    """A strategy that tolerates up to ``f`` Byzantine rows of the stack; subclasses set ``limit``.

    ``f = None`` means "the run's ``info.num_byzantine``". ``max_tolerated(n)`` is the largest f the
    rule accepts with n inputs; ``check_tolerance(n, num_byzantine)`` refuses beyond it, before any
    work when the config check calls it, and again in ``aggregate`` for the K that actually arrived.
    """

    #: the tolerance condition as the papers write it, for error messages and docs
    limit: str = "n > 2f"

    def __init__(self, f: int | None = None):
        self.f = check_f("strategy.f", f)

    def max_tolerated(self, n: int) -> int:
        return max((n - 1) // 2, 0)

    def check_tolerance(self, n: int, num_byzantine: int = 0) -> None:
        f = resolve_f(self.f, num_byzantine)
        if n < 1 or f > self.max_tolerated(n):
            refuse_f("strategy.f", self.name, n, f, self.max_tolerated(n), self.limit, self.f is not None)

    def tolerated_f(self, models: torch.Tensor, info: AggregationInfo) -> int:
        """This call's f, after checking that the K models that arrived can tolerate it."""
        self.check_tolerance(len(models), info.num_byzantine)
        return resolve_f(self.f, info.num_byzantine)


def sort_columns(models: torch.Tensor) -> torch.Tensor:
    """``models`` sorted along the model axis (each coordinate's K values in increasing order).

    On the CPU numpy's sort does it: without the index tensor torch.sort always builds, and with
    numpy's vectorised sort kernels, it is more than ten times faster than torch.sort on a
    ``[100, 1M]`` float32 stack (1.2 s against 20 s, one thread). Elsewhere torch.sort.
    """
    if models.device.type == "cpu" and not models.requires_grad and models.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(models.numpy(), axis=0))
    return torch.sort(models, dim=0).values


def median_of_sorted(ordered: torch.Tensor) -> torch.Tensor:
    """numpy's median of sorted columns: the middle value, or the mean of the two middle values for even K."""
    n = len(ordered)
    if n % 2:
        return ordered[n // 2].clone()
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def coordinate_median(models: torch.Tensor) -> torch.Tensor:
    """numpy's median per coordinate (torch.median would give the lower of the two middle values)."""
    return median_of_sorted(sort_columns(models))


def mean_of_nearest(models: torch.Tensor, center: torch.Tensor, count: int) -> torch.Tensor:
    """Per coordinate, the mean of the ``count`` values nearest ``center`` (MeaMed, Bulyan's last step).

    The ``count`` nearest values of a column are a run of its sorted values. With g(s) = |o_s - c| -
    |o_{s+count} - c| (how much nearer the value entering is than the one leaving when the run moves
    from start s to s + 1), g is >= 0, then non-increasing, then <= 0 along s, so the run starts one
    past the last s with g(s) > 0: column [-3, -3, 0, 0.5, 2], median 0, four kept gives 0, 0.5, 2
    and one -3 (ByzFL's -0.125; a run ending at the farthest value would keep both -3s). Only where
    the value leaving and the one entering are equally far on either side of the centre does the
    choice change the mean; those columns take ByzFL's and Flower's own choice (``np.argpartition``
    of the distances, rows in the order given), so the result equals theirs there too.
    """
    n = len(models)
    spare = n - count  # the run starts at 0..spare
    if spare <= 0:
        return models.mean(dim=0)
    ordered = sort_columns(models)
    leaving = (ordered[:spare] - center).abs()  # [spare, P]: |o_s - c|
    entering = (ordered[count:] - center).abs()  # |o_{s+count} - c|
    steps = torch.arange(1, spare + 1, device=models.device, dtype=torch.int64)[:, None]
    first = torch.where(leaving > entering, steps, 0).amax(dim=0)  # [P]
    if count <= spare:  # short runs: no row is in every run, mask them all
        row = torch.arange(n, device=models.device)[:, None]
        out = torch.where((row >= first) & (row < first + count), ordered, 0).sum(dim=0) / count
    else:  # rows spare..count-1 are in every run; only the spare rows at either end are masked
        low = torch.where(steps - 1 >= first, ordered[:spare], 0).sum(dim=0)  # rows 0..spare-1: in when >= first
        high = torch.where(steps - 1 < first, ordered[count:], 0).sum(dim=0)  # rows count..n-1: in when < first + count
        out = (ordered[spare:count].sum(dim=0) + low + high) / count
    # equally far on either side at or past the start: the run is not unique and the choice moves the mean
    even = (leaving == entering) & (ordered[:spare] != ordered[count:]) & (steps - 1 >= first)
    tie = even.any(dim=0)
    if bool(tie.any()):
        columns = tie.nonzero().squeeze(1)
        out[columns] = nearest_as_numpy(models[:, columns], center[columns], count)
    return out


def nearest_as_numpy(models: torch.Tensor, center: torch.Tensor, count: int) -> torch.Tensor:
    """ByzFL's ``Meamed`` selection on a few columns: ``np.argpartition`` of ``|x - c|`` along the rows."""
    rows, mid = models.detach().cpu().numpy(), center.detach().cpu().numpy()
    picks = np.argpartition(np.abs(rows - mid), count - 1, axis=0)[:count]
    return torch.from_numpy(np.take_along_axis(rows, picks, axis=0).mean(axis=0)).to(models.device)


#: a pair whose squared distance from the Gram matrix is below this share of its squared norms (about the
#: centre) has lost digits to cancellation and is measured again by a direct difference
CANCELLATION = 1e-2


def pairwise_sq_distances(models: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` squared Euclidean distances, float64, exact to rounding whatever the scale of other rows.

    ``|a - c|^2 + |b - c|^2 - 2 (a - c)(b - c)`` from one float64 Gram matrix about the coordinate-wise
    median ``c``: the median stays with the bulk of the rows however far a few others are (a mean
    would follow one row of 1e6 and erase every distance among ordinary rows), and float64 keeps the
    digits that float32 loses. Pairs that are much nearer each other than to ``c`` (a cluster away
    from the bulk, e.g. identical crafted rows) would still cancel, so those are measured again as
    ``|a - b|^2`` directly (``CANCELLATION``). A row with an inf or NaN is infinitely far from every
    other row (the "infinity" attack must not turn every distance into NaN); its distance to itself is 0.
    """
    k = len(models)
    finite = torch.isfinite(models).all(dim=1)
    dist = torch.full((k, k), float("inf"), dtype=torch.float64, device=models.device)
    if finite.any():
        rows = models[finite] if not finite.all() else models
        gram = gram_about(rows, median_of_sorted(sort_columns(rows)))
        sq = gram.diagonal()
        norms = sq[:, None] + sq[None, :]
        inner = (norms - 2 * gram).clamp_min_(0)
        left, right = torch.triu_indices(len(rows), len(rows), 1, device=rows.device)
        lost = inner[left, right] < CANCELLATION * norms[left, right]
        if bool(lost.any()):
            i, j = left[lost], right[lost]
            direct = direct_sq_distances(rows, i, j)
            inner[i, j] = direct
            inner[j, i] = direct
        index = finite.nonzero().squeeze(1)
        dist[index[:, None], index[None, :]] = inner
    dist.fill_diagonal_(0)
    return dist


def column_blocks(rows: torch.Tensor, elements: int = 1 << 22) -> list[slice]:
    """Column slices of ``rows`` holding about ``elements`` values each (float64 copies stay a few MB)."""
    step = max(1, elements // max(len(rows), 1))
    return [slice(lo, lo + step) for lo in range(0, rows.shape[1], step)]


def gram_about(rows: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` inner products of ``rows - centre`` in float64, a block of columns at a time."""
    gram = torch.zeros((len(rows), len(rows)), dtype=torch.float64, device=rows.device)
    for cols in column_blocks(rows):
        block = rows[:, cols].to(torch.float64) - centre[cols].to(torch.float64)
        gram.addmm_(block, block.T)
    return gram


def direct_sq_distances(rows: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``|rows[i] - rows[j]|^2`` per pair, differences taken in float64, in blocks of pairs and columns."""
    out = torch.zeros(len(i), dtype=torch.float64, device=rows.device)
    pairs = max(1, (1 << 22) // max(rows.shape[1], 1))
    for lo in range(0, len(i), pairs):
        a, b = i[lo : lo + pairs], j[lo : lo + pairs]
        for cols in column_blocks(rows[: len(a)]):
            diff = rows[a, cols].to(torch.float64) - rows[b, cols].to(torch.float64)
            out[lo : lo + pairs] += (diff * diff).sum(dim=1)
    return out


def clip_scales(deltas: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """``[K]``: ``min(1, radius / ||row||)`` per row; a zero row gets 1 (it stays zero)."""
    norms = torch.linalg.vector_norm(deltas, dim=1)
    return torch.clamp(radius / norms.clamp_min(torch.finfo(deltas.dtype).tiny), max=1.0)


def zero_nonfinite_rows(deltas: torch.Tensor) -> torch.Tensor:
    """Rows holding inf or NaN become zero: such an input has no direction to clip along, so it moves nothing.

    Without this, clipping an infinite row gives ``0 * inf = NaN`` and one ``attack=infinity`` input
    makes every clipping rule's output NaN.
    """
    finite = torch.isfinite(deltas).all(dim=1)
    if bool(finite.all()):
        return deltas
    return torch.where(finite[:, None], deltas, torch.zeros((), dtype=deltas.dtype, device=deltas.device))


def clip_around(models: torch.Tensor, reference: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """``reference`` plus each row's difference from it scaled by ``min(1, radius / ||diff||)`` (a non-finite
    difference becomes zero), computed in one ``[K, P]`` buffer.

    The stack is the largest thing in memory (100 models of 1M parameters are 400 MB); scaling and
    shifting back in place saves two such allocations per call.
    """
    deltas = zero_nonfinite_rows(models - reference)
    return deltas.mul_(clip_scales(deltas, radius)[:, None]).add_(reference)
