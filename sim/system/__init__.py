"""Simulated time: how long each client's work and each transfer takes (docs/system.md).

``build_system(cfg, num_clients, graph=None)`` turns the ``system`` config group into a
:class:`SystemModel` that the loops ask for durations. ``system=none`` is a unit clock that changes no
model number: a local training task takes 1.0 simulated second, a transfer 0 s, and every client is
always available.
"""

from __future__ import annotations

from .build import build_run_system, build_system, validate_system_config
from .model import SystemModel

__all__ = ["SystemModel", "build_run_system", "build_system", "validate_system_config"]
