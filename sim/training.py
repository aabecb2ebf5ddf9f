"""Local training as a pure function of (params, client data, training config, RNG).

The update is written out by hand on the flat parameter vector instead of going through
``torch.optim``: the same three pieces (batch schedule, loss, SGD step) then serve the sequential
reference, a vectorized backend that ``vmap``s the loss over ``[K, P]`` and a Ray actor, and all of
them give the same numbers for the same seed. The SGD step follows ``torch.optim.SGD`` exactly
(weight decay added to the gradient, momentum buffer initialised with the first gradient, no
dampening, no Nesterov).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .data.augment import augment_params, augment_rows, augments
from .data.inputs import input_spec
from .errors import ConfigError
from .layout import Layout
from .seeding import derived_seeds
from .validation import boolean, integer, number, optional_integer


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_steps: int | None = None  # when set: exactly this many minibatch steps instead of epochs
    label_smoothing: float = 0.0
    crop_padding: int = 0  # images: random crop of the zero-padded image (0: off)
    hflip: bool = False  # images: random horizontal flip
    #: when set (with local_steps): each client draws its steps per round, uniformly in [this, local_steps]
    local_steps_min: int | None = None
    #: when set: each local gradient (data term plus a strategy's correction) is rescaled to at most this L2
    #: norm before weight decay and momentum, as ``torch.nn.utils.clip_grad_norm_`` in the FedDyn authors' code
    clip_grad_norm: float | None = None

    @property
    def augments(self) -> bool:
        return augments(self.crop_padding, self.hflip)

    @classmethod
    def from_config(cls, cfg) -> TrainConfig:
        """Validate a ``train`` config group and turn it into a TrainConfig (every float finite)."""
        get = cfg.get
        return cls(
            epochs=integer("train.epochs", get("epochs", 1), 1),
            batch_size=integer("train.batch_size", get("batch_size", 10), 1),
            lr=number("train.lr", get("lr", 0.05), 0, lo_open=True),
            momentum=number("train.momentum", get("momentum", 0.0), 0, 1, hi_open=True),
            weight_decay=number("train.weight_decay", get("weight_decay", 0.0), 0),
            local_steps=optional_integer("train.local_steps", get("local_steps"), 1, "train epochs instead"),
            label_smoothing=number("train.label_smoothing", get("label_smoothing", 0.0), 0, 1, hi_open=True),
            crop_padding=integer("train.crop_padding", get("crop_padding", 0), 0),
            hflip=boolean("train.hflip", get("hflip", False)),
            local_steps_min=_local_steps_min(get("local_steps_min"), get("local_steps")),
            clip_grad_norm=None
            if get("clip_grad_norm") is None
            else number(
                "train.clip_grad_norm", get("clip_grad_norm"), 0, lo_open=True, allowed="null (off) or a number > 0"
            ),
        )


def _local_steps_min(value, local_steps) -> int | None:
    """None, or the fewest steps of a client when clients run unequal numbers of local steps."""
    if value is None:
        return None
    hi = local_steps if isinstance(local_steps, int) and not isinstance(local_steps, bool) else None
    if hi is None:
        raise ConfigError(
            "train.local_steps_min",
            value,
            "null unless train.local_steps is set",
            "Unequal local work draws each client's steps from [local_steps_min, local_steps]; "
            "set train.local_steps to the most steps a client takes.",
        )
    return integer(
        "train.local_steps_min", value, 1, hi, allowed=f"null or an integer in [1, {hi}] (train.local_steps)"
    )


@dataclass(frozen=True)
class ClientCorrection:
    """A term a strategy adds to every local gradient: ``prox * (w - w_start) + offsets[k]``.

    FedProx's proximal term (``prox = mu``), SCAFFOLD's control variates (``offsets = c - c_k``) and
    FedDyn's regularizer (``prox = alpha``, ``offsets = -grad_memory_k``) are all linear in the
    weights, so one elementwise update on the stacked ``[K, P]`` models serves every backend.
    """

    prox: float = 0.0
    offsets: torch.Tensor | None = None  # [K, P] rows in the order of the trained clients, or None
    #: [P] bool: entries held fixed through local training (FedRep's phases: the body while the head trains, then
    #: the head). Their gradient (data term, correction, weight decay) is zeroed before clipping and momentum, so
    #: they leave training bit for bit as they came and take no part in the clipped norm, as parameters with
    #: ``requires_grad=False`` under ``torch.optim.SGD``; buffers among them (BatchNorm statistics) stay fixed too.
    frozen: torch.Tensor | None = None

    def rows(self, index: torch.Tensor | list[int]) -> ClientCorrection:
        """The correction of a subset of the clients (a chunk, a sorted order)."""
        if self.offsets is None:
            return self
        return replace(self, offsets=self.offsets[torch.as_tensor(index, dtype=torch.long)])

    def moved(self, move: Callable[[torch.Tensor], torch.Tensor]) -> ClientCorrection:
        """The same correction with ``move`` applied to its tensors (a backend's byte-counting device mover)."""
        return replace(
            self,
            offsets=None if self.offsets is None else move(self.offsets),
            frozen=None if self.frozen is None else move(self.frozen),
        )

    def keep(self, dtype: torch.dtype) -> torch.Tensor | None:
        """``[P]`` 0/1 factor of the entries that train (``~frozen``), or None when nothing is frozen."""
        return None if self.frozen is None else (~self.frozen.to(torch.bool)).to(dtype)


def client_local_steps(cfg: TrainConfig, seed: int, rounds: list[int], clients: list[int]) -> torch.Tensor | None:
    """``[K]`` local steps of each client in its round with ``train.local_steps_min``; None otherwise.

    Drawn uniformly from ``[local_steps_min, local_steps]`` out of the stream ``(seed, "local_steps",
    round, client)``, apart from the client's training stream, so every backend (and a client trained
    alone) gets the same count and the batches it draws stay those of equal-work runs.
    """
    if cfg.local_steps_min is None or cfg.local_steps is None:
        return None
    seeds = derived_seeds(int(seed), ("local_steps",), [np.asarray(rounds), np.asarray(clients)])
    span = cfg.local_steps - cfg.local_steps_min + 1
    return torch.from_numpy(seeds % span + cfg.local_steps_min).to(torch.long)


@dataclass
class TrainResult:
    params: torch.Tensor  # [P] the model after local training
    num_samples: int
    loss: float  # mean loss over the steps taken (NaN when no step was taken)
    steps: int


def batch_schedule(
    num_samples: int, cfg: TrainConfig, generator: torch.Generator, steps: int | None = None
) -> list[torch.Tensor]:
    """Row indices of every minibatch, in order.

    Each epoch is a fresh permutation cut into batches of ``batch_size`` (the last one may be
    smaller). With ``local_steps`` the permutations run back to back until that many batches exist
    (``steps``, when given, is this client's own count: see :func:`client_local_steps`). Every backend
    draws the schedule through this function, so batch order is identical everywhere.
    """
    if num_samples == 0:
        return []
    batches: list[torch.Tensor] = []
    steps = cfg.local_steps if steps is None else steps
    epochs = cfg.epochs
    while True:
        perm = torch.randperm(num_samples, generator=generator)
        batches.extend(perm.split(cfg.batch_size))
        if steps is None:
            epochs -= 1
            if epochs == 0:
                return batches
        elif len(batches) >= steps:
            return batches[:steps]


def steps_per_client(sizes: torch.Tensor, cfg: TrainConfig, local_steps: torch.Tensor | None = None) -> torch.Tensor:
    """``[K]`` minibatch steps that :func:`batch_schedule` gives clients of ``sizes`` rows.

    The count follows from the row count and the config alone (the generator only orders the rows),
    so backends can plan work (sorting, chunking) before drawing anything. ``local_steps [K]``: each
    client's own count (:func:`client_local_steps`).
    """
    sizes = sizes.to(torch.long)
    if local_steps is not None:
        return torch.where(sizes > 0, local_steps.to(torch.long), torch.zeros_like(sizes))
    if cfg.local_steps is not None:
        return torch.where(sizes > 0, torch.full_like(sizes, cfg.local_steps), torch.zeros_like(sizes))
    return cfg.epochs * ((sizes + cfg.batch_size - 1) // cfg.batch_size)


def batch_loss(
    model: nn.Module,
    layout: Layout,
    params: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of the model with flat ``params`` on one batch (vmap-able)."""
    logits = functional_call(model, layout.to_state_dict(params), (x,))
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def clip_rows_(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Rescale ``grad`` (``[P]``, or ``[K, P]`` one client a row) in place to L2 norm at most ``max_norm``.

    The factor is ``torch.nn.utils.clip_grad_norm_``'s, ``min(1, max_norm / (norm + 1e-6))``, computed per
    row, so the vectorized backend clips each client as the sequential one does.
    """
    norms = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)
    return grad.mul_((max_norm / (norms + 1e-6)).clamp_max(1.0))


# a buffer passed in comes back as a buffer (the vectorized backend writes it into its own rows)
@overload
def sgd_step(
    params: torch.Tensor,
    grad: torch.Tensor,
    momentum_buf: torch.Tensor,
    cfg: TrainConfig,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def sgd_step(
    params: torch.Tensor,
    grad: torch.Tensor,
    momentum_buf: torch.Tensor | None,
    cfg: TrainConfig,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]: ...
def sgd_step(
    params: torch.Tensor,
    grad: torch.Tensor,
    momentum_buf: torch.Tensor | None,
    cfg: TrainConfig,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One ``torch.optim.SGD`` step; elementwise, so it serves ``[P]`` and ``[K, P]`` alike.

    ``keep`` (``[P]`` 0/1, :meth:`ClientCorrection.keep`) zeroes the step of frozen entries after weight decay,
    so their momentum stays 0 and ``params - lr * 0`` leaves them bit for bit.
    """
    d = grad if cfg.weight_decay == 0 else grad + cfg.weight_decay * params
    if keep is not None:
        d = d * keep
    if cfg.momentum:
        momentum_buf = d.clone() if momentum_buf is None else momentum_buf.mul(cfg.momentum).add_(d)
        d = momentum_buf
    return params - cfg.lr * d, momentum_buf


def image_shape(model: nn.Module, cfg: TrainConfig) -> tuple[int, int, int] | None:
    """The ``(C, H, W)`` that augmentation works on, or None when the config asks for none."""
    if not cfg.augments:
        return None
    spec = input_spec(model)
    if spec is None or spec.kind != "image" or len(spec.shape) != 3:
        raise ConfigError(
            "train.crop_padding" if cfg.crop_padding else "train.hflip",
            cfg.crop_padding if cfg.crop_padding else cfg.hflip,
            "0 / false for data that are not images",
            f"Augmentation crops and flips images shaped (channels, height, width); this data set's "
            f"examples are {spec.kind + ' ' + str(spec.shape) if spec else 'not described'}.",
        )
    c, h, w = spec.shape
    return c, h, w


def local_train(
    model: nn.Module,
    layout: Layout,
    params: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    steps: int | None = None,
    prox: float = 0.0,
    offset: torch.Tensor | None = None,
    move: Callable[[torch.Tensor], torch.Tensor] | None = None,
    frozen: torch.Tensor | None = None,
) -> TrainResult:
    """Train one client from ``params`` on its rows ``(x, y)``; never modifies ``params``.

    ``steps``: this client's own number of local steps (unequal local work); ``prox`` and ``offset``
    (``[P]``): a strategy's :class:`ClientCorrection` for this client, added to every gradient; ``frozen``
    (``[P]`` bool): entries that stay as they are (:attr:`ClientCorrection.frozen`).
    The schedule and augmentation are drawn on the CPU (the same numbers on every device) and, when ``x``
    lives on another device, go there in one piece through ``move`` (a backend's byte-counting mover).
    """
    buffers = layout.of_kind("buffer")
    trainable = layout.trainable_mask(device=params.device) if buffers else None
    p = params.detach().clone()
    keep = None if frozen is None else ClientCorrection(frozen=frozen).keep(p.dtype)
    buf = None
    losses = []
    shape = image_shape(model, cfg)
    batches = batch_schedule(len(y), cfg, generator, steps)
    # drawn after the schedule, one (dy, dx, flip) per scheduled row: see sim.data.augment
    aug = augment_params(sum(len(b) for b in batches), cfg.crop_padding, cfg.hflip, generator)
    # randomness inside the model (dropout) comes from torch's global generator: seed it from this
    # client's stream, after every other draw, so that such a model also reproduces per client and round
    model_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    if batches and batches[0].device != x.device:  # one upload of the whole schedule, not one per step
        to_x = move if move is not None else (lambda t: t.to(x.device))
        batches = list(to_x(torch.cat(batches)).split([len(b) for b in batches]))
        aug = None if aug is None else to_x(aug)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed)
        seen = 0
        for idx in batches:
            xb = x[idx]
            if aug is not None and shape is not None:
                xb = augment_rows(xb, aug[seen : seen + len(idx)], shape, cfg.crop_padding)
            seen += len(idx)
            p.requires_grad_(True)
            state = layout.to_state_dict(p)
            # buffers (BatchNorm running statistics) are state, not parameters: the forward pass updates
            # detached copies in place, and they are written back after the step
            running = {spec.name: p.detach()[spec.slice].view(spec.shape).clone() for spec in buffers}
            state.update(running)
            logits = functional_call(model, state, (xb,))
            loss = F.cross_entropy(logits, y[idx], label_smoothing=cfg.label_smoothing)
            (grad,) = torch.autograd.grad(loss, p)
            if trainable is not None:
                grad = grad * trainable
            with torch.no_grad():
                if prox:
                    grad = grad + prox * (p.detach() - params)
                if offset is not None:
                    grad = grad + offset
                if keep is not None:  # frozen entries: no part in the clipped norm, no step
                    grad = grad * keep
                if cfg.clip_grad_norm is not None:
                    grad = clip_rows_(grad.clone(), cfg.clip_grad_norm)
                p, buf = sgd_step(p.detach(), grad, buf, cfg, keep)
                for spec in buffers:
                    new = running[spec.name].reshape(-1).to(p.dtype)
                    p[spec.slice] = new if frozen is None else torch.where(frozen[spec.slice], p[spec.slice], new)
            losses.append(loss.detach())
    mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
    return TrainResult(p.detach(), int(len(y)), mean_loss, len(losses))


@torch.no_grad()
def per_row_losses(
    model: nn.Module,
    layout: Layout,
    params: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    chunk: int = 4096,
) -> torch.Tensor:
    """Cross-entropy ``[len(rows)]`` of one flat model on the data rows ``rows`` (no label smoothing).

    Randomness inside the model (dropout) draws from a fixed seed, so every backend and process gets
    the same numbers.
    """
    state = layout.to_state_dict(params)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        out = [
            F.cross_entropy(functional_call(model, state, (x[part],)), y[part], reduction="none")
            for part in rows.split(chunk)
        ]
    return torch.cat(out) if out else torch.zeros(0, device=x.device)


@torch.no_grad()
def evaluate(
    model: nn.Module, layout: Layout, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of one flat model on a labelled set."""
    if len(y) == 0:
        return float("nan"), float("nan")
    state = layout.to_state_dict(params)
    correct, loss_sum = 0, 0.0
    for lo in range(0, len(y), batch_size):
        xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size]
        logits = functional_call(model, state, (xb,))
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return correct / len(y), loss_sum / len(y)


@torch.no_grad()
def evaluate_many(
    model: nn.Module,
    layout: Layout,
    stacked: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = 32,
    row_chunk: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and mean loss ``[N]`` of N flat models ``[N, P]`` on one labelled set, vmapped.

    Gossip evaluates every node each time; one vmapped pass per chunk of nodes costs about what
    one model's pass costs, instead of N of them. Rows go in chunks too, so that a pooled test set
    of a 100,000-client data set never needs ``chunk x rows`` activations at once.
    """
    from torch.func import vmap

    def logits_of(p: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(model, layout.to_state_dict(p), (xb,))

    batched = vmap(logits_of, in_dims=(0, None))
    accs, losses = [], []
    for lo in range(0, len(stacked), chunk):
        models = stacked[lo : lo + chunk]
        correct = torch.zeros(len(models), device=models.device)  # a GPU actor evaluates on its device
        loss_sum = torch.zeros(len(models), dtype=torch.float64, device=models.device)
        for r in range(0, len(y), row_chunk):
            xb, yb = x[r : r + row_chunk], y[r : r + row_chunk]
            logits = batched(models, xb)  # [n, T, C]
            correct += (logits.argmax(-1) == yb).sum(-1)
            loss_sum += F.cross_entropy(logits.transpose(1, 2), yb.expand(len(logits), -1), reduction="none").sum(-1)
        accs.append(correct / len(y))
        losses.append((loss_sum / len(y)).float())
    return torch.cat(accs), torch.cat(losses)
