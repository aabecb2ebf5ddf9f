"""Per-client quantities drawn from seeded distributions: constant, uniform, lognormal.

Each quantity (``compute_s``, ``bandwidth_up``, ...) is drawn for all clients at once from its own stream
``numpy_rng(seed, "system", name)``, so adding a quantity or changing one's distribution never shifts
another's draws. Lognormal values are ``median * exp(sigma * z)`` with ``z ~ N(0, 1)``: the
parametrisation by the median keeps the typical device fixed while ``sigma`` sets the tail, the way
the FedBuff and FedScale studies vary device speed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..seeding import numpy_rng
from ..validation import is_number, number

FAMILIES = ("constant", "uniform", "lognormal")
SHAPES = {
    "constant": "a finite number",
    "uniform": "{low: L, high: H} with finite L <= H",
    "lognormal": "{median: M, sigma: S} with finite M and S >= 0",
}


@dataclass(frozen=True)
class Quantity:
    """One quantity's distribution: ``family`` with its parameters (already checked)."""

    name: str
    family: str
    params: tuple[float, ...]

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        if self.family == "constant":
            return np.full(count, self.params[0], dtype=np.float64)
        if self.family == "uniform":
            low, high = self.params
            return low + (high - low) * rng.random(count)
        median, sigma = self.params
        with np.errstate(over="ignore", under="ignore"):  # an inf or 0 draw is refused by name (sim/system/build.py)
            return median * np.exp(sigma * rng.standard_normal(count))

    def draw_clients(self, seed: int, count: int) -> np.ndarray:
        return self.draw(numpy_rng(seed, "system", self.name), count)


def parse_quantity(field: str, name: str, value: Any, family: str, positive: bool) -> Quantity:
    """Check ``value`` as a ``family`` distribution of a quantity that must be > 0 (``positive``) or >= 0."""
    allowed = f"{SHAPES[family]}, each value {'> 0' if positive else '>= 0'} (system={family})"

    def bound(sub: str, v: Any) -> float:
        return number(f"{field}{sub}", v, 0, lo_open=positive, allowed=allowed)

    if family == "constant":
        if isinstance(value, Mapping) or not is_number(value):
            raise ConfigError(field, value, allowed)
        return Quantity(name, family, (bound("", value),))
    if not isinstance(value, Mapping):
        raise ConfigError(field, value, allowed)
    keys = ("low", "high") if family == "uniform" else ("median", "sigma")
    extra = sorted(set(value) - set(keys))
    if extra or any(k not in value for k in keys):
        raise ConfigError(field, dict(value), allowed, f"Give exactly the keys {', '.join(keys)}.")
    if family == "uniform":
        low, high = bound(".low", value["low"]), bound(".high", value["high"])
        if low > high:
            raise ConfigError(f"{field}.low", low, f"at most {field}.high ({high})")
        return Quantity(name, family, (low, high))
    median = bound(".median", value["median"])
    sigma = number(f"{field}.sigma", value["sigma"], 0, allowed="a finite number >= 0 (the spread of log values)")
    if positive and median == 0:
        raise ConfigError(f"{field}.median", 0, "a finite number > 0")
    return Quantity(name, family, (median, sigma))
