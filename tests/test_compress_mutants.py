"""Exact numbers for the sim/compress/ mutants that tests/test_compress*.py let survive (docs/mutation_testing.md)."""

from __future__ import annotations

import torch

from sim.compress import QSGD, ErrorFeedback, Quantize, RandomK, TopK, count_for
from sim.compress.compressors import top_entries, uniform


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_uniform_draws_in_the_callers_dtype_from_one_or_per_row_generators():
    # float64 draws are other numbers than float32 draws of the same generator: the dtype must reach torch.rand
    one = uniform((2, 3), torch.Generator().manual_seed(4), torch.float64)
    assert one.dtype == torch.float64
    assert torch.equal(one, torch.rand((2, 3), generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    rows = uniform((2, 3), [torch.Generator().manual_seed(s) for s in (4, 9)], torch.float64)
    assert rows.dtype == torch.float64
    expected = [torch.rand(3, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in (4, 9)]
    assert torch.equal(rows, torch.stack(expected))
    empty = uniform((0, 5), [], torch.float64)  # no senders: an empty stack of the right shape and dtype
    assert empty.shape == (0, 5) and empty.dtype == torch.float64


def test_qsgd_of_float64_rows_draws_float64_numbers():
    # 100 ones: ||x|| = 10, s = 5, level 0.5 each: 2 where the float64 draw < 0.5, else 0 (float32 draws differ)
    x = torch.ones(1, 100, dtype=torch.float64)
    u = torch.rand((1, 100), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = QSGD(5).roundtrip(x, torch.Generator().manual_seed(3))
    assert out.dtype == torch.float64
    assert torch.allclose(out, 2.0 * (u < 0.5).double())


def test_topk_fills_the_ties_after_the_entries_above_the_threshold():
    # |x| = 3, 1, 1, 1 and k = 2: 3 is above the threshold 1, so only the first of the three tied 1s is kept
    x = t([[3.0, 1.0, -1.0, 1.0], [-1.0, 2.0, 1.0, 1.0]])
    assert torch.equal(TopK(0.5).roundtrip(x), t([[3.0, 1.0, 0.0, 0.0], [-1.0, 2.0, 0.0, 0.0]]))


def test_masks_are_bool():
    x = t([[3.0, 1.0, -1.0, 1.0]])
    assert TopK(0.5).mask(x).dtype == torch.bool
    assert RandomK(0.5).mask(x, torch.Generator().manual_seed(0)).dtype == torch.bool


def test_count_rounds_the_product_to_six_decimals():
    # 0.10000004 * 10 = 1.0000004: 1.0 at six decimals (k = 1), while seven decimals would give k = 2
    assert count_for(0.10000004, 10) == 1
    assert count_for(0.1000004, 10) == 2


def test_quantize_of_rows_without_values():
    out = Quantize(2).roundtrip(torch.zeros(3, 0))
    assert out.shape == (3, 0)


def test_error_feedback_passes_the_generator_and_ignores_memory_when_disabled():
    x = torch.arange(1.0, 17.0).reshape(2, 8)  # 8 choose 4 subsets per row: another stream matches by chance rarely
    memory = torch.zeros(3, 8)
    memory[0, 0], memory[2, 7] = 0.5, -1.0
    rows = torch.tensor([2, 0])
    corrected = x + memory[rows]
    # enabled: the compressor draws from the caller's generator
    sent, new = ErrorFeedback(RandomK(0.5)).apply(x, memory, rows, torch.Generator().manual_seed(7))
    expected = RandomK(0.5).roundtrip(corrected, torch.Generator().manual_seed(7))
    assert torch.equal(sent, expected)
    assert new is not None and torch.equal(new[rows], corrected - expected) and torch.equal(new[1], memory[1])
    # disabled: the plain compressor with the caller's generator, the memory given back as it was
    sent, same = ErrorFeedback(RandomK(0.5), enabled=False).apply(x, memory, rows, torch.Generator().manual_seed(7))
    assert torch.equal(sent, RandomK(0.5).roundtrip(x, torch.Generator().manual_seed(7)))
    assert same is memory and memory[0, 0] == 0.5


def test_error_feedback_memory_in_the_callers_dtype():
    memory = ErrorFeedback(TopK(0.5)).init_memory(2, 3, torch.float64)
    assert memory.dtype == torch.float64 and torch.equal(memory, torch.zeros(2, 3, dtype=torch.float64))


def test_sampled_top_entries_compare_float64_values_in_float64():
    # 64 values, k = 1: the sampled path (n >= 64, 2.5 k < n); 1 + 1e-12 at index 10 beats 1 at index 5 only in float64
    values = torch.arange(64, dtype=torch.float64) * 1e-3
    values[5], values[10] = 1.0, 1.0 + 1e-12
    rows, cols = top_entries(values[None].repeat(2, 1), 1)
    assert rows.tolist() == [0, 1] and cols.tolist() == [10, 10]
