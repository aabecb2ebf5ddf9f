"""Robust pre-aggregation: transform the ``[K, P]`` stack, then hand it to any strategy.

``build_preagg`` turns the ``preagg`` config group into a :class:`PreAggregated` strategy holding
the configured steps and the inner rule (``nnm+krum``, ``arc+nnm+median``). Steps:

- ``nnm`` (Allouah et al. 2023): each input replaced by the mean of its n - f nearest inputs
  (itself included);
- ``bucketing`` (Karimireddy, He & Jaggi 2022): a random permutation cut into buckets of ``s``,
  each bucket averaged (the last one may be smaller); the inner rule sees ceil(n / s) rows;
- ``clipping``: each input's difference from ``info.reference`` clipped to norm ``c``;
- ``arc`` (Allouah et al. 2024, adaptive robust clipping): the int(2f (n - f) / n) largest
  differences from the reference clipped to the largest norm left unclipped;
- ``chain``: ``steps``, a list of the above (each a mapping with ``name`` and that step's keys), in order.

ByzFL applies clipping and ARC to gradients, i.e. to differences from the zero vector; on models
the origin is the reference (the global model in FL, the receiver's own model in gossip).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch

from sim.errors import ConfigError
from sim.seeding import torch_generator
from sim.validation import integer, number

from .base import AggregationInfo, State, Strategy
from .robust.common import check_f, clip_around, pairwise_sq_distances, refuse_f, resolve_f

if TYPE_CHECKING:
    from sim.training import ClientCorrection

PREAGG_STEPS = ("nnm", "bucketing", "clipping", "arc")


class Step:
    """One transformation of the stack; ``tolerated(n, f)`` returns the row count the next layer gets."""

    name = "step"

    def tolerated(self, n: int, f: int) -> int:
        return n

    def apply(self, models: torch.Tensor, info: AggregationInfo) -> tuple[torch.Tensor, AggregationInfo]:
        raise NotImplementedError


class NNM(Step):
    """Nearest-neighbour mixing: row i becomes the mean of the n - f rows nearest it (itself included).

    Needs f < n. Same numbers as ByzFL's ``NNM`` (up to ties in distance).
    """

    name = "nnm"

    def __init__(self, f: int | None = None):
        self.f = check_f("preagg.f", f)

    def tolerated(self, n: int, f: int) -> int:
        f = resolve_f(self.f, f)
        if f >= n:
            refuse_f("preagg.f", "nnm", n, f, n - 1, "f < n", self.f is not None)
        return n

    def apply(self, models: torch.Tensor, info: AggregationInfo) -> tuple[torch.Tensor, AggregationInfo]:
        n = len(models)
        self.tolerated(n, info.num_byzantine)
        keep = n - resolve_f(self.f, info.num_byzantine)
        nearest = torch.topk(pairwise_sq_distances(models), keep, dim=1, largest=False).indices
        mixing = torch.zeros(n, n, dtype=models.dtype, device=models.device)
        mixing.scatter_(1, nearest, 1.0 / keep)
        finite = torch.isfinite(models).all(dim=1)
        if bool(finite.all()):
            return mixing @ models, info
        # 0 * inf = NaN: a row that mixes no infinite input must stay finite, so infinite rows are added
        # only to the rows that chose them as neighbours
        mixed = mixing[:, finite] @ models[finite]
        for j in (~finite).nonzero().flatten().tolist():
            users = mixing[:, j] > 0
            mixed[users] += mixing[users, j, None] * models[j]
        return mixed, info


class Bucketing(Step):
    """Average random buckets of ``s`` inputs; the permutation is drawn from the run's seed.

    The stream is ``("preagg", "bucketing", round, receiver)`` (receiver: the gossip node's client
    id, ``"server"`` in FL), so a rerun permutes the same way and gossip nodes permute independently.
    The inner rule gets one row per bucket, with ``num_samples`` and the mixing weights summed over
    the bucket, ``client_ids`` the id of the bucket's first member, no ``self_index`` (no bucket is
    the receiver's own model) and the same ``num_byzantine`` (each Byzantine input may spoil its own
    bucket). ByzFL's ``Bucketing`` draws the permutation from the global RNG; given the same
    permutation the numbers agree.
    """

    name = "bucketing"

    def __init__(self, s: int = 2, seed: int = 0):
        self.s = integer("preagg.s", s, 1, allowed="an integer >= 1 (models per bucket)")
        self.seed = seed

    def tolerated(self, n: int, f: int) -> int:
        return math.ceil(n / self.s)

    def permutation(self, n: int, info: AggregationInfo) -> torch.Tensor:
        receiver: object = "server" if info.self_index is None else int(info.client_ids[info.self_index])
        generator = torch_generator(self.seed, "preagg", "bucketing", info.round, receiver)
        return torch.randperm(n, generator=generator, device=generator.device)  # the CPU's draw on every device

    def apply(self, models: torch.Tensor, info: AggregationInfo) -> tuple[torch.Tensor, AggregationInfo]:
        order = self.permutation(len(models), info).to(models.device)
        return bucket_means(models, order, self.s), bucket_info(info, order, self.s)


def bucket_of(order: torch.Tensor, s: int) -> torch.Tensor:
    """``[n]``: the bucket of each row when ``order`` is cut into consecutive groups of ``s``."""
    bucket = torch.empty_like(order)
    bucket[order] = torch.arange(len(order), device=order.device) // s
    return bucket


def summed_by_bucket(values: torch.Tensor, bucket: torch.Tensor, count: int) -> torch.Tensor:
    """``[count, ...]``: ``values [n, ...]`` summed over each bucket's rows."""
    out = torch.zeros(count, *values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add_(0, bucket.to(values.device), values)


def bucket_means(models: torch.Tensor, order: torch.Tensor, s: int) -> torch.Tensor:
    """``[ceil(n / s), P]``: the means of ``models[order]`` cut into consecutive groups of ``s``."""
    bucket, count = bucket_of(order, s), math.ceil(len(order) / s)
    sizes = torch.bincount(bucket, minlength=count).to(models.dtype)
    return summed_by_bucket(models, bucket, count) / sizes[:, None]


def bucket_info(info: AggregationInfo, order: torch.Tensor, s: int) -> AggregationInfo:
    """The info of the bucket rows (see :class:`Bucketing`)."""
    bucket, count = bucket_of(order, s), math.ceil(len(order) / s)
    sizes = torch.bincount(bucket, minlength=count).to(torch.float64)

    def mean(values: torch.Tensor) -> torch.Tensor:
        total = summed_by_bucket(values.to(torch.float64), bucket, count)
        return (total / sizes.reshape(-1, *[1] * (values.dim() - 1))).to(values.dtype)

    mixing = info.mixing_weights
    return dataclasses.replace(
        info,
        client_ids=info.client_ids[order[::s]],
        num_samples=summed_by_bucket(info.num_samples, bucket, count),
        self_index=None,
        extras={key: mean(value) for key, value in info.extras.items()},
        participation_prob=None if info.participation_prob is None else mean(info.participation_prob),
        mixing_weights=None if mixing is None else summed_by_bucket(mixing, bucket, count),
    )


class StaticClipping(Step):
    """Each difference from the reference clipped to norm ``c`` (ByzFL's ``Clipping`` on updates)."""

    name = "clipping"

    def __init__(self, c: float = 2.0):
        self.c = number("preagg.c", c, 0, lo_open=True, allowed="a finite number > 0 (the clipping norm)")

    def apply(self, models: torch.Tensor, info: AggregationInfo) -> tuple[torch.Tensor, AggregationInfo]:
        reference = info.reference.to(models.dtype)
        return clip_around(models, reference, self.c), info


class ARC(Step):
    """Adaptive robust clipping: clip the int(2f (n - f) / n) largest differences from the reference
    to the largest norm among the others (ByzFL's ``ARC``). Needs f <= n."""

    name = "arc"

    def __init__(self, f: int | None = None):
        self.f = check_f("preagg.f", f)

    def tolerated(self, n: int, f: int) -> int:
        f = resolve_f(self.f, f)
        if f > n:
            refuse_f("preagg.f", "arc", n, f, n, "f <= n", self.f is not None)
        return n

    def apply(self, models: torch.Tensor, info: AggregationInfo) -> tuple[torch.Tensor, AggregationInfo]:
        n = len(models)
        self.tolerated(n, info.num_byzantine)
        f = resolve_f(self.f, info.num_byzantine)
        clipped = int(2 * f / n * (n - f))
        if clipped == 0:
            return models, info
        reference = info.reference.to(models.dtype)
        norms = torch.linalg.vector_norm(models - reference, dim=1)
        radius = torch.sort(norms).values[n - clipped - 1]
        return clip_around(models, reference, radius), info


class PreAggregated(Strategy):
    """``steps`` applied to the stack in order, then ``inner``; everything else is the inner rule's."""

    def __init__(self, steps: list[Step], inner: Strategy):
        self.steps, self.inner = steps, inner
        self.name = "+".join([*(step.name for step in steps), inner.name])
        # the engine reads these on the strategy it holds, so they must be the inner rule's
        self.requires = inner.requires  # type: ignore[misc]
        self.needs_validation = inner.needs_validation  # type: ignore[misc]
        self.offline_only = inner.offline_only  # type: ignore[misc]
        self.gossip_only = inner.gossip_only  # type: ignore[misc]
        self.client_side = inner.client_side  # type: ignore[misc]
        self.needs_server = inner.needs_server  # type: ignore[misc]
        if inner.needs_server:  # SCAFFOLD, FedDyn, FedNova: per-client state from each client's own model and steps
            raise ConfigError(
                "preagg.name",
                self.name.split("+")[0],
                f"none with strategy {inner.name}",
                f"{inner.name} updates each client's own state from that client's model and local steps; "
                "pre-aggregation replaces or merges the rows, so that state would no longer be the client's.",
            )

    def client_correction(
        self, client_ids: torch.Tensor, start: torch.Tensor, state: State | None
    ) -> ClientCorrection | None:
        return self.inner.client_correction(client_ids, start, state)

    def check_tolerance(self, n: int, num_byzantine: int = 0) -> None:
        for step in self.steps:
            n = step.tolerated(n, num_byzantine)
        self.inner.check_tolerance(n, num_byzantine)

    def init_state(self, params: torch.Tensor, num_clients: int) -> State:
        return self.inner.init_state(params, num_clients)

    def aggregate(self, models: torch.Tensor, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        for step in self.steps:
            models, info = step.apply(models, info)
        return self.inner.aggregate(models, info, state)

    def on_empty_round(self, info: AggregationInfo, state: State) -> tuple[torch.Tensor, State]:
        return self.inner.on_empty_round(info, state)

    def round_metrics(self, state: State, probabilities: torch.Tensor | None) -> dict[str, float]:
        return self.inner.round_metrics(state, probabilities)


def build_step(step_cfg: Any, seed: int, field: str = "preagg") -> Step:
    """One step from its mapping (``name`` and that step's keys; missing keys take their defaults)."""
    options = dict(step_cfg) if hasattr(step_cfg, "items") else None
    if options is None:
        raise ConfigError(field, step_cfg, f"a mapping with a name, one of {', '.join(PREAGG_STEPS)}")
    name = options.pop("name", None)
    builders: dict[str, Any] = {"nnm": NNM, "bucketing": Bucketing, "clipping": StaticClipping, "arc": ARC}
    if name not in builders:
        raise ConfigError(f"{field}.name", name, f"one of {', '.join(PREAGG_STEPS)}, chain or none")
    if name == "bucketing":
        options["seed"] = seed
    try:
        return builders[name](**options)
    except TypeError as exc:
        raise ConfigError(field, name, f"options that the {name} step accepts", str(exc)) from None


def build_preagg(preagg_cfg: Any, strategy: Strategy, cfg: Any) -> Strategy:
    """``strategy`` behind the pre-aggregation steps that ``preagg_cfg`` (the ``preagg`` group) names."""
    seed = int(cfg.get("seed", 0)) if hasattr(cfg, "get") else 0
    options = dict(preagg_cfg)
    if options.get("name") == "chain":
        steps_cfg: Any = options.get("steps")
        if isinstance(steps_cfg, (str, bytes)) or not hasattr(steps_cfg, "__len__") or len(steps_cfg) == 0:
            raise ConfigError("preagg.steps", steps_cfg, "a non-empty list of steps, each a mapping with a name")
        steps = [build_step(step, seed, f"preagg.steps[{i}]") for i, step in enumerate(steps_cfg)]
    else:
        steps = [build_step(options, seed)]
    return PreAggregated(steps, strategy)
