"""The actor of partitioned synchronous gossip on Ray: one process that owns a part of the graph.

A :class:`PartitionActor` keeps its nodes' models, per-node strategy states and extras across rounds,
trains them with an in-process backend (as a training actor does) and merges them with the same
strategy code as the driver-side loop (:mod:`sim.gossip.sync`). A round is two calls:

- ``publish``: (train, when gossip.order=update_merge, then) return one object per other actor with
  the rows of this part's models that its nodes receive. The driver only passes these objects'
  references on to ``merge`` calls, so the models move from this node's object store to the
  receiver's without passing through the driver.
- ``merge``: take the models received from the neighbour actors, merge every own node
  (``aggregate_all`` on a local square matrix over own and received rows, or per-node
  ``aggregate``), (train, with merge_update), and return the part's state as a snapshot object.

The snapshot stays in the object store of the actor's machine, owned by the driver; when the actor
dies, a new one starts from it and the round's work is re-run (docs/ray.md, "Partitioned gossip").
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import ray
import torch

from sim.node_models import initial_node_params, merge_info, received_from_entries
from sim.run_metrics import weight_variances

from .ray_actors import pick_device, setup_from_payload, shared_tensor


def numpy_tree(obj: Any) -> Any:
    """Tensors in a (nested) strategy state as numpy arrays, which Ray stores without pickling."""
    if isinstance(obj, torch.Tensor):
        return ("__tensor__", obj.detach().cpu().numpy())
    if isinstance(obj, dict):
        return {k: numpy_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(numpy_tree(v) for v in obj)
    return obj


def torch_tree(obj: Any) -> Any:
    """The inverse of :func:`numpy_tree` (writable tensors: states are updated in place by some rules)."""
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__tensor__":
        return torch.from_numpy(np.array(obj[1]))
    if isinstance(obj, dict):
        return {k: torch_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(torch_tree(v) for v in obj)
    return obj


def payload_bytes(obj: Any) -> int:
    """What a payload weighs: its arrays' bytes plus 8 per number; names, ``None`` and framing are not counted.

    The partitioned loop's ``driver_bytes`` column adds up what passes through the driver with it, so
    that the figure is the same on every machine (a pickle's framing is not).
    """
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    if isinstance(obj, (bool, int, float, np.number)):
        return 8
    if isinstance(obj, str):
        return len(obj.encode())
    return 0


def part_snapshot(nodes: np.ndarray, params: torch.Tensor, states: list, extras: dict[str, torch.Tensor]) -> dict:
    """A part's whole state as one object of numpy arrays: what a replacement actor starts from, and what
    the driver gathers for a checkpoint."""
    return {
        "nodes": nodes,
        "params": params.detach().cpu().numpy(),
        "states": [numpy_tree(s) for s in states],
        "extras": {k: v.detach().cpu().numpy() for k, v in extras.items()},
    }


@ray.remote(max_restarts=0)
class PartitionActor:
    """Owns the nodes ``part["nodes"]``; dies for good when killed (the driver replaces it from a snapshot)."""

    def __init__(
        self,
        payload: dict[str, Any],
        test: dict[str, np.ndarray],
        part: dict[str, Any],
        start: dict[str, Any],
        inner: str,
        num_threads: int,
        device: str,
        noop: bool,
    ):
        from sim.backends import build_backend
        from sim.threads import configure_threads

        configure_threads(num_threads, payload["layout"].size, payload["train"].batch_size)
        self.device = pick_device(device)
        self.noop = noop
        self.setup = setup_from_payload(payload, self.device)
        self.backend = build_backend({"name": inner, "device": str(self.device)})
        self.backend.setup(self.setup)
        self.layout = payload["layout"]
        self.strategy = part["strategy"]
        self.num_nodes = int(part["num_nodes"])
        self.nodes = np.asarray(part["nodes"], dtype=np.int64)
        self.ids = torch.from_numpy(self.nodes)
        self.sizes = self.setup.data.client_sizes.cpu()
        self.x_test = shared_tensor(test["x"]).to(self.device)
        self.y_test = shared_tensor(test["y"]).to(self.device)
        self.x_val = shared_tensor(test["x_val"]).to(self.device)
        self.y_val = shared_tensor(test["y_val"]).to(self.device)
        # global node id -> row: own nodes at 0..n-1, the round's received models after them
        self.lookup = np.full(self.num_nodes, -1, dtype=np.int64)
        self.lookup[self.nodes] = np.arange(len(self.nodes))
        snap = start.get("snapshot", start if "params" in start else None)  # a resume, or a replacement
        if snap is not None:
            self.params = torch.from_numpy(np.array(snap["params"]))
            self.states = [torch_tree(s) for s in snap["states"]]
            self.extras = {k: torch.from_numpy(np.array(v)) for k, v in snap["extras"].items()}
        else:
            initial = torch.from_numpy(np.array(start["initial"]))
            self.params = initial_node_params(
                initial, self.layout, self.num_nodes, start["gossip"], start["seed"], self.nodes.tolist()
            )
            self.states = [self.strategy.init_state(initial, self.num_nodes) for _ in self.nodes]
            self.extras = {}
            if start["initial_extras"]:  # merge_update merges before it trains: the initial models' extras
                self.extras = self._extras(self.params)

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "device": str(self.device), "node": ray.util.get_node_ip_address()}

    # ---- one round --------------------------------------------------------------------------
    def publish(self, round_: int, train: bool, sends: list[np.ndarray | None]):
        """(Train, then) the rows each other actor receives; returns (stats, one object per actor)."""
        stats = self._train(round_) if train else {}
        outs: list[Any] = []
        for ids in sends:
            if ids is None:
                outs.append(None)
                continue
            rows = torch.from_numpy(self.lookup[ids])
            outs.append(
                {
                    "ids": ids,
                    "params": self.params[rows].numpy(),
                    "extras": {k: v[rows].numpy() for k, v in self.extras.items()},
                }
            )
        return (stats, *outs)

    def merge(self, round_: int, plan: dict[str, np.ndarray], train: bool, *received):
        """Merge every own node with what it received; (then train); returns (stats, snapshot)."""
        from sim.checks import check_finite

        t0 = time.perf_counter()
        n = len(self.nodes)
        ghost_ids = np.concatenate([r["ids"] for r in received]) if received else np.zeros(0, np.int64)
        self.lookup[ghost_ids] = n + np.arange(len(ghost_ids))
        try:
            models = torch.cat([self.params, *[shared_tensor(r["params"]) for r in received]])
            rows, lost, values = (shared_tensor(plan[k]) for k in ("rows", "lost", "values"))
            cols = torch.from_numpy(self.lookup[plan["cols"]])
            cols = torch.where(lost, rows, cols)  # a lost sender may not have been sent: its weight goes home
            if hasattr(self.strategy, "aggregate_all"):
                new = self._merge_all(models, rows, cols, values, lost)
            else:
                extras = {
                    k: torch.cat([v, *[shared_tensor(r["extras"][k]) for r in received]])
                    for k, v in self.extras.items()
                }
                new = self._merge_each(models, extras, rows, cols, shared_tensor(plan["cols"]), values, lost, round_)
        finally:
            self.lookup[ghost_ids] = -1
        check_finite(new, self.ids, round_, "the merged parameters")
        self.params = new
        outside = torch.from_numpy(self.lookup[plan["cols"]] < 0)
        stats: dict[str, Any] = {
            "models_received": len(ghost_ids),
            "messages_received": int(((rows != cols) & ~lost & outside).sum()),
            "bytes_received": sum(r["params"].nbytes + sum(v.nbytes for v in r["extras"].values()) for r in received),
            "merge_s": time.perf_counter() - t0,
        }
        if train:
            stats.update(self._train(round_))
        return stats, part_snapshot(self.nodes, self.params, self.states, self.extras)

    def _merge_all(self, models, rows, cols, values, lost) -> torch.Tensor:
        """``aggregate_all`` over a square matrix on own + received rows (received rows merge nothing)."""
        size = len(models)
        ghosts = torch.arange(len(self.nodes), size)
        received = received_from_entries(
            torch.cat([rows, ghosts]),
            torch.cat([cols, ghosts]),
            torch.cat([values, values.new_ones(len(ghosts))]),
            torch.cat([lost, torch.zeros(len(ghosts), dtype=torch.bool)]),
            size,
        )
        merged = self.strategy.aggregate_all(received, models, self.layout)
        return merged[: len(self.nodes)]  # a view: the next round copies it anyway (training or torch.cat)

    def _merge_each(self, models, extras, rows, cols, senders_global, values, lost, round_) -> torch.Tensor:
        """Per-node ``aggregate`` calls, exactly as the driver-side loop makes them."""
        new = self.params.clone()
        bounds = torch.searchsorted(rows, torch.arange(len(self.nodes) + 1))
        for r, node in enumerate(self.nodes.tolist()):
            lo, hi = int(bounds[r]), int(bounds[r + 1])
            r_global, r_cols, r_vals = senders_global[lo:hi], cols[lo:hi], values[lo:hi]
            others = (r_global != node) & ~lost[lo:hi]
            if not bool(others.any()):
                continue  # nothing received: the node keeps its model and state
            local = torch.cat([torch.tensor([r]), r_cols[others]])
            members = torch.cat([torch.tensor([node]), r_global[others]])
            info = merge_info(
                members,
                self.sizes[members],
                round_,
                self.num_nodes,
                self.layout,
                self.params[r],
                torch.cat([torch.tensor([float(r_vals[~others].sum())]), r_vals[others]]),
                {k: v[local] for k, v in extras.items()},
            )
            new[r], self.states[r] = self.strategy.aggregate(models[local], info, self.states[r])
        return new

    def _train(self, round_: int) -> dict[str, Any]:
        """Train every own node one round; returns the sums the driver's training-loss column needs."""
        from sim.checks import check_finite
        from sim.training import ClientCorrection

        t0 = time.perf_counter()
        if self.noop:  # benchmarks: what is left is the communication and the merge
            return {"loss_sum": 0.0, "weight_sum": 0.0, "train_s": 0.0, "extras_row_bytes": 0}
        correction = self.strategy.client_correction(self.ids, self.params, None)
        if correction is not None and correction.offsets is not None:
            correction = ClientCorrection(correction.prox, correction.offsets.to(self.device))
        batch = self.backend.train(
            self.ids, self.params.to(self.device), round_, self.strategy.requires, correction=correction
        )
        params = batch.params.detach().cpu()
        check_finite(params, self.ids, round_, "models")
        self.params = params
        self.extras = {k: v.detach().cpu() for k, v in batch.extras.items()}
        losses = batch.train_loss.detach().cpu()
        ok = ~torch.isnan(losses)
        weights = self.sizes[self.ids].to(torch.float64)[ok]
        return {
            "loss_sum": float((weights * losses[ok].double()).sum()),
            "weight_sum": float(weights.sum()),
            "train_s": time.perf_counter() - t0,
            "extras_row_bytes": sum(v[0].numel() * v.element_size() for v in self.extras.values()),
        }

    def _extras(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        from sim.backends.base import client_extras

        out = client_extras(self.setup, self.nodes.tolist(), params.to(self.device), self.strategy.requires)
        return {k: v.detach().cpu() for k, v in out.items()}

    def extras_row_bytes(self) -> int:
        return sum(v[0].numel() * v.element_size() for v in self.extras.values())

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self, sample: np.ndarray | None) -> dict[str, Any]:
        """Test accuracy of the sampled own nodes (all when None) and the sums the driver's columns need."""
        from sim.training import evaluate_many

        out: dict[str, Any] = {"count": len(self.nodes)}
        rows = torch.arange(len(self.nodes)) if sample is None else torch.from_numpy(self.lookup[sample])
        if len(rows):
            acc, loss = evaluate_many(
                self.setup.model, self.layout, self.params[rows].to(self.device), self.x_test, self.y_test
            )
            out["acc"], out["loss"] = acc.cpu().numpy(), loss.cpu().numpy()
            if len(self.y_val):
                val = evaluate_many(
                    self.setup.model, self.layout, self.params[rows].to(self.device), self.x_val, self.y_val
                )
                out["val_acc"] = val[0].cpu().numpy()
        else:
            out["acc"] = out["loss"] = np.zeros(0, np.float32)
        out.setdefault("val_acc", np.zeros(0, np.float32))
        out["param_sum"] = self.params.double().sum(0).numpy()
        out["variance_sum"] = weight_variances(self.layout, self.params).double().sum(0).numpy()
        return out

    def consensus(self, mean: np.ndarray) -> float:
        """The sum over own nodes of the distance to the mean model (the driver divides by N)."""
        centre = torch.from_numpy(mean).to(self.params.dtype)
        return float((self.params - centre).norm(dim=1).double().sum())
