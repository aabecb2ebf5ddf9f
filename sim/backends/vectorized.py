"""Many clients at once: ``vmap`` of the loss gradient over stacked parameters ``[K, P]``.

Every client's batches are drawn exactly as the sequential backend draws them
(``batch_schedule`` with ``torch_generator(seed, "train", round, client)``), then step ``s`` of all
clients runs as one vmapped gradient over their stacked models. Batches of one step are padded to
the largest of them and a mask keeps the padding out of the loss (a masked mean equals
``F.cross_entropy``'s mean over the real rows). Clients are sorted by their number of steps, so
step ``s`` only touches the prefix of clients that still have a step ``s``: the work follows the
total number of steps, not ``K x`` the longest client. The SGD update is the same elementwise
``sgd_step`` the reference applies, so results agree with ``SequentialBackend`` to float tolerance.

vmap cannot run BatchNorm in training mode (its running statistics are updated in place), so a
model with BatchNorm layers is refused at ``setup``. ``device`` (``backend.device``): the data set and the
model go there once at setup; the schedule is drawn on the CPU (the reference's numbers) and goes up as
one index tensor per chunk; the trained ``[K, P]`` stack stays on the device (:mod:`sim.backends.device`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from sim.data.augment import augment_rows
from sim.errors import ConfigError
from sim.threads import check_num_threads
from sim.training import ClientCorrection, TrainConfig, clip_rows_, image_shape, sgd_step
from sim.validation import choice, optional_integer

from .base import ClientBatch, TrainingSetup, check_needs, client_extras, client_rounds
from .dense_kernel import DenseKernel, dense_layers
from .device import DeviceMover, aggregate_on_device, resolve_device
from .schedule import stacked_schedule
from .vmap_conv import vmap_options, vmapped_step

MAX_CHUNK = 4096
#: auto: the hand-derived dense kernel for Linear/activation stacks, vmap for every other model
KERNELS = ("auto", "vmap", "dense")
#: (params [A, P], x [A, B, ...], y [A, B], mask [A, B]) -> (gradients [A, P], losses [A])
GradAndLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); a conservative 2 GiB elsewhere."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30


def activation_bytes(model: nn.Module, example_row: torch.Tensor) -> int:
    """Bytes of every module's output for one example: what a forward pass keeps per row.

    Convolutional networks hold far more per row in activations than in inputs (ResNet-8 on a
    32x32 image: about 0.5 MB against 3 kB), so chunk sizes follow a measured forward pass rather than
    the input width. Counted on a no-grad pass of one row; 0 when there is no row.
    """
    if len(example_row) == 0:
        return 0
    total = 0

    def count(module: nn.Module, args: tuple, out: object) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    trial = copy.deepcopy(model).eval()  # the run's model keeps its buffers; eval: BatchNorm takes one row
    for m in trial.modules():
        if m is not trial:
            m.register_forward_hook(count)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        trial(example_row)
    return total


def client_bytes(s: TrainingSetup) -> int:
    """Memory one client takes in a vmapped pass (``backend=auto`` sizes GPU chunks with it too)."""
    sizes = s.data.client_sizes
    max_batch = int(min(s.train.batch_size, int(sizes.max()) if len(sizes) else 1))
    p, d = s.layout.size, int(s.data.x[0].numel()) if len(s.data.x) else 1
    # params, momentum, grad, update temporaries and autograd copies of the weights (~8 x P),
    # plus the padded batch and, per row, the activations autograd keeps (three times every
    # layer's output: the saved tensor, its gradient and a temporary), at least a generous floor
    per_row = max(4 * (d + 4 * max(64, d)), 3 * activation_bytes(s.model, s.data.x[:1]))
    return 4 * (8 * p + 16) + max_batch * per_row


def batchnorm_layers(model: nn.Module) -> list[str]:
    return [
        f"{name or '<root>'!r} ({type(m).__name__})"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


class VectorizedBackend:
    name = "vectorized"

    def __init__(
        self,
        chunk_size: int | None = None,
        num_threads: int | None = None,
        kernel: str = "auto",
        device: str = "auto",
        vmap: dict | None = None,
    ):
        self.chunk_size = optional_integer("backend.chunk_size", chunk_size, 1, "pick one from free memory")
        self.kernel = choice("backend.kernel", kernel, KERNELS)
        self.vmap_options = vmap_options(vmap)  # opt-in variations of the vmapped step (sim.backends.vmap_conv)
        self.num_threads = check_num_threads(num_threads)  # applied by the run (sim.threads), not here
        self.mover = DeviceMover(resolve_device(device))
        self._setup: TrainingSetup | None = None

    @property
    def device(self) -> torch.device:
        return self.mover.device

    @property
    def host_device_bytes(self) -> int:
        """Bytes moved between host and device so far (0 on the CPU): the run's summary reports them."""
        return self.mover.host_device_bytes

    @property
    def train_config(self) -> TrainConfig | None:
        """The run's training config (what ``train(train=None)`` uses); None before ``setup``."""
        return None if self._setup is None else self._setup.train

    def aggregate(self, strategy, params: torch.Tensor, info, state):
        """The FL strategy on the backend's device, where the trained models are (see aggregate_on_backend)."""
        return aggregate_on_device(self.mover, strategy, params, info, state)

    # ---- lifecycle ----------------------------------------------------------------------------
    def setup(self, setup: TrainingSetup) -> None:
        bn = batchnorm_layers(setup.model)
        if bn:
            raise ConfigError(
                "backend.name",
                "vectorized",
                "a model without BatchNorm layers, or backend=sequential / backend=auto (which picks "
                "sequential for such models)",
                f"The model has BatchNorm layer(s) {', '.join(bn)}, which vmap cannot run in training mode.",
            )
        self.mover.upload_data(setup.data)
        self.mover.upload_model(setup.model)
        self._setup = setup
        self._chunk = self.chunk_size or self._auto_chunk()
        model, layout = setup.model, setup.layout
        self._trainable = layout.trainable_mask(device=self.device) if layout.of_kind("buffer") else None
        self._image_shape = image_shape(model, setup.train)
        layers = dense_layers(model, layout) if self.kernel != "vmap" else None
        if self.kernel == "dense" and layers is None:
            raise ConfigError(
                "backend.kernel",
                "dense",
                "auto or vmap for this model",
                f"The dense kernel serves chains of Linear layers and ReLU/Tanh/Sigmoid; "
                f"the model is a {type(model).__name__}.",
            )
        self._layers = layers
        self.kernel_used = "dense" if layers is not None else "vmap"
        self._kernels: dict[float, GradAndLoss] = {}  # by label smoothing: a call's train config may change it
        self._grad_and_loss = self._kernel(float(setup.train.label_smoothing))

    def _kernel(self, smoothing: float) -> GradAndLoss:
        """The gradient-and-loss function for this label smoothing, built once and kept."""
        if smoothing in self._kernels:
            return self._kernels[smoothing]
        setup = self._require_setup()
        model, layout = setup.model, setup.layout

        def loss(p: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            logits = functional_call(model, layout.to_state_dict(p), (xb,))
            per_row = F.cross_entropy(logits, yb, label_smoothing=smoothing, reduction="none")
            return (per_row * mask).sum() / mask.sum()

        fn: GradAndLoss
        if self._layers is not None:
            dense = DenseKernel(self._layers, layout.size, smoothing)
            spec = setup.data.spec
            # the kernel skips the model's forward (and its input hook): give it model inputs, flat
            fn = lambda p, xb, yb, mask: dense(p, spec.to_model(xb).flatten(2), yb, mask)  # noqa: E731
        else:
            vmapped = (
                vmap(grad_and_value(loss))
                if self.vmap_options.plain
                else vmapped_step(model, layout, smoothing, self.vmap_options, self.device)
            )
            fn = lambda p, xb, yb, mask: vmapped(p, xb, yb, mask)  # noqa: E731
        self._kernels[smoothing] = fn
        return fn

    def close(self) -> None:
        self._setup = None

    # ---- training -----------------------------------------------------------------------------
    def _require_setup(self) -> TrainingSetup:
        if self._setup is None:
            raise RuntimeError("setup() must run before training")
        return self._setup

    def _auto_chunk(self) -> int:
        """Clients per pass that fit a quarter of the free memory (read once per run, at setup)."""
        return int(max(1, min(MAX_CHUNK, (_available_bytes() // 4) // client_bytes(self._require_setup()))))

    def train(
        self,
        client_ids: torch.Tensor,
        start: torch.Tensor,
        round_,
        needs: frozenset[str] = frozenset(),
        correction: ClientCorrection | None = None,
        train: TrainConfig | None = None,
        stream: str = "train",
    ) -> ClientBatch:
        s = self._require_setup()
        check_needs(self.name, needs)
        cfg = s.train if train is None else train
        ids = [int(c) for c in client_ids.tolist()]
        K, P = len(ids), s.layout.size
        start = self.mover.to_device(start.detach())  # the first round's model comes from the host; later ones are here
        if correction is not None:
            correction = correction.moved(self.mover.to_device)
        starts = start.expand(K, -1) if start.dim() == 1 else start.detach()
        params = starts.new_zeros((K, P))
        losses = torch.full((K,), float("nan"), dtype=torch.float32)
        ids_t = torch.as_tensor(ids, dtype=torch.long)
        first_rows = s.data.offsets[ids_t].to(torch.long)
        sizes = (s.data.offsets[ids_t + 1] - s.data.offsets[ids_t]).to(torch.long)
        # every client's permutations, drawn exactly as the sequential backend draws them
        schedule = stacked_schedule(sizes.tolist(), ids, client_rounds(round_, K), cfg, s.seed, stream)
        # clients with the most steps first, so step s only touches the prefix still training, and
        # chunks hold clients of similar length
        order = torch.argsort(schedule.steps, descending=True, stable=True)
        chunk = self._chunk
        for lo in range(0, K, chunk):
            rows = order[lo : lo + chunk]
            index = schedule.index(rows, first_rows[rows])
            aug = schedule.augmentation(rows, index)
            part = None if correction is None else correction.rows(rows)
            params[rows], losses[rows] = self._train_chunk(starts[rows], index, schedule.steps[rows], aug, part, cfg)
        extras = client_extras(s, ids, params, needs, start)
        return ClientBatch(
            client_ids=ids_t,
            params=params,
            num_samples=sizes,
            train_loss=losses,
            extras=extras,
            num_steps=schedule.steps.clone(),
        )

    def _train_chunk(
        self,
        starts: torch.Tensor,
        index: torch.Tensor,
        steps: torch.Tensor,
        aug: torch.Tensor | None = None,
        correction: ClientCorrection | None = None,
        cfg: TrainConfig | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train clients sorted by ``steps`` (descending) from ``starts`` on the rows of ``index``.

        ``cfg``: the call's training config (default the run's).

        A ``correction`` ``prox * (w - start) + offset`` is applied as ``prox * w + bias`` with
        ``bias = offset - prox * start`` built once per chunk: two in-place adds per step on the
        ``[A, P]`` gradients, no new tensor (with plain SGD ``prox`` joins the weight-decay add).
        """
        s = self._require_setup()
        cfg = s.train if cfg is None else cfg
        grad_and_loss = self._kernel(float(cfg.label_smoothing))
        shape = self._image_shape if cfg == s.train else image_shape(s.model, cfg)
        K = len(starts)
        S = int(steps[0]) if K else 0
        if S == 0:
            return starts.clone(), torch.full((K,), float("nan"))
        params = starts.clone()
        # the schedule is drawn on the CPU (as the reference draws it) and goes up once per chunk
        device = starts.device
        index = self.mover.to_device(index)
        aug = None if aug is None else self.mover.to_device(aug)
        trainable = self._trainable
        loss_sum = torch.zeros(K, dtype=torch.float32, device=device)
        lengths = (index >= 0).sum(-1)  # [K, S]
        active_counts = (steps.unsqueeze(0) > torch.arange(S).unsqueeze(1)).sum(1).tolist()  # [S]
        batch_widths = lengths.max(0).values.tolist()  # [S] (read once per chunk); row 0 is the longest client
        x, y = s.data.x, s.data.y
        buf = None
        prox = correction.prox if correction is not None else 0.0
        keep = None if correction is None else correction.keep(starts.dtype)  # frozen entries take no step
        bias = None
        if correction is not None and correction.offsets is not None:
            bias = correction.offsets.to(starts.dtype) - prox * starts if prox else correction.offsets.to(starts.dtype)
        elif prox:
            bias = starts * -prox
        for step in range(S):
            A, B = int(active_counts[step]), int(batch_widths[step])
            idx = index[:A, step, :B]
            mask = idx >= 0
            safe = idx.clamp_min(0)
            xb = x[safe]
            if aug is not None and shape is not None:
                xb = augment_rows(xb, aug[:A, step, :B], shape, cfg.crop_padding)
            grads, step_loss = grad_and_loss(params[:A], xb, y[safe], mask.to(torch.float32))
            if trainable is not None:
                grads = grads * trainable
            if bias is not None:
                grads.add_(bias[:A])
            pull = prox  # the correction's prox * w, added with weight decay unless clipping needs it first
            if cfg.clip_grad_norm is not None:
                if prox:
                    grads.add_(params[:A], alpha=prox)
                if keep is not None:  # frozen entries stay out of the clipped norm
                    grads.mul_(keep)
                clip_rows_(grads, cfg.clip_grad_norm)  # each client's own norm
                pull = 0.0
            if cfg.momentum:
                if pull:
                    grads.add_(params[:A], alpha=pull)
                # every client's first step is step 0, where sgd_step starts the buffer (None -> d)
                if step == 0:
                    new_p, buf = sgd_step(params[:A], grads, None, cfg, keep)
                else:
                    assert buf is not None  # set at step 0
                    new_p, new_buf = sgd_step(params[:A], grads, buf[:A], cfg, keep)
                    buf[:A] = new_buf
                params[:A] = new_p
            else:  # plain SGD in place: the same update as sgd_step without a new [A, P] tensor
                if cfg.weight_decay or pull:
                    grads.add_(params[:A], alpha=cfg.weight_decay + pull)
                if keep is not None:
                    grads.mul_(keep)
                params[:A].add_(grads, alpha=-cfg.lr)
            loss_sum[:A] += step_loss.detach()
        loss_sum = self.mover.to_host(loss_sum)  # [K] floats for the metrics, once per chunk
        mean_loss = torch.where(steps > 0, loss_sum / steps.clamp_min(1), torch.tensor(float("nan")))
        return params, mean_loss
