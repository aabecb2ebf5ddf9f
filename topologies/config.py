"""Checking a ``topology`` config before any graph is built.

Every builder declares its parameters and their defaults in :data:`SPECS`; ``normalize`` fills the
defaults, rejects unknown keys and bad values with a :class:`ConfigError` that names the field, and
returns a plain dict the builders can trust. The checks read no file contents and build no graph, so
the command line can run them on every job of a sweep before the first one starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from sim.errors import ConfigError
from sim.validation import boolean, choice, did_you_mean, integer, is_int, number

from .mixing import MIXING_RULES

COMMON = {"name": None, "mixing": "metropolis_hastings", "allow_disconnected": False}

# Per builder: its own parameters with defaults (the YAML files in configs/topology mirror these).
SPECS: dict[str, dict[str, object]] = {
    "complete": {},
    "star": {},
    "ring": {},
    "torus": {"rows": None, "cols": None},
    "random_regular": {"degree": 4, "time_varying": False, "max_tries": 100},
    "erdos_renyi": {"p": None, "mean_degree": 8, "time_varying": False, "max_tries": 100},
    "small_world": {"k": 4, "p": 0.1, "time_varying": False, "max_tries": 100},
    "scale_free": {"m": 2, "time_varying": False},
    "exponential": {"one_peer": False},
    "file": {"path": None},
}
TOPOLOGIES = tuple(SPECS)
SINGLE_NODE_OK = ("complete", "star")  # the only builders that make sense with one node


def _int(field: str, value, lo: int, hi: int | None = None, detail: str = "") -> int:
    return integer(field, value, lo, hi, detail=detail)


def _prob(field: str, value) -> float:
    return number(field, value, 0, 1)


def most_square(n: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n, rows <= cols and rows as large as possible."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def _torus_shape(p: dict, n: int) -> None:
    rows, cols = p["rows"], p["cols"]
    for field, value in (("rows", rows), ("cols", cols)):
        if value is not None:
            _int(f"topology.{field}", value, 1)
    if rows is None and cols is None:
        p["rows"], p["cols"] = most_square(n)
        return
    if rows is None or cols is None:
        field, given = ("rows", rows) if rows is not None else ("cols", cols)
        if n % given:
            raise ConfigError(
                f"topology.{field}",
                given,
                f"a divisor of num_clients ({n})",
                "Leave topology.rows and topology.cols null for the most square torus.",
            )
        p["rows"], p["cols"] = (given, n // given) if rows is not None else (n // given, given)
        return
    if rows * cols != n:
        raise ConfigError(
            "topology.rows",
            rows,
            f"rows * cols == num_clients ({n})",
            f"topology.cols={cols} gives {rows * cols} nodes; leave both null for the most square torus.",
        )


def _check_params(name: str, p: dict, n: int) -> None:
    if "time_varying" in p:
        boolean("topology.time_varying", p["time_varying"])
    if "max_tries" in p:
        _int("topology.max_tries", p["max_tries"], 1)
    if name == "torus":
        _torus_shape(p, n)
    elif name == "random_regular":
        _int("topology.degree", p["degree"], 1, n - 1, f"num_clients is {n}.")
        if (n * p["degree"]) % 2:
            raise ConfigError(
                "topology.degree",
                p["degree"],
                "a degree with num_clients * degree even",
                f"num_clients={n} * degree={p['degree']} is odd: no such regular graph exists.",
            )
        if p["degree"] == 1 and n > 2 and not p["allow_disconnected"]:
            raise ConfigError(
                "topology.degree",
                1,
                f"at least 2 for a connected graph on {n} nodes",
                "Degree 1 is a perfect matching (N/2 components); set "
                "topology.allow_disconnected=true to use it anyway.",
            )
    elif name == "erdos_renyi":
        if p["p"] is not None:
            p["edge_p"] = _prob("topology.p", p["p"])
        elif p["mean_degree"] is None:
            raise ConfigError("topology.p", None, "a number in [0, 1] (or set topology.mean_degree)")
        else:
            md = number(
                "topology.mean_degree",
                p["mean_degree"],
                0,
                n - 1,
                allowed=f"a number in [0, num_clients - 1 = {n - 1}]",
            )
            p["edge_p"] = md / (n - 1)
    elif name == "small_world":
        _int("topology.k", p["k"], 2, n - 1, f"num_clients is {n}.")
        if p["k"] % 2:
            raise ConfigError("topology.k", p["k"], "an even integer (each node links to k/2 on each side)")
        p["p"] = _prob("topology.p", p["p"])
    elif name == "scale_free":
        _int("topology.m", p["m"], 1, n - 1, f"num_clients is {n}.")
    elif name == "exponential":
        boolean("topology.one_peer", p["one_peer"])
    elif name == "file":
        path = p["path"]
        if not isinstance(path, (str, os.PathLike)) or str(path) in ("", "???"):
            raise ConfigError(
                "topology.path",
                path,
                "the path of an edge list or a .graphml file",
                "Set it on the command line, e.g. topology.path=/data/graph.graphml.",
            )
        path = p["path"] = str(path)
        if not os.path.isfile(path):
            raise ConfigError(
                "topology.path", path, "an existing, readable graph file", f"No file at {os.path.abspath(path)}."
            )


def normalize(topology_cfg, num_nodes: int) -> dict:
    """The checked parameters of ``topology_cfg`` with defaults filled in; raises ConfigError."""
    if topology_cfg is None:
        raise ConfigError("topology", None, f"a topology config with a name, one of {', '.join(TOPOLOGIES)}")
    if isinstance(topology_cfg, DictConfig):  # keep OmegaConf's "???" as the string, like sim.data
        topology_cfg = OmegaConf.to_container(topology_cfg, resolve=True, throw_on_missing=False)
    if not isinstance(topology_cfg, Mapping):
        raise ConfigError("topology", topology_cfg, "a mapping of settings with a name")
    given = {str(k): v for k, v in topology_cfg.items()}
    name = choice("topology.name", given.get("name"), TOPOLOGIES)
    if not is_int(num_nodes) or num_nodes < 1:
        raise ConfigError("num_clients", num_nodes, "an integer >= 1")
    if num_nodes < 2 and name not in SINGLE_NODE_OK:
        raise ConfigError(
            "num_clients",
            num_nodes,
            f"at least 2 for topology.name={name}",
            f"Only {' and '.join(SINGLE_NODE_OK)} accept a single node.",
        )
    defaults = {**COMMON, **SPECS[name]}
    for key, value in given.items():
        if key not in defaults:
            raise ConfigError(
                f"topology.{key}",
                value,
                f"a key that topology.name={name} takes: {', '.join(defaults)}",
                did_you_mean(key, defaults).strip(),
            )
    p = {**defaults, **given}
    choice("topology.mixing", p["mixing"], MIXING_RULES)
    boolean("topology.allow_disconnected", p["allow_disconnected"])
    _check_params(name, p, num_nodes)
    return p
