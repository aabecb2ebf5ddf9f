"""ByzFL 0.0.11's aggregators as a test reference, imported without its benchmark.

``import byzfl`` runs its ``__init__``, which imports the benchmark and through it torchvision; the
PyPI torchvision does not load against this project's CPU torch. The aggregators need only torch
and numpy, so a bare ``byzfl`` package module (its ``__path__`` the installed folder) is registered
first, and the subpackages import from it. Tests skip when byzfl is not installed
(``pip install byzfl --no-deps``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def byzfl_module(name: str) -> types.ModuleType:
    """``byzfl.<name>`` (e.g. ``aggregators``), or a pytest skip when byzfl is not installed."""
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("byzfl is not installed (pip install byzfl --no-deps)")
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = package
    return importlib.import_module(f"byzfl.{name}")
