"""Each attack equals its reference on the same honest stack.

The reference is ByzFL 0.0.11, or the authors' code for Min-Max / Min-Sum (tests/byzfl_attacks_ref.py).
"""

import pytest
import torch
from byzfl_attacks_ref import byzfl_attacks, min_max_reference, min_sum_reference

from sim.attacks import crafting

ATOL = 1e-5


@pytest.fixture(scope="module")
def byzfl():
    module = byzfl_attacks()
    if module is None:
        pytest.skip("byzfl is not installed (pip install byzfl --no-deps)")
    return module


def _honest(rows=7, dim=40, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, dim, generator=g) * torch.linspace(0.1, 3.0, dim) + 0.5).to(dtype)


def _repeated(vector, count):
    return torch.as_tensor(vector, dtype=torch.float32).expand(count, -1)


@pytest.mark.parametrize("seed", [0, 1])
def test_sign_flip_equals_byzfl(byzfl, seed):
    honest = _honest(seed=seed)
    expected = _repeated(byzfl.SignFlipping()(honest), 3)
    torch.testing.assert_close(crafting.sign_flip(honest, 3), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("eps", [0.1, 2.0, 100.0])
def test_ipm_equals_byzfl(byzfl, eps):
    honest = _honest()
    expected = _repeated(byzfl.InnerProductManipulation(tau=eps)(honest), 2)
    torch.testing.assert_close(crafting.ipm(honest, 2, eps), expected, atol=ATOL * max(1.0, eps), rtol=0)


@pytest.mark.parametrize("z", [0.0, 0.524, 1.5])
def test_alie_equals_byzfl(byzfl, z):
    honest = _honest(rows=9)
    expected = _repeated(byzfl.ALittleIsEnough(tau=z)(honest), 4)
    torch.testing.assert_close(crafting.alie(honest, 4, z), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("target", [0, 3])
def test_mimic_equals_byzfl(byzfl, target):
    honest = _honest()
    expected = _repeated(byzfl.Mimic(epsilon=target)(honest), 2)
    torch.testing.assert_close(crafting.mimic(honest, 2, target), expected, atol=0, rtol=0)


def test_inf_equals_byzfl(byzfl):
    honest = _honest()
    expected = _repeated(byzfl.Inf()(honest), 3)
    assert torch.equal(crafting.inf(honest, 3), expected)


def test_gaussian_rows_are_byzfl_draws_from_the_same_seed(byzfl):
    """ByzFL draws from torch's global generator; row b is its b-th draw after seeding it alike."""
    honest = _honest()
    torch.manual_seed(123)
    attack = byzfl.Gaussian(mu=0.5, sigma=2.0)
    expected = torch.stack([attack(honest).float() for _ in range(3)])
    got = crafting.gaussian(honest, 3, 0.5, 2.0, torch.Generator().manual_seed(123))
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("perturbation", ["std", "unit_vec", "sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_max_equals_the_authors_search(perturbation, seed):
    honest = _honest(seed=seed, dtype=torch.float64)
    expected = min_max_reference(honest, perturbation, 10.0, 1e-5).expand(2, -1)
    torch.testing.assert_close(crafting.min_max(honest, 2, perturbation, 10.0, 1e-5), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("perturbation", ["std", "unit_vec", "sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_sum_equals_the_authors_search(perturbation, seed):
    honest = _honest(seed=seed, dtype=torch.float64)
    expected = min_sum_reference(honest, perturbation, 10.0, 1e-5).expand(2, -1)
    torch.testing.assert_close(crafting.min_sum(honest, 2, perturbation, 10.0, 1e-5), expected, atol=ATOL, rtol=0)


def test_min_max_and_min_sum_stop_exactly_on_their_bounds():
    """Hand check on a line: honest {0, 1, 5}, mean 2, std sqrt(7); the crafted point is 2 - t (t = gamma sqrt(7)).

    Min-Max: its farthest distance, to 5, is 3 + t <= the honest diameter 5, so t = 2: the point 0.
    Min-Sum: (2 - t)^2 + (1 - t)^2 + (3 + t)^2 = 14 + 3 t^2 <= 17 (the honest 1's sum 1 + 16), so t = 1: the point 1.
    """
    honest = torch.tensor([[0.0], [1.0], [5.0]], dtype=torch.float64)
    assert crafting.min_max(honest, 1, "std", 10.0, 1e-9).item() == pytest.approx(0.0, abs=1e-8)
    assert crafting.min_sum(honest, 1, "std", 10.0, 1e-9).item() == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize(
    "n,f,expected",
    [(10, 1, 0.0), (10, 3, 0.5244005127), (12, 4, 0.6744897502), (50, 24, 1.7506860713), (4, 3, 0.6744897502)],
)
def test_alie_z_follows_baruch_et_al(n, f, expected):
    """z = Phi^-1((n - s) / n), s = floor(n/2 + 1) - f; (4, 3) has a Byzantine majority, s taken as 1."""
    assert crafting.alie_z(n, f) == pytest.approx(expected, abs=1e-6)
