"""The crafted vectors of each attack: the honest stack ``[H, P]`` in, the Byzantine rows ``[B, P]`` out.

Each function is the attack alone, on whatever vectors it is given (the engine passes updates, model
minus reference; see :mod:`sim.attacks.engine`), and equals ByzFL 0.0.11's attack of the same name
on the same inputs (tests/test_attacks_ref.py). ByzFL returns one vector that its ``ByzantineClient``
repeats ``f`` times; here every function returns all ``B`` rows, identical except for Gaussian noise,
whose rows are independent draws. Min-Max and Min-Sum are not in ByzFL 0.0.11; they follow
Shejwalkar & Houmansadr's published code (NDSS 2021), transcribed as the reference in the tests.

Statistics are taken in float64 and the rows returned in the input's dtype, so a rule sees crafted
rows as precise as the honest ones.
"""

from __future__ import annotations

import math

import torch

MAX_HALVINGS = 1100  # 2**-1100 underflows every float64 step


def _mean(honest: torch.Tensor) -> torch.Tensor:
    return honest.double().mean(0)


def _std(honest: torch.Tensor) -> torch.Tensor:
    """Per-coordinate sample standard deviation (ddof=1, as ByzFL and torch.std); zero for one row.

    ByzFL would return NaN for a single honest vector; a Byzantine client facing one honest peer
    has no spread to hide in, so it sends the mean.
    """
    if honest.shape[0] < 2:
        return torch.zeros(honest.shape[1], dtype=torch.float64)
    return honest.double().std(0, correction=1)


def _rows(vector: torch.Tensor, count: int, like: torch.Tensor) -> torch.Tensor:
    return vector.to(like.dtype).expand(count, -1).clone()


def sign_flip(honest: torch.Tensor, count: int) -> torch.Tensor:
    """``-mean(honest)``: the honest direction reversed (ByzFL ``SignFlipping``)."""
    return _rows(-_mean(honest), count, honest)


def ipm(honest: torch.Tensor, count: int, eps: float) -> torch.Tensor:
    """Inner product manipulation (Xie et al. 2020): ``-eps * mean(honest)``.

    ByzFL's ``InnerProductManipulation(tau=eps)``.
    """
    return _rows(-eps * _mean(honest), count, honest)


def alie_z(num_inputs: int, num_byzantine: int) -> float:
    """Baruch et al. (2019)'s largest z that stays unnoticed: ``Phi^-1((n - s) / n)``, ``s = floor(n/2 + 1) - f``.

    ``s`` is how many honest inputs the Byzantine ones need on their side to form a majority; with
    a Byzantine majority (``s < 1``) it is taken as 1, the largest finite z for ``n`` inputs.
    """
    supporters = max(num_inputs // 2 + 1 - num_byzantine, 1)
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((num_inputs - supporters) / num_inputs)))


def alie(honest: torch.Tensor, count: int, z: float) -> torch.Tensor:
    """A little is enough (Baruch et al. 2019): ``mean + z * std`` per coordinate (ByzFL ``ALittleIsEnough(tau=z)``)."""
    return _rows(_mean(honest) + z * _std(honest), count, honest)


def gaussian(honest: torch.Tensor, count: int, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """Independent ``N(mean, std^2)`` rows.

    Row ``b`` is ByzFL ``Gaussian(mean, std)``'s ``b``-th draw from a generator seeded alike.
    """
    rows = [
        torch.randn(honest.shape[1], generator=generator, device=generator.device) * std + mean for _ in range(count)
    ]
    return torch.stack(rows).to(honest.device, honest.dtype) if rows else honest.new_zeros(0, honest.shape[1])


def mimic(honest: torch.Tensor, count: int, target: int) -> torch.Tensor:
    """Copies of one honest vector (ByzFL ``Mimic(epsilon=target)``); the last one when fewer are given.

    Karimireddy et al. (2022) pick the copied worker to maximise the honest spread it hides; ByzFL
    and this function take a fixed position instead.
    """
    return _rows(honest[min(target, honest.shape[0] - 1)], count, honest)


def inf(honest: torch.Tensor, count: int) -> torch.Tensor:
    """Every coordinate ``+inf`` (ByzFL ``Inf``): any rule that averages it returns a non-finite model."""
    return torch.full((count, honest.shape[1]), math.inf, dtype=honest.dtype)


def deviation(honest: torch.Tensor, perturbation: str) -> torch.Tensor:
    """Min-Max / Min-Sum's direction: the mean's unit vector, the per-coordinate std, or the mean's sign."""
    mean = _mean(honest)
    if perturbation == "unit_vec":
        norm = mean.norm()
        return mean / norm if norm > 0 else torch.zeros_like(mean)
    if perturbation == "sign":
        return mean.sign()
    return _std(honest)


def _largest_gamma(passes, gamma_init: float, tolerance: float) -> float:
    """Shejwalkar & Houmansadr's search: the largest gamma that ``passes``, to ``tolerance``.

    Their loop, step for step: start at ``gamma_init``; a pass moves up by half the last step, a
    failure down; the step halves each time; stop when the last passing gamma is within
    ``tolerance`` of the current one. 0 (the honest mean itself) when nothing passes. After
    ``MAX_HALVINGS`` steps the step is below any float's resolution, so a tolerance finer than
    float rounding cannot loop for ever.
    """
    gamma, step, best = gamma_init, gamma_init, 0.0
    for _ in range(MAX_HALVINGS):
        if abs(best - gamma) <= tolerance:
            break
        if passes(gamma):
            best = gamma
            gamma = gamma + step / 2
        else:
            gamma = gamma - step / 2
        step = step / 2
    return best


def _min_max_or_sum(
    honest: torch.Tensor, count: int, perturbation: str, gamma_init: float, tolerance: float, use_sum: bool
) -> torch.Tensor:
    vectors = honest.double()
    mean = vectors.mean(0)
    direction = deviation(honest, perturbation)
    pairwise = torch.cdist(vectors, vectors).square()  # [H, H] squared distances between honest vectors
    # ||v_j - (mean - g d)||^2 = a_j + 2 g b_j + g^2 c: one [H, P] pass, then each trial gamma costs O(H)
    centred = vectors - mean
    a, b, c = centred.square().sum(1), centred @ direction, direction.square().sum()
    if use_sum:
        bound = pairwise.sum(1).min()

        def passes(gamma: float) -> bool:
            return bool((a + 2 * gamma * b + gamma * gamma * c).sum() <= bound)
    else:
        bound = pairwise.max()

        def passes(gamma: float) -> bool:
            return bool((a + 2 * gamma * b + gamma * gamma * c).max() <= bound)

    gamma = _largest_gamma(passes, gamma_init, tolerance)
    return _rows(mean - gamma * direction, count, honest)


def min_max(honest: torch.Tensor, count: int, perturbation: str, gamma_init: float, tolerance: float) -> torch.Tensor:
    """Min-Max (Shejwalkar & Houmansadr 2021): ``mean - gamma * deviation`` with the largest gamma whose
    farthest distance to an honest vector is at most the largest distance between two honest vectors."""
    return _min_max_or_sum(honest, count, perturbation, gamma_init, tolerance, use_sum=False)


def min_sum(honest: torch.Tensor, count: int, perturbation: str, gamma_init: float, tolerance: float) -> torch.Tensor:
    """Min-Sum: as Min-Max, bounding the sum of squared distances to the honest vectors by the smallest
    such sum of an honest vector."""
    return _min_max_or_sum(honest, count, perturbation, gamma_init, tolerance, use_sum=True)
