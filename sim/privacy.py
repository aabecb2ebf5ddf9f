"""The privacy accountant: (epsilon, delta) of a run's Gaussian releases, from Opacus's RDP analysis.

Accounting is not ours to invent: the Renyi-DP of the sampled Gaussian mechanism and its conversion
to (epsilon, delta) are Opacus's (``opacus.accountants.analysis.rdp``, Mironov 2017; Mironov, Talwar
and Zhang 2019). This module only fixes the orders, composes rounds by adding RDP vectors (so the
running total is data a checkpoint can carry), and turns a target epsilon into a noise multiplier.

The analysis assumes Poisson sampling: each client is in a round independently with probability
``sample_rate``, and neighbouring data sets differ by adding or removing one client. docs/privacy.md
says how that relates to gossipsoup's participation models.
"""

from __future__ import annotations

import math
import warnings
from functools import cache, lru_cache
from pathlib import Path
from types import ModuleType

from .errors import ConfigError

#: RDP orders. Opacus's default range is 1.1..63 in steps of 0.1, but each fractional order costs
#: 0.05-0.1 s per evaluation under subsampling (an infinite series), integers a fraction of a
#: millisecond. These few fractional orders and the integers give Opacus's default epsilon to ~1%
#: (tests/test_dp_config.py). The search for a target uses only the integer orders: epsilon is
#: a minimum over orders, so fewer orders can only overstate it, and the noise found is enough.
SEARCH_ORDERS: tuple[float, ...] = (*map(float, range(2, 65)), 80.0, 96.0, 128.0, 256.0, 512.0)
ORDERS: tuple[float, ...] = (1.25, 1.5, 1.75, *SEARCH_ORDERS)
MAX_NOISE_MULTIPLIER = 1e6  # Opacus's own cap when it searches for a noise level


@cache
def opacus_rdp() -> ModuleType:
    """Opacus's ``accountants/analysis/rdp.py``, loaded without running ``opacus/__init__``.

    The module needs only numpy and scipy, but ``import opacus`` first imports its privacy engine,
    torch.distributed and scipy.stats: 6-15 s on a busy 2-core machine, paid by every run and
    every config check with DP on. Loading the one file by path gives the same code in milliseconds;
    if Opacus ever moves it, the ordinary import is used.
    """
    import importlib.util

    spec = importlib.util.find_spec("opacus")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("dp", "opacus", "an installed opacus (pip install opacus): its accountant counts epsilon")
    path = Path(next(iter(spec.submodule_search_locations))) / "accountants" / "analysis" / "rdp.py"
    file_spec = importlib.util.spec_from_file_location("_gossipsoup_opacus_rdp", path)
    if not path.is_file() or file_spec is None or file_spec.loader is None:
        from opacus.accountants.analysis import rdp

        return rdp
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def rdp_per_round(sample_rate: float, noise_multiplier: float, orders: tuple[float, ...] = ORDERS) -> list[float]:
    """RDP at each of ``orders`` of one release of the sampled Gaussian mechanism (inf without noise)."""
    if noise_multiplier <= 0:
        return [math.inf] * len(orders)
    rdp = opacus_rdp().compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(orders))
    return [float(v) for v in rdp]


def epsilon(rdp: list[float], delta: float, orders: tuple[float, ...] = ORDERS) -> float:
    """The smallest epsilon over the orders at which the composed ``rdp`` is (epsilon, delta)-DP."""
    if not rdp or all(v == 0 for v in rdp):
        return 0.0
    if any(math.isinf(v) for v in rdp):
        return math.inf
    with warnings.catch_warnings():  # "optimal order is the largest alpha": a bound, still valid
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = opacus_rdp().get_privacy_spent(orders=list(orders), rdp=list(rdp), delta=delta)
    return float(eps)


def epsilon_after(
    rounds: int, sample_rate: float, noise_multiplier: float, delta: float, orders: tuple[float, ...] = ORDERS
) -> float:
    """Epsilon of ``rounds`` identical releases (RDP composes by addition)."""
    per_round = rdp_per_round(sample_rate, noise_multiplier, orders)
    return epsilon([rounds * v for v in per_round], delta, orders)


@lru_cache(maxsize=64)
def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, rounds: int) -> float:
    """The smallest noise multiplier (to 0.1% of itself) whose ``rounds`` releases stay within the target.

    Bisection on Opacus's epsilon, which falls as the noise grows; the answer always meets the
    target (the upper end of the last bracket). ConfigError when even ``MAX_NOISE_MULTIPLIER`` does not.
    """

    def spent(noise_multiplier: float) -> float:
        return epsilon_after(rounds, sample_rate, noise_multiplier, delta, SEARCH_ORDERS)

    if spent(MAX_NOISE_MULTIPLIER) > target_epsilon:
        raise ConfigError(
            "dp.target_epsilon",
            target_epsilon,
            "an epsilon the run can meet",
            f"Even a noise multiplier of {MAX_NOISE_MULTIPLIER:g} spends more over {rounds} round(s) at "
            f"sampling rate {sample_rate:g} and delta={delta:g}. Raise dp.target_epsilon or dp.delta, "
            "or lower rounds.",
        )
    low, high = 0.0, 1.0
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        if spent(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high
