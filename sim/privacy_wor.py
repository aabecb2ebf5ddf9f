"""RDP of the Gaussian mechanism under fixed-size sampling without replacement, replace-one neighbours.

Opacus analyses Poisson sampling with add/remove neighbours only. ``participation=uniform`` samples
exactly m of N clients, for which the matching analysis is Wang, Balle and Kasiviswanathan,
"Subsampled Renyi Differential Privacy and Analytical Moments Accountant" (AISTATS 2019), Theorem 27,
with neighbouring data sets that differ in one client's data (N public). This is a line-by-line port
of Google's ``dp_accounting`` (Apache 2.0, ``rdp_privacy_accountant._compute_rdp_sample_wor_gaussian``
in dp-accounting 0.6.0), so that a run does not need that package; tests/test_dp_accounting.py
checks it against dp_accounting on the same inputs. ``noise_multiplier`` is the noise standard
deviation over the *replace-one* L2 sensitivity.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

MAX_EXACT_ORDER = 256  # above it dp_accounting bounds each term with cgf (Stirling), O(alpha) work


def _log_add(logx: float, logy: float) -> float:
    a, b = min(logx, logy), max(logx, logy)
    if a == -np.inf:
        return b
    return math.log1p(math.exp(a - b)) + b


def _log_sub_sign(logx: float, logy: float) -> tuple[bool, float]:
    """``(sign, log |exp(logx) - exp(logy)|)``."""
    if logx > logy:
        return True, logx + math.log1p(-np.exp(logy - logx))
    if logx < logy:
        return False, logy + float(np.log1p(-np.exp(logx - logy)))
    return True, -np.inf


def _log_comb(n: float, k: float) -> float:
    return float(special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1))


def _diff_in_log(vec: np.ndarray, signs: np.ndarray, n: int) -> None:
    """Replaces the first n entries of (vec, signs), a signed log-magnitude vector, by its forward differences."""
    for j in range(n):
        if signs[j] == signs[j + 1]:
            signs[j], vec[j] = _log_sub_sign(vec[j + 1], vec[j])
            if not signs[j + 1]:
                signs[j] = ~signs[j]
        else:
            vec[j] = _log_add(vec[j], vec[j + 1])
            signs[j] = signs[j + 1]


def _forward_diffs(fun, n: int) -> np.ndarray:
    """log |k-th forward difference of exp(fun) at 0| for k = 0..n+1."""
    func_vec = np.zeros(n + 3)
    signs = np.ones(n + 3, dtype=bool)
    deltas = np.zeros(n + 2)
    for i in range(1, n + 3):
        func_vec[i] = fun(1.0 * (i - 1))
    for i in range(n + 2):
        _diff_in_log(func_vec, signs, n + 2 - i)
        deltas[i] = func_vec[0]
    return deltas


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """(alpha - 1) times the RDP at integer ``alpha``: Theorem 27's bound, in log space."""
    if alpha == 1:
        return 0.0

    def cgf(x: float) -> float:
        return x * 1.0 * (x + 1) / (2.0 * sigma**2)

    def func(x: float) -> float:
        return 1.0 * x / (2.0 * sigma**2)

    log_a = 0.0
    log_f2m1 = func(2.0) + math.log1p(-np.exp(-func(2.0)))
    second = 2 * np.log(q) + _log_comb(alpha, 2) + np.minimum(np.log(4) + log_f2m1, func(2.0) + np.log(2))
    log_a = _log_add(log_a, float(second))
    if alpha <= MAX_EXACT_ORDER:
        deltas = _forward_diffs(cgf, alpha)
        for i in range(3, alpha + 1):
            low, high = deltas[int(2 * np.floor(i / 2.0)) - 1], deltas[int(2 * np.ceil(i / 2.0)) - 1]
            s = np.minimum(np.log(4) + 0.5 * (low + high), np.log(2) + cgf(i - 1))
            log_a = _log_add(log_a, float(s + i * np.log(q) + _log_comb(alpha, i)))
    else:
        for i in range(3, alpha + 1):
            log_a = _log_add(log_a, float(np.log(2) + cgf(i - 1) + i * np.log(q) + _log_comb(alpha, i)))
    return float(log_a)


def rdp_without_replacement(q: float, noise_multiplier: float, orders: tuple[float, ...]) -> list[float]:
    """RDP at each order of one release: m = q N of N sampled without replacement, replace-one neighbours.

    Fractional orders interpolate the two neighbouring integers' log-moments (Corollary 10 of the
    paper, as dp_accounting does), an upper bound.
    """
    out = []
    for alpha in orders:
        if q == 0:
            out.append(0.0)
        elif noise_multiplier == 0 or math.isinf(alpha):
            out.append(math.inf)
        elif q == 1.0:
            out.append(alpha / (2 * noise_multiplier**2))
        elif float(alpha).is_integer():
            out.append(_log_a_int(q, noise_multiplier, int(alpha)) / (alpha - 1))
        else:
            low, high, t = math.floor(alpha), math.ceil(alpha), alpha - math.floor(alpha)
            x, y = _log_a_int(q, noise_multiplier, low), _log_a_int(q, noise_multiplier, high)
            out.append(((1 - t) * x + t * y) / (alpha - 1))
    return out
