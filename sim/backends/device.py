"""Where an in-process backend (sequential, vectorized) and ``sim.merge`` compute: ``auto | cpu | cuda | cuda:N``.

The device is resolved once, when the backend is built (so a bad value or ``cuda`` on a machine without CUDA
is a config error before any data is loaded), and every tensor that crosses between the host and that device
goes through one :class:`DeviceMover`, which counts the bytes. The data set is uploaded once at setup, in its
storage dtype (uint8 images stay uint8 on the device and become floats per batch, in the model's input hook);
the model stack then stays where the backend returned it, so the loops aggregate and evaluate on the device
and a round moves no model between host and device. On the CPU every move is the identity and the count
stays 0; on cuda the same calls copy and count.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from sim.errors import ConfigError

ALLOWED = "auto (cuda when torch sees a CUDA GPU, else cpu), cpu, cuda or cuda:N (N = a GPU index)"
_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
#: the data set's tensors that training and evaluation read; offsets and sizes stay on the host (bookkeeping)
DATA_FIELDS = ("x", "y", "x_val", "y_val", "x_test", "y_test")


def check_device_name(value: Any, field: str = "backend.device") -> str:
    """The device's spelling checked, without asking torch about GPUs (``sim.merge`` checks before importing)."""
    if not isinstance(value, str) or not _PATTERN.match(value):
        raise ConfigError(field, value, ALLOWED)
    return value


def resolve_device(value: Any, field: str = "backend.device") -> torch.device:
    """``auto`` -> cuda if torch can use a CUDA GPU, else cpu; ``cuda``/``cuda:N`` refused where it cannot."""
    name = check_device_name(value, field)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            field,
            name,
            "cpu or auto on this machine",
            f"torch {torch.__version__} sees no CUDA GPU here (a CPU-only build, no driver, or "
            "CUDA_VISIBLE_DEVICES empty); auto uses cuda where one exists and the CPU elsewhere.",
        )
    count = torch.cuda.device_count()
    if ":" in name and int(name.split(":")[1]) >= count:
        raise ConfigError(field, name, f"cuda:0 to cuda:{count - 1} (torch sees {count} GPU(s))")
    return torch.device(name)


class DeviceMover:
    """Moves tensors to one device and counts the bytes that cross between host and device.

    ``host_device_bytes`` is what the run reports: a tensor already on the target device moves nothing
    (``Tensor.to`` returns it unchanged), so on ``cpu`` the count is 0.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.host_device_bytes = 0

    def _move(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        if t.device == device:
            return t
        self.host_device_bytes += t.numel() * t.element_size()
        return t.to(device)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return self._move(t, self.device)

    def to_host(self, t: torch.Tensor) -> torch.Tensor:
        return self._move(t, torch.device("cpu"))

    def tree(self, obj: Any, device: torch.device | None = None) -> Any:
        """Every tensor in dicts, lists, tuples and dataclasses (AggregationInfo, states) moved to ``device``."""
        where = self.device if device is None else device
        if isinstance(obj, torch.Tensor):
            return self._move(obj, where)
        if isinstance(obj, dict):
            return {k: self.tree(v, where) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(self.tree(v, where) for v in obj)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and hasattr(obj, "client_ids"):
            changes = {
                f.name: self.tree(getattr(obj, f.name), where)
                for f in dataclasses.fields(obj)
                if isinstance(getattr(obj, f.name), (torch.Tensor, dict))
            }
            return dataclasses.replace(obj, **changes)
        return obj

    def upload_data(self, data: Any) -> None:
        """Put the data set's rows and labels on the device once, in place and in their storage dtype.

        In place: the loops evaluate on ``exp.data``, which is the same object, so they read the device copy
        too. Nothing moves when the tensors are already there (a second setup, or cpu).
        """
        for name in DATA_FIELDS:
            setattr(data, name, self.to_device(getattr(data, name)))

    def upload_model(self, model: torch.nn.Module) -> None:
        """The model's own tensors (buffers not in the flat layout, e.g. hooks' constants) on the device."""
        for t in list(model.parameters()) + list(model.buffers()):
            if t.device != self.device:
                self.host_device_bytes += t.numel() * t.element_size()
        model.to(self.device)


def aggregate_on_device(mover: DeviceMover, strategy, params: torch.Tensor, info, state):
    """``strategy.aggregate`` on the backend's device.

    Strategies are written for CPU tensors; inside the ``torch.device`` context their own ``torch.zeros(...)``
    land on the device too, and the round's small host tensors (sample counts, ids) are moved first. On the
    CPU every move would be the identity and the context would only name the default device, so it is a
    plain call there (no per-op cost of the context for rules with many small ops, e.g. Krum).
    """
    if mover.device.type == "cpu":
        return strategy.aggregate(params, info, state)
    with torch.device(mover.device):
        out, state = strategy.aggregate(params, mover.tree(info), mover.tree(state))  # params: already here
    return mover.to_device(out), state  # a rule that computes on the host (Flower's adapters) hands back CPU
