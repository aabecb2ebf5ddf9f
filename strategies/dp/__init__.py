"""Differential privacy as layers around any strategy (the ``dp`` config group; docs/privacy.md)."""

from .build import build_dp
from .wrappers import Accounting, CentralDP, LocalDP, clip_updates

__all__ = ["Accounting", "CentralDP", "LocalDP", "build_dp", "clip_updates"]
