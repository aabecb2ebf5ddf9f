"""The system block's checks that involve the rest of the run config, for ``validate_config``."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .build import link_field, link_path, validate_system_config
from .graph_links import read_link_file


def check_system_run(cfg: Any, mode: str, num_clients: int) -> None:
    """Refuse a bad ``system`` block before any work (trace files are read and checked here)."""
    spec = validate_system_config(cfg.get("system") or {"name": "none"}, num_clients, int(cfg.get("seed", 0)))
    path = link_path(cfg, spec) if spec.name != "none" else None
    if path:
        read_link_file(path, num_clients, link_field(cfg, spec))
    participation = (cfg.get("participation") or {}).get("name")
    if spec.over_selection is not None and mode == "federated" and participation != "uniform":
        raise ConfigError(
            "system.over_selection",
            spec.over_selection,
            "null with participation=" + str(participation),
            "Over-selection asks for ceil(c*K) clients of a fixed K per round: it needs participation=uniform.",
        )
