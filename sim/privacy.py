"""The privacy accountant: (epsilon, delta) of a run's Gaussian releases, by Renyi-DP composition.

Accounting is not ours to invent. Two analyses, one per sampling scheme the runs use:

- ``poisson``: each client is in a round independently with probability ``sample_rate``;
  neighbouring data sets differ by adding or removing one client. Opacus's analysis of the sampled
  Gaussian mechanism (``opacus.accountants.analysis.rdp``, Mironov 2017; Mironov, Talwar and Zhang
  2019) at Opacus's own default orders, so the epsilon is the number Opacus's ``RDPAccountant`` gives.
- ``without_replacement``: exactly m = ``sample_rate`` N of N clients each round; neighbouring data
  sets differ in one client's data (replace-one, N public). Wang, Balle and Kasiviswanathan 2019,
  Theorem 27 (sim/privacy_wor.py, ported from Google's dp_accounting) at dp_accounting's default
  orders, so the epsilon is the number dp_accounting's ``RdpAccountant(REPLACE_ONE)`` gives.

``noise_multiplier`` here is always the noise standard deviation over the L2 sensitivity *under
the neighbouring relation of the analysis*; the DP wrappers convert their own multiplier to it
(strategies/dp/build.py). RDP vectors compose by addition, so the running total is data a checkpoint
can carry. docs/privacy.md says which participation gets which analysis.
"""

from __future__ import annotations

import math
import warnings
from functools import cache, lru_cache
from pathlib import Path
from types import ModuleType

from .errors import ConfigError
from .privacy_wor import rdp_without_replacement

POISSON = "poisson"
WITHOUT_REPLACEMENT = "without_replacement"
SAMPLINGS = (POISSON, WITHOUT_REPLACEMENT)
#: The neighbouring relation each analysis proves its bound for.
NEIGHBOURS = {POISSON: "add/remove one client", WITHOUT_REPLACEMENT: "replace one client's data"}

#: Opacus's ``RDPAccountant.DEFAULT_ALPHAS`` (tests/test_dp_accounting.py checks they are equal).
OPACUS_ORDERS: tuple[float, ...] = (*(1 + x / 10.0 for x in range(1, 100)), *map(float, range(12, 64)))
#: dp_accounting's ``DEFAULT_RDP_ORDERS``.
DP_ACCOUNTING_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *map(float, range(11, 64)),
    128.0,
    256.0,
    512.0,
    1024.0,
)
ORDERS = {POISSON: OPACUS_ORDERS, WITHOUT_REPLACEMENT: DP_ACCOUNTING_ORDERS}
MAX_NOISE_MULTIPLIER = 1e6  # Opacus's own cap when it searches for a noise level


def orders_for(sampling: str) -> tuple[float, ...]:
    return ORDERS[sampling]


def search_orders(sampling: str) -> tuple[float, ...]:
    """The integer orders up to 63 of ``sampling``'s grid: a subset, so the epsilon they give is never
    below the reported one (a minimum over more orders), and integers cost a fraction of fractional
    orders (an infinite series under Poisson subsampling)."""
    return tuple(a for a in orders_for(sampling) if a.is_integer() and a <= 63)


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


def rdp_per_round(
    sample_rate: float, noise_multiplier: float, sampling: str = POISSON, orders: tuple[float, ...] | None = None
) -> list[float]:
    """RDP at each order of one release of the subsampled Gaussian mechanism (inf without noise)."""
    return list(_rdp(sample_rate, noise_multiplier, sampling, orders_for(sampling) if orders is None else orders))


@lru_cache(maxsize=256)
def _rdp(sample_rate: float, noise_multiplier: float, sampling: str, orders: tuple[float, ...]) -> tuple[float, ...]:
    """Cached: a run builds its strategy twice (validation, then the run) and the target search revisits values."""
    if noise_multiplier <= 0:
        return (math.inf,) * len(orders)
    if sampling == WITHOUT_REPLACEMENT:
        return tuple(rdp_without_replacement(sample_rate, noise_multiplier, orders))
    rdp = opacus_rdp().compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(orders))
    return tuple(float(v) for v in rdp)


def epsilon(rdp: list[float], delta: float, orders: tuple[float, ...]) -> float:
    """The smallest epsilon over the orders at which the composed ``rdp`` is (epsilon, delta)-DP.

    The conversion is Balle et al. 2020's (Opacus's ``get_privacy_spent``; dp_accounting's is the same).
    """
    if not rdp or all(v == 0 for v in rdp):
        return 0.0
    if any(math.isinf(v) for v in rdp):
        return math.inf
    with warnings.catch_warnings():  # "optimal order is the largest alpha": a bound, still valid
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = opacus_rdp().get_privacy_spent(orders=list(orders), rdp=list(rdp), delta=delta)
    return float(eps)


def epsilon_after(
    rounds: int,
    sample_rate: float,
    noise_multiplier: float,
    delta: float,
    sampling: str = POISSON,
    orders: tuple[float, ...] | None = None,
) -> float:
    """Epsilon of ``rounds`` identical releases (RDP composes by addition)."""
    orders = orders_for(sampling) if orders is None else orders
    per_round = rdp_per_round(sample_rate, noise_multiplier, sampling, orders)
    return epsilon([rounds * v for v in per_round], delta, orders)


@lru_cache(maxsize=64)
def noise_for_target(
    target_epsilon: float, delta: float, sample_rate: float, rounds: int, sampling: str = POISSON
) -> float:
    """The smallest noise multiplier (to 0.1% of itself) whose ``rounds`` releases stay within the target.

    Bisection on the epsilon at :func:`search_orders`, which falls as the noise grows; the answer
    always meets the target (the upper end of the last bracket), at the reported orders too.
    ConfigError when even ``MAX_NOISE_MULTIPLIER`` does not.
    """
    orders = search_orders(sampling)

    def spent(noise_multiplier: float) -> float:
        return epsilon_after(rounds, sample_rate, noise_multiplier, delta, sampling, orders)

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
