"""From the ``system`` config group to a :class:`SystemModel`, every value checked before any work.

``validate_system_config`` is what ``validate_config`` runs (no data needed, trace files are read and
checked there); ``build_system`` draws or reads the per-client quantities. The order of the random
draws is fixed and documented in docs/system.md: one stream per quantity, ``("system", name)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..schema import config_dict
from ..validation import choice, number
from .draws import FAMILIES, Quantity, parse_quantity
from .links import Links
from .model import SystemModel

NAMES = ("none", *FAMILIES, "trace")
#: the per-client quantities of a distribution option: (key, must be > 0)
CLIENT_QUANTITIES = (("compute_s", True), ("bandwidth_up", True), ("bandwidth_down", True), ("latency_s", False))


@dataclass(frozen=True)
class SystemSpec:
    """The checked ``system`` block: what to draw or read, and the FL round rules."""

    name: str
    seed: int
    quantities: dict[str, Quantity]
    link_quantities: dict[str, Quantity]
    server_bandwidth: float | None
    deadline_s: float | None
    over_selection: float | None
    options: dict[str, Any]


def _optional(field: str, value: Any, allowed: str, lo: float = 0.0, lo_open: bool = True) -> float | None:
    if value is None:
        return None
    return number(field, value, lo, lo_open=lo_open, allowed=f"null or {allowed}")


def parse_system_config(system_cfg: Any, seed: int = 0) -> SystemSpec:
    """Check the ``system`` block (a DictConfig or mapping); ConfigError names the first bad field."""
    cfg = dict(system_cfg) if isinstance(system_cfg, dict) else config_dict(system_cfg)  # ??? stays a string
    name = choice("system.name", cfg.get("name", "none"), NAMES)
    quantities: dict[str, Quantity] = {}
    links: dict[str, Quantity] = {}
    if name in FAMILIES:
        given_flops = cfg.get("model_flops")
        if given_flops is not None and cfg.get("flops_per_s") is None:  # it would be ignored: a slip, not a choice
            raise ConfigError(
                "system.model_flops",
                given_flops,
                "null unless system.flops_per_s is set",
                "The FLOPs of a training sample only count with a device speed in FLOP/s; without one, compute time "
                "comes from system.compute_s (seconds per sample).",
            )
        for key, positive in CLIENT_QUANTITIES:
            if key == "compute_s" and cfg.get("flops_per_s") is not None:  # speed in FLOP/s replaces compute_s
                quantities["flops_per_s"] = parse_quantity(
                    "system.flops_per_s", "flops_per_s", cfg["flops_per_s"], name, True
                )
                given = cfg.get("model_flops")
                if given != "auto":  # auto: measured from the run's model (sim/system/flops.py), given to build
                    flops = number(
                        "system.model_flops",
                        given,
                        0,
                        lo_open=True,
                        allowed="auto (measured from the model) or a finite number > 0 of FLOPs per training "
                        "sample (with system.flops_per_s)",
                    )
                    quantities["model_flops"] = Quantity("model_flops", "constant", (flops,))
                continue
            quantities[key] = parse_quantity(f"system.{key}", key, cfg.get(key), name, positive)
    if name != "none":
        link_cfg = cfg.get("links") or {}
        family = "constant" if name == "trace" else name
        for key, positive in (("bandwidth", True), ("latency_s", False)):
            if link_cfg.get(key) is not None:
                links[key] = parse_quantity(f"system.links.{key}", f"link_{key}", link_cfg[key], family, positive)
    over = cfg.get("over_selection")
    return SystemSpec(
        name=name,
        seed=seed,
        quantities=quantities,
        link_quantities=links,
        server_bandwidth=_optional(
            "system.server_bandwidth", cfg.get("server_bandwidth"), "a finite number of bytes/s > 0"
        ),
        deadline_s=_optional("system.deadline_s", cfg.get("deadline_s"), "a finite number of seconds > 0"),
        over_selection=None
        if over is None
        else number("system.over_selection", over, 1, lo_open=True, allowed="null or a finite factor c > 1 (e.g. 1.3)"),
        options=cfg,
    )


def validate_system_config(system_cfg: Any, num_clients: int, seed: int = 0) -> SystemSpec:
    """Every check of the block that needs no data, trace files included (they are read here).

    A link file, which may be the topology's, is checked by :func:`sim.system.checks.check_system_run`.
    """
    spec = parse_system_config(system_cfg, seed)
    _client_arrays(spec, num_clients)
    _availability(spec, num_clients)
    return spec


def _availability(spec: SystemSpec, num_clients: int):
    if spec.name == "none" or not spec.options.get("availability"):
        return None
    from .traces import read_availability

    return read_availability(spec.options, num_clients)


def _checked(field: str, values: np.ndarray, positive: bool) -> np.ndarray:
    bad = ~np.isfinite(values) | ((values <= 0) if positive else (values < 0))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            field,
            float(values[k]),
            f"finite values {'> 0' if positive else '>= 0'} for every client",
            f"Client {k} drew this value: lower the distribution's spread (sigma) or change its bounds.",
        )
    return values


def _client_arrays(spec: SystemSpec, num_clients: int, measured: float | None = None) -> dict[str, np.ndarray]:
    """The per-client arrays; ``measured``: the FLOPs per sample of ``model_flops: auto`` (None while validating,
    when only the speeds are checked)."""
    if spec.name == "none":
        return {}
    if spec.name == "trace":
        from .traces import trace_arrays

        return trace_arrays(spec.options, num_clients)
    arrays = {
        key: _checked(f"system.{key}", spec.quantities[key].draw_clients(spec.seed, num_clients), positive)
        for key, positive in CLIENT_QUANTITIES
        if key in spec.quantities
    }
    if "flops_per_s" in spec.quantities:  # seconds per sample = FLOPs per sample / the device's FLOP/s
        speed = _checked(
            "system.flops_per_s", spec.quantities["flops_per_s"].draw_clients(spec.seed, num_clients), True
        )
        flops = spec.quantities["model_flops"].params[0] if "model_flops" in spec.quantities else measured
        if flops is not None:
            arrays["compute_s"] = _checked("system.flops_per_s", flops / speed, True)
    return arrays


def _link_draw(spec: SystemSpec, arrays: dict[str, np.ndarray]):
    if not spec.link_quantities:
        return None
    from ..seeding import numpy_rng

    def draw(u: int, v: int) -> tuple[float, float]:
        values = {}
        for key in ("bandwidth", "latency_s"):
            q = spec.link_quantities.get(key)
            if q is None:  # the other quantity: from the two clients' access links
                lat = arrays["latency_s"]
                up, down = arrays["bandwidth_up"], arrays["bandwidth_down"]
                values[key] = float(min(up[u], down[v])) if key == "bandwidth" else float(lat[u] + lat[v])
            else:
                values[key] = float(q.draw(numpy_rng(spec.seed, "system", "link", key, u, v), 1)[0])
        return values["bandwidth"], values["latency_s"]

    return draw


def link_path(cfg: Any, spec: SystemSpec) -> str | None:
    """The file whose edges fix gossip links: ``system.links.path``, else a gossip run's ``topology=file`` graph."""
    path = (spec.options.get("links") or {}).get("path")
    if path:
        return str(path)
    topology = cfg.get("topology") if hasattr(cfg, "get") else None
    if cfg.get("mode") == "gossip" and topology is not None and topology.get("name") == "file":
        return str(topology.get("path"))
    return None


def link_field(cfg: Any, spec: SystemSpec) -> str:
    return "system.links.path" if (spec.options.get("links") or {}).get("path") else "topology.path"


def build_system(cfg: Any, num_clients: int, graph: Any = None, model_flops: float | None = None) -> SystemModel:
    """The run's system model. ``cfg`` is the whole run config (its ``system`` block and ``seed``).

    ``graph``: a networkx graph of the gossip topology; its edges' ``bandwidth``/``latency`` attributes,
    where present, fix those links. ``model_flops``: the measured FLOPs per training sample that
    ``system.model_flops: auto`` needs (:func:`build_run_system` measures them from the run's model).
    """
    system_cfg = cfg.get("system") if hasattr(cfg, "get") else None
    seed = int(cfg.get("seed", 0)) if hasattr(cfg, "get") else 0
    spec = parse_system_config(system_cfg if system_cfg is not None else {"name": "none"}, seed)
    if spec.name == "none":
        return SystemModel.unit(num_clients)
    if spec.name in FAMILIES and "flops_per_s" in spec.quantities and "model_flops" not in spec.quantities:
        if model_flops is None:
            raise ValueError("system.model_flops: auto needs the measured FLOPs: build it with build_run_system(exp)")
    arrays = _client_arrays(spec, num_clients, model_flops)
    table = {}
    if graph is not None:
        from .graph_links import graph_link_table

        table = graph_link_table(graph, "the topology graph")
    path = link_path(cfg, spec)
    if path:
        from .graph_links import read_link_file

        table.update(read_link_file(path, num_clients, link_field(cfg, spec)))
    draw = _link_draw(spec, arrays)
    availability = _availability(spec, num_clients)
    return SystemModel(
        enabled=True,
        compute_s=arrays["compute_s"],
        bandwidth_up=arrays["bandwidth_up"],
        bandwidth_down=arrays["bandwidth_down"],
        latency_s=arrays["latency_s"],
        server_bandwidth=spec.server_bandwidth,
        deadline_s=spec.deadline_s,
        over_selection=spec.over_selection,
        availability=availability,
        links=Links(table, draw) if table or draw else None,
        name=spec.name,
    )


def over_selected(clients_per_round: int, factor: float | None, num_clients: int) -> int:
    """How many clients an over-selecting round asks for: ceil(c*K), at most every client."""
    return clients_per_round if factor is None else min(num_clients, math.ceil(factor * clients_per_round))


def build_run_system(exp: Any, graph: Any = None) -> SystemModel:
    """:func:`build_system` of an experiment, with ``model_flops: auto`` measured from its model (once per model)."""
    from .flops import run_model_flops

    return build_system(exp.cfg, exp.data.num_clients, graph, run_model_flops(exp))
