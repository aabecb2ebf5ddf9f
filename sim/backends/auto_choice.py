"""Which backend ``backend=auto`` trains with, and the one-line reason it logs.

:func:`decide` is a function of the model, the device type and the free device memory (passed in, so
tests run the GPU branch on a CPU with injected numbers). In order:

1. What vmap cannot train goes to the sequential reference: BatchNorm in training mode, a forward pass
   that writes into the model's buffers (one plain forward pass on a copy; no ``torch.func``).
2. On a CPU, convolutional and recurrent nets go to sequential: there, vmap over clients trains them
   slower than one client at a time (``experiments/bench_auto.py``, README's Performance section).
3. A chain of Linear layers and ReLU/Tanh/Sigmoid (the zoo's MLP and logistic regression, or a plain
   ``nn.Sequential`` of them) goes to vectorized: its hand-derived dense kernel needs no vmap at all.
4. Everything else is tried with one vmapped gradient on two example rows
   (:func:`~sim.backends.vmap_check.vmap_report`): vectorized if that runs without torch falling back
   to a per-client loop for some operator, sequential otherwise. On a GPU the vectorized chunks are
   sized from the free device memory.

Only step 4 calls ``torch.func``, whose first gradient imports ``torch._dynamo`` (about 1.5 s here):
the default run (an MLP on a CPU) no longer pays for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import TrainingSetup
from .dense_kernel import dense_layers
from .vectorized import MAX_CHUNK, batchnorm_layers, client_bytes
from .vmap_check import changed_buffers, vmap_report

#: share of the free device memory that the vectorized chunks may fill (the CPU default takes a quarter of
#: the free RAM too, sim/backends/vectorized.py); the per-client estimate already counts activations 3x
DEVICE_MEMORY_SHARE = 4


@dataclass(frozen=True)
class Choice:
    backend: str  # "sequential" or "vectorized"
    reason: str  # one line: the backend, a colon, why
    chunk_size: int | None = None  # vectorized on a GPU: clients per pass (None: the backend's own choice)


def model_kind(model: nn.Module) -> str:
    """``recurrent``, ``convolutional`` or ``other``: the families whose CPU speed under vmap was measured."""
    from sim.models.text import GRULayer, LSTMLayer

    modules = list(model.modules())
    if any(isinstance(m, (nn.RNNBase, nn.RNNCellBase, LSTMLayer, GRULayer)) for m in modules):
        return "recurrent"
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in modules):
        return "convolutional"
    return "other"


def gpu_chunk_size(free_bytes: int, per_client_bytes: int) -> int:
    """Clients per vmapped pass that fit 1/DEVICE_MEMORY_SHARE of the free device memory, 1 to MAX_CHUNK."""
    return int(max(1, min(MAX_CHUNK, (free_bytes // DEVICE_MEMORY_SHARE) // max(1, per_client_bytes))))


def decide(
    setup: TrainingSetup,
    device_type: str,
    kernel: str = "auto",
    free_bytes: int | None = None,
    chunk_size: int | None = None,
) -> Choice:
    """The backend for ``setup.model`` on ``device_type`` ("cpu" or "cuda"), and why.

    ``free_bytes``: free device memory (``torch.cuda.mem_get_info``) for sizing GPU chunks;
    ``chunk_size``: the user's ``backend.chunk_size``, which wins over any computed one.
    """
    model = setup.model
    name = type(model).__name__
    batchnorm = batchnorm_layers(model)
    if batchnorm and model.training:
        return Choice(
            "sequential",
            f"sequential: the {name}'s BatchNorm layer(s) {', '.join(batchnorm)} update their running statistics "
            "in place in training mode, which vmap cannot do",
        )
    rows = setup.data.x[:2]
    try:
        changed = changed_buffers(model, rows) if len(rows) else []
    except Exception as exc:  # the model cannot even run: vmap cannot either, and the reason says why
        return Choice("sequential", f"sequential: the {name}'s forward pass raises {type(exc).__name__}: {exc}")
    if changed:
        return Choice(
            "sequential",
            f"sequential: the {name}'s forward pass writes into buffer(s) {', '.join(changed)} in place, "
            "which vmap cannot do",
        )
    kind = model_kind(model)
    if device_type == "cpu" and kind != "other":
        return Choice(
            "sequential",
            f"sequential: the {name} is a {kind} net, and on a CPU one client at a time trains those faster "
            "than vmap over clients (experiments/bench_auto.py); backend=vectorized forces vmap",
        )
    if kernel != "vmap" and dense_layers(model, setup.layout) is not None:
        return Choice(
            "vectorized",
            f"vectorized: the {name} is a chain of Linear layers and activations, which the dense kernel trains "
            "for many clients at once",
            _chunk(setup, device_type, free_bytes, chunk_size),
        )
    report = vmap_report(model, rows)
    if report.blockers:
        return Choice("sequential", f"sequential: for the {name} " + "; ".join(report.blockers))
    if report.slow_ops:
        return Choice(
            "sequential",
            f"sequential: torch has no vmap batching rule for {', '.join(report.slow_ops)} in the {name}, so vmap "
            "would loop over the clients one by one",
        )
    chunk = _chunk(setup, device_type, free_bytes, chunk_size)
    where = f" on {device_type}, {chunk} clients per pass" if chunk is not None else ""
    return Choice("vectorized", f"vectorized: vmap serves the {name} (a trial vmapped gradient ran){where}", chunk)


def _chunk(setup: TrainingSetup, device_type: str, free_bytes: int | None, chunk_size: int | None) -> int | None:
    """A GPU's chunk size from its free memory; None on a CPU or where the user set one (the backend decides)."""
    if chunk_size is not None or device_type == "cpu" or free_bytes is None:
        return None
    return gpu_chunk_size(free_bytes, client_bytes(setup))
