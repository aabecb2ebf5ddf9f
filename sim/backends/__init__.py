"""Backends run local training for many clients; the loops never train clients themselves."""

from collections.abc import Callable

from sim.errors import ConfigError

from .auto import AutoBackend
from .base import Backend, ClientBatch, TrainingSetup, aggregate_on_backend
from .ray_lazy import make_ray_backend  # imports Ray only when backend=ray is built
from .sequential import SequentialBackend
from .vectorized import VectorizedBackend

BACKENDS: dict[str, Callable[..., Backend]] = {
    "auto": AutoBackend,
    "sequential": SequentialBackend,
    "vectorized": VectorizedBackend,
    "ray": make_ray_backend,
}


def build_backend(backend_cfg) -> Backend:
    cfg = dict(backend_cfg)
    name = cfg.pop("name", None)
    if name not in BACKENDS:
        raise ConfigError("backend.name", name, f"one of {', '.join(sorted(BACKENDS))}")
    try:
        return BACKENDS[name](**cfg)
    except TypeError as exc:
        raise ConfigError("backend", name, "options that this backend accepts", str(exc)) from None


__all__ = [
    "BACKENDS",
    "AutoBackend",
    "Backend",
    "ClientBatch",
    "SequentialBackend",
    "TrainingSetup",
    "VectorizedBackend",
    "aggregate_on_backend",
    "build_backend",
]
