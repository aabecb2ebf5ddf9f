"""The two kinds of Ray actor the ray backend starts: training actors and the aggregator.

A :class:`TrainingActor` is one process that hosts many virtual clients. It receives the run's data
once, at creation (an object reference that Ray resolves to zero-copy numpy arrays in the node's
shared memory), builds the same :class:`TrainingSetup` the driver has and trains every chunk of
clients it is sent with an in-process backend (``backend.inner``: ``auto`` by default, i.e. the
vectorized backend unless the model has BatchNorm). Both draw every client's batches as the
sequential reference does, which is why the ray backend's numbers equal the sequential ones. Models
come and go as numpy arrays, which Ray moves without pickling their contents.

The :class:`AggregatorActor` runs ``strategy.aggregate`` away from the driver, on a GPU when it was
given one. Strategies are written for CPU tensors; inside ``torch.device("cuda")`` their own
``torch.ones(...)`` and friends land on the GPU too. A strategy that still mixes devices (e.g. one
that draws from a CPU generator) is run again on the CPU, once and then for the rest of the run, so
a GPU never makes a rule fail. Results and strategy state always go back as CPU tensors.

This module imports Ray; only :mod:`sim.backends.ray_backend` imports it, and only when
``backend=ray`` is chosen.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import warnings
from typing import Any

import numpy as np
import ray
import torch
from torch import nn

log = logging.getLogger("sim.backends.ray")


def shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch view of a (read-only, shared-memory) array from the object store; nothing writes to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(array)


def pick_device(device: str) -> torch.device:
    """cuda when this actor was given a GPU (and torch can use it) and ``device`` allows it, else cpu."""
    if device != "cpu" and ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _is_installed(module_file: str) -> bool:
    """A module of an installed distribution (site-packages) or of gossipsoup itself."""
    path = os.path.realpath(module_file)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # the repository
    return any(part in ("site-packages", "dist-packages") for part in path.split(os.sep)) or (
        path.startswith(here + os.sep) and os.path.relpath(path, here).split(os.sep)[0] in ("sim", "strategies")
    )


def ship_user_code(model: nn.Module) -> list[str]:
    """Pickle the classes of a user's model by value, so that Ray workers need not import their module.

    A model class from a file next to the user's script (``model.target=mynets.Net``) or from a test
    module is importable in the driver only; pickled by reference (cloudpickle's default for
    importable classes) it would fail to load on a worker of another machine or working directory.
    Installed packages (torch, a pip-installed model library) and gossipsoup's own models stay by
    reference. Returns the module names registered.
    """
    from ray import cloudpickle

    shipped = []
    for name in sorted({type(m).__module__ for m in model.modules()}):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if module is None or name == "__main__" or not file or _is_installed(file):
            continue
        cloudpickle.register_pickle_by_value(module)
        shipped.append(name)
    return shipped


def setup_payload(setup) -> dict[str, Any]:
    """What a training actor needs, as one object for ``ray.put``: the training data and the model."""
    ship_user_code(setup.model)
    data = setup.data
    return {
        "x": data.x.detach().contiguous().numpy(),
        "y": data.y.contiguous().numpy(),
        "offsets": data.offsets.contiguous().numpy(),
        "num_classes": data.num_classes,
        "input_shape": tuple(data.input_shape),
        "inputs": data.spec,
        "name": data.name,
        "model": setup.model,
        "layout": setup.layout,
        "train": setup.train,
        "seed": int(setup.seed),
    }


def setup_from_payload(p: dict[str, Any], device: torch.device):
    from sim.backends.base import TrainingSetup
    from sim.data import FederatedData

    x, y = shared_tensor(p["x"]), shared_tensor(p["y"])
    if device.type != "cpu":
        x, y = x.to(device), y.to(device)
    data = FederatedData(
        x=x,
        y=y,
        offsets=shared_tensor(p["offsets"]),
        x_val=x[:0],
        y_val=y[:0],
        x_test=x[:0],
        y_test=y[:0],
        num_classes=p["num_classes"],
        input_shape=p["input_shape"],
        name=p["name"],
        inputs=p["inputs"],
    )
    return TrainingSetup(model=p["model"].to(device), layout=p["layout"], data=data, train=p["train"], seed=p["seed"])


@ray.remote(max_restarts=0)
class TrainingActor:
    """Trains chunks of clients; one task per round. Dies for good when killed (the driver replaces it)."""

    def __init__(self, payload: dict[str, Any], inner: str, num_threads: int, device: str, noop: bool):
        from sim.backends import build_backend
        from sim.threads import configure_threads

        # the driver chose the count (sim.threads' rule for this model and the actor's CPUs); apply it here
        configure_threads(num_threads, payload["layout"].size, payload["train"].batch_size)
        self.device = pick_device(device)
        self.noop = noop
        self.backend = build_backend({"name": inner, "device": str(self.device)})  # the inner one trains here too
        self.backend.setup(setup_from_payload(payload, self.device))

    def ready(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "device": str(self.device),
            "node": ray.util.get_node_ip_address(),
            "threads": torch.get_num_threads(),
        }

    def train(
        self,
        ids: list[int],
        start: np.ndarray,
        rounds,
        needs: frozenset[str],
        prox: float = 0.0,
        offsets: np.ndarray | None = None,
        frozen: np.ndarray | None = None,
        train=None,
        stream: str = "train",
    ):
        """``start``: ``[P]`` shared by all or ``[k, P]``; ``prox`` / ``offsets [k, P]`` / ``frozen [P]``: the
        chunk's rows of a strategy's client correction; ``train`` / ``stream``: the call's training config
        override and batch stream (``Backend.train``). Returns (params [k, P], losses [k], extras, steps [k],
        seconds)."""
        from sim.training import ClientCorrection

        t0 = time.perf_counter()
        start_t = shared_tensor(start)
        if self.noop:  # benchmarks: no training at all, so what is left is the backend's own cost
            params = start_t.expand(len(ids), -1).clone() if start_t.dim() == 1 else start_t.clone()
            no_steps = np.zeros(len(ids), np.int64)
            return params.numpy(), np.full(len(ids), np.nan, np.float32), {}, no_steps, time.perf_counter() - t0
        correction = None
        if prox or offsets is not None or frozen is not None:
            rows = None if offsets is None else shared_tensor(offsets).to(self.device)
            held = None if frozen is None else shared_tensor(frozen).to(self.device)
            correction = ClientCorrection(float(prox), rows, held)
        batch = self.backend.train(
            torch.as_tensor(ids, dtype=torch.long),
            start_t.to(self.device),
            rounds,
            needs,
            correction,
            train=train,
            stream=stream,
        )
        extras = {k: v.detach().cpu().numpy() for k, v in batch.extras.items()}
        steps = batch.num_steps.cpu().numpy() if batch.num_steps is not None else np.zeros(len(ids), np.int64)
        return (
            batch.params.detach().cpu().numpy(),
            batch.train_loss.detach().cpu().numpy(),
            extras,
            steps,
            time.perf_counter() - t0,
        )


def _to(obj: Any, device: torch.device) -> Any:
    """Every tensor inside dicts, lists, tuples and AggregationInfo moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and hasattr(obj, "client_ids"):
        changes = {
            f.name: _to(getattr(obj, f.name), device)
            for f in dataclasses.fields(obj)
            if isinstance(getattr(obj, f.name), (torch.Tensor, dict))
        }
        return dataclasses.replace(obj, **changes)
    return obj


def assemble(chunks: tuple, positions: list[list[int]] | None) -> torch.Tensor:
    """``[K, P]`` from the training actors' chunk results (or one plain array) in client order."""
    if positions is None:
        return shared_tensor(chunks[0]).clone()
    total = sum(len(p) for p in positions)
    first = chunks[0][0]
    out = torch.empty((total, first.shape[1]), dtype=shared_tensor(first).dtype)
    for chunk, pos in zip(chunks, positions, strict=True):
        out[torch.as_tensor(pos, dtype=torch.long)] = shared_tensor(chunk[0])
    return out


@ray.remote(max_restarts=0)
class AggregatorActor:
    """Runs ``strategy.aggregate`` on its device; the models arrive as the training actors' object refs."""

    def __init__(self, num_threads: int, device: str):
        from sim.threads import configure_threads

        configure_threads(num_threads, 1, 1)  # an explicit count: the model's size plays no part
        self.device = pick_device(device)
        self.cpu_only: set[str] = set()  # strategies that failed on the GPU and now run on the CPU

    def ready(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "device": str(self.device),
            "node": ray.util.get_node_ip_address(),
            "threads": torch.get_num_threads(),
        }

    def aggregate(self, strategy, info, state, positions, *chunks):
        params = assemble(chunks, positions)
        device = self.device if strategy.name not in self.cpu_only else torch.device("cpu")
        if device.type != "cpu":
            try:
                with torch.device(device):
                    out, new_state = strategy.aggregate(_to(params, device), _to(info, device), _to(state, device))
                return _to(out, torch.device("cpu")), _to(new_state, torch.device("cpu")), str(device)
            except RuntimeError as exc:  # a rule that mixes devices: the CPU gives the same numbers
                log.warning(
                    "strategy %s cannot aggregate on %s (%s); it runs on the CPU from now on",
                    strategy.name,
                    device,
                    str(exc).splitlines()[0],
                )
                self.cpu_only.add(strategy.name)
        out, new_state = strategy.aggregate(params, info, state)
        return out, new_state, "cpu"
