"""sim/compress/ against transcriptions of the CHOCO authors' compressors (epfml/ChocoSGD, dl_code/pcode/utils/
sparsification.py and optim/ef_sign_sgd.py), one flat message at a time, on the same inputs and random draws.

Differences that are choices, checked here too: ChocoSGD's ``compress_ratio`` r keeps ``max(1, int(n (1 - r)))``
entries and we keep ``max(1, ceil(f n))`` (the same where f n is whole); its QSGD of an all-zero message is NaN
(0 / 0) and ours zero; its sign sends a zero entry as 0 locally, ours as +1 (one bit has two states).
"""

from __future__ import annotations

import math

import pytest
import torch

from sim.compress import QSGD, RandomK, ScaledSign, TopK


# ---- transcriptions (one flat tensor each, as the reference applies them) -------------------------------------
def ref_top_k(x: torch.Tensor, ratio: float) -> torch.Tensor:
    x_data = x.view(-1)
    top_k = max(1, int(x_data.nelement() * (1 - ratio)))
    if top_k == 1:
        _, idx = torch.max(x_data.abs(), dim=0, keepdim=True)
    else:
        _, idx = torch.topk(x_data.abs(), top_k, largest=True, sorted=False)
    out = torch.zeros_like(x_data)
    out[idx] = x_data[idx]
    return out


def ref_random_k(x: torch.Tensor, idx: torch.Tensor, is_biased: bool) -> torch.Tensor:
    """The reference draws its indices with numpy; given the same indices, what it sends."""
    n, k = x.nelement(), len(idx)
    out = torch.zeros_like(x)
    out[idx] = x[idx] if is_biased else n / k * x[idx]
    return out


def ref_qsgd(x: torch.Tensor, s: int, is_biased: bool = False) -> torch.Tensor:
    norm = x.norm(p=2)
    level_float = s * x.abs() / norm
    previous_level = torch.floor(level_float)
    is_next_level = (torch.rand_like(x) < (level_float - previous_level)).float()
    new_level = previous_level + is_next_level
    scale = 1.0
    if is_biased:
        d = x.nelement()
        scale = 1.0 / (min(d / (s**2), math.sqrt(d) / s) + 1.0)
    return scale * torch.sign(x) * norm * new_level / s


def ref_ef_sign(grad: torch.Tensor) -> torch.Tensor:
    return grad.norm(p=1) * torch.sign(grad) / grad.nelement()


# ---- inputs -------------------------------------------------------------------------------------------------------
def awkward_stack() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 40, generator=g)
    wide = base[0].clone()
    wide[::2] *= 1e6  # values 1e6 apart
    return torch.stack([base[0], base[1], base[1], wide, base[2] * 1e-3])  # rows 1 and 2 duplicated


@pytest.mark.parametrize("fraction", [0.025, 0.25, 0.5, 1.0])
def test_top_k_equals_the_reference(fraction):
    x = awkward_stack()
    ours = TopK(fraction).roundtrip(x)
    for row, got in zip(x, ours, strict=True):
        assert torch.equal(got, ref_top_k(row, 1 - fraction))


def test_top_k_with_ties_keeps_the_same_magnitudes_as_the_reference_and_the_lowest_indices():
    x = torch.tensor([[1.0, -2.0, 2.0, -2.0, 2.0, 0.5], [0.0] * 6])
    ours = TopK(0.5).roundtrip(x)
    for row, got in zip(x, ours, strict=True):
        ref = ref_top_k(row, 0.5)
        assert torch.equal(got.abs().sort().values, ref.abs().sort().values)  # its tie order is unspecified
    assert torch.equal(ours[0], torch.tensor([0.0, -2.0, 2.0, -2.0, 0.0, 0.0]))


def test_count_differs_from_the_reference_only_where_fraction_times_n_is_not_whole():
    row = torch.arange(1.0, 11.0)
    assert torch.equal(TopK(0.35).roundtrip(row[None])[0].count_nonzero(), torch.tensor(4))  # ceil(3.5)
    assert ref_top_k(row, 1 - 0.35).count_nonzero() == 3  # int(3.5)
    # int(n (1 - r)) also loses one to float rounding: 40 * (1 - 0.9) is 3.9999999999999996
    x = awkward_stack()
    assert ref_top_k(x[0], 0.9).count_nonzero() == 3
    assert torch.equal(TopK(0.1).roundtrip(x)[0], ref_top_k(x[0], 0.89))  # our 4 are its top 4


@pytest.mark.parametrize("scaled", [False, True])
def test_random_k_sends_what_the_reference_sends_for_the_same_indices(scaled):
    x = awkward_stack()
    gens = [torch.Generator().manual_seed(10 + i) for i in range(len(x))]
    comp = RandomK(0.25, scaled=scaled)
    masks = comp.mask(x, [torch.Generator().manual_seed(10 + i) for i in range(len(x))])
    ours = comp.roundtrip(x, gens)
    for row, mask, got in zip(x, masks, ours, strict=True):
        idx = torch.nonzero(mask).squeeze(1)
        assert len(idx) == 10
        assert torch.allclose(got, ref_random_k(row, idx, is_biased=not scaled), rtol=1e-6)


@pytest.mark.parametrize(("levels", "rescaled"), [(1, False), (4, False), (255, False), (4, True)])
def test_qsgd_equals_the_reference_with_the_same_draws(levels, rescaled):
    x = awkward_stack()
    seeds = [100 + i for i in range(len(x))]
    ours = QSGD(levels, rescaled).roundtrip(x, [torch.Generator().manual_seed(s) for s in seeds])
    for row, seed, got in zip(x, seeds, ours, strict=True):
        torch.manual_seed(seed)  # rand_like draws from the global generator
        ref = ref_qsgd(row, levels, is_biased=rescaled)
        assert torch.allclose(got, ref, rtol=1e-6, atol=0)


def test_qsgd_of_zeros_is_zero_where_the_reference_gives_nan():
    assert torch.isnan(ref_qsgd(torch.zeros(5), 4)).all()
    assert torch.equal(QSGD(4).roundtrip(torch.zeros(1, 5), torch.Generator()), torch.zeros(1, 5))


def test_scaled_sign_equals_the_ef_signsgd_reference_except_at_zero():
    x = awkward_stack()
    ours = ScaledSign().roundtrip(x)
    for row, got in zip(x, ours, strict=True):
        assert torch.allclose(got, ref_ef_sign(row), rtol=1e-6)
    with_zero = torch.tensor([[2.0, 0.0, -2.0, 0.0]])
    assert torch.equal(ref_ef_sign(with_zero[0]), torch.tensor([1.0, 0.0, -1.0, 0.0]))
    assert torch.equal(ScaledSign().roundtrip(with_zero), torch.tensor([[1.0, 1.0, -1.0, 1.0]]))
    assert torch.equal(ScaledSign().roundtrip(torch.zeros(1, 3)), torch.zeros(1, 3))
