"""sim/compress/: each compressor by hand on tiny stacks, exact message sizes, error feedback, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from sim.compress import (
    QSGD,
    CompressConfig,
    ErrorFeedback,
    Quantize,
    RandomK,
    ScaledSign,
    TopK,
    build_compressor,
    compress_streams,
    count_for,
)
from sim.errors import ConfigError


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_topk_by_hand_with_ties_duplicates_zeros_and_wide_ranges():
    x = t(
        [
            [3.0, -3.0, 1.0, 0.0],  # k = 2: both 3s
            [2.0, -2.0, 2.0, 2.0],  # four tied: the two lowest indices
            [2.0, -2.0, 2.0, 2.0],  # a duplicated row gives the same message
            [0.0, 0.0, 0.0, 0.0],  # all zero: zeros
            [1e-3, 1e3, -1e3, 5.0],  # values 1e6 apart
            [0.5, 1.0, -1.0, 1.0],  # one above, three tied at the threshold: the lowest index among them
        ]
    )
    expected = t(
        [
            [3.0, -3.0, 0.0, 0.0],
            [2.0, -2.0, 0.0, 0.0],
            [2.0, -2.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 1e3, -1e3, 0.0],
            [0.0, 1.0, -1.0, 0.0],
        ]
    )
    assert torch.equal(TopK(0.5).roundtrip(x), expected)
    assert torch.equal(TopK(0.5).mask(x).sum(1), torch.full((6,), 2))


def test_count_is_the_ceiling_of_fraction_times_p_at_least_one():
    assert count_for(0.01, 4810) == 49
    assert count_for(0.07, 100) == 7  # 0.07 * 100 is 7.000000000000001 in floats
    assert count_for(0.001, 10) == 1
    assert count_for(1.0, 7) == 7
    assert torch.equal(TopK(1.0).roundtrip(t([[1.0, -2.0, 0.0]])), t([[1.0, -2.0, 0.0]]))


def test_message_bytes_per_encoding():
    assert TopK(0.01).message_bytes(4810) == 49 * 8  # int32 index + float32 value
    assert RandomK(0.5).message_bytes(3) == 2 * 8
    assert QSGD(1).message_bytes(10) == 4 + math.ceil(10 * 2 / 8)  # sign + 1 level bit
    assert QSGD(16).message_bytes(10) == 4 + math.ceil(10 * 6 / 8)  # sign + 5 bits for 0..16
    assert QSGD(15).message_bytes(10) == 4 + math.ceil(10 * 5 / 8)  # sign + 4 bits for 0..15
    assert ScaledSign().message_bytes(9) == 4 + 2
    assert Quantize(8).message_bytes(5) == 8 + 5
    assert Quantize(4).message_bytes(5) == 8 + 3


def test_randomk_keeps_k_uniform_entries_per_row_from_each_senders_stream():
    x = torch.arange(1.0, 41.0).reshape(4, 10)
    gens = compress_streams(0, ("up",), 3, torch.tensor([7, 2, 9, 4]))
    out = RandomK(0.3).roundtrip(x, gens)
    kept = out != 0
    assert torch.equal(kept.sum(1), torch.full((4,), 3))
    assert torch.equal(out[kept], x[kept])
    # row of client 9 is the same whoever else is in the stack
    alone = RandomK(0.3).roundtrip(x[2:3], compress_streams(0, ("up",), 3, torch.tensor([9])))
    assert torch.equal(alone, out[2:3])
    scaled = RandomK(0.3, scaled=True).roundtrip(x, compress_streams(0, ("up",), 3, torch.tensor([7, 2, 9, 4])))
    assert torch.allclose(scaled, out * (10 / 3))


def test_randomk_keeps_the_entries_of_the_k_smallest_draws_of_each_senders_stream():
    from sim.seeding import torch_generator

    x = torch.arange(1.0, 21.0).reshape(2, 10)
    out = RandomK(0.3).roundtrip(x, compress_streams(5, ("up",), 4, torch.tensor([3, 8])))
    for row, client in enumerate((3, 8)):
        draws = torch.rand(10, generator=torch_generator(5, "compress", "up", 4, client))
        kept = torch.zeros(10, dtype=torch.bool)
        kept[draws.argsort()[:3]] = True
        assert torch.equal(out[row] != 0, kept)
    other_round = RandomK(0.3).roundtrip(x, compress_streams(5, ("up",), 5, torch.tensor([3, 8])))
    assert not torch.equal(other_round != 0, out != 0)


def test_randomk_is_uniform_over_entries():
    x = torch.ones(2000, 10)
    kept = RandomK(0.2).roundtrip(x, torch.Generator().manual_seed(0)).sum(0) / 2000
    assert torch.allclose(kept, torch.full((10,), 0.2), atol=0.03)


def test_qsgd_by_hand_with_fixed_draws():
    # x = [3, -4, 0], ||x|| = 5, s = 2: levels 1.2, 1.6, 0 -> floor 1, 1, 0, round up with prob 0.2, 0.6, 0
    x = t([[3.0, -4.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    u = torch.rand((1, 3), generator=g)
    up = (u < torch.tensor([[0.2, 0.6, 0.0]])).float()
    expected = torch.tensor([[1.0, -1.0, 0.0]]) * 5 * (torch.tensor([[1.0, 1.0, 0.0]]) + up) / 2
    assert torch.allclose(QSGD(2).roundtrip(x, torch.Generator().manual_seed(0)), expected)
    assert torch.equal(QSGD(3).roundtrip(torch.zeros(2, 4), g), torch.zeros(2, 4))
    tau = 1 + min(3 / 4, math.sqrt(3) / 2)
    assert torch.allclose(QSGD(2, rescaled=True).roundtrip(x, torch.Generator().manual_seed(0)), expected / tau)


def test_qsgd_is_unbiased():
    x = t([[0.3, -1.0, 2.5, 0.0, 1e-3]]).repeat(20000, 1)
    mean = QSGD(2).roundtrip(x, torch.Generator().manual_seed(1)).mean(0)
    assert torch.allclose(mean, x[0], atol=0.03)


def test_scaled_sign_by_hand():
    x = t([[1.0, -3.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [-1e6, 1.0, 1.0, -1.0]])
    s2 = (1e6 + 3) / 4
    expected = t([[1.5, -1.5, 1.5, 1.5], [0.0, 0.0, 0.0, 0.0], [-s2, s2, s2, -s2]])
    assert torch.allclose(ScaledSign().roundtrip(x), expected)


def test_quantize_by_hand_nearest():
    x = t([[-3.0, 3.0, 0.1, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 0.55, 0.26]])
    out = Quantize(4).roundtrip(x)
    # step 0.4: 0.1 -> 7.75 -> 8 -> 0.2; 1 -> 10 -> 1.0; constant row exact; step 1/15: 0.55 -> 8.25, 0.26 -> 3.9
    assert torch.allclose(out, t([[-3.0, 3.0, 0.2, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 8 / 15, 4 / 15]]))
    x8 = torch.linspace(-1, 1, 1000).reshape(2, 500)
    assert (Quantize(8).roundtrip(x8) - x8).abs().max() <= (1.0 / 255) / 2 + 1e-6


def test_error_feedback_two_rounds_by_hand():
    ef = ErrorFeedback(TopK(0.5))
    memory = ef.init_memory(3, 2)
    rows = torch.tensor([2, 0])
    sent, memory2 = ef.apply(t([[1.0, 3.0], [2.0, -1.0]]), memory, rows)
    assert torch.equal(sent, t([[0.0, 3.0], [2.0, 0.0]]))
    assert torch.equal(memory2, t([[0.0, -1.0], [0.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(memory, torch.zeros(3, 2))  # the input is not changed
    # round 2, client 2 again: (1, 1) + (1, 0) = (2, 1) -> sends (2, 0), keeps (0, 1)
    sent, memory3 = ef.apply(t([[1.0, 1.0]]), memory2, torch.tensor([2]))
    assert torch.equal(sent, t([[2.0, 0.0]]))
    assert torch.equal(memory3, t([[0.0, -1.0], [0.0, 0.0], [0.0, 1.0]]))
    plain, none = ErrorFeedback(TopK(0.5), enabled=False).apply(t([[1.0, 3.0]]), None, torch.tensor([0]))
    assert none is None and torch.equal(plain, t([[0.0, 3.0]]))


def test_build_compressor_from_each_config_file():
    from omegaconf import OmegaConf

    from sim.schema import config_root

    built = {}
    for name in ("none", "topk", "randomk", "qsgd", "sign", "quantize"):
        cfg = OmegaConf.load(config_root() / "compress" / f"{name}.yaml")
        built[name] = build_compressor(cfg)
    assert built["none"] is None and build_compressor(None) is None
    assert isinstance(built["topk"], TopK) and built["topk"].fraction == 0.01
    assert isinstance(built["qsgd"], QSGD) and built["qsgd"].levels == 16
    assert isinstance(built["quantize"], Quantize) and built["quantize"].bits == 8
    assert isinstance(built["sign"], ScaledSign) and isinstance(built["randomk"], RandomK)


@pytest.mark.parametrize(
    ("block", "field"),
    [
        ({"name": "topk", "fraction": 0.0}, "compress.fraction"),
        ({"name": "topk", "fraction": 1.5}, "compress.fraction"),
        ({"name": "randomk", "fraction": float("nan")}, "compress.fraction"),
        ({"name": "qsgd", "levels": 0}, "compress.levels"),
        ({"name": "qsgd", "levels": 2.0}, "compress.levels"),
        ({"name": "quantize", "bits": 3}, "compress.bits"),
        ({"name": "quantize", "bits": True}, "compress.bits"),
        ({"name": "topk", "fraction": 0.1, "error_feedback": "yes"}, "compress.error_feedback"),
        ({"name": "topx"}, "compress.name"),
    ],
)
def test_bad_values_name_the_field(block, field):
    with pytest.raises(ConfigError) as err:
        CompressConfig.from_config(block)
    assert err.value.field == field


def test_sampled_top_entries_are_exact_on_every_path():
    from sim.compress.compressors import top_entries, top_mask

    g = torch.Generator().manual_seed(0)
    n, k = 4000, 40  # k << n: the sampled path
    rows = torch.randn(5, n, generator=g).abs()
    rows[1] = torch.randint(0, 5, (n,), generator=g).float()  # few distinct values: ties at the threshold
    rows[2, ::8] += 100.0  # the sampled entries are the largest: fewer than k reach the bound, the full-row path
    rows[3] = rows[0]  # a duplicated row
    rows[4, : n // 2] *= 1e6  # values 1e6 apart
    expected = top_mask(rows, k)  # the full-row selection
    got = torch.zeros_like(expected)
    got[top_entries(rows, k)] = True
    assert torch.equal(got, expected)
    assert torch.equal(got.sum(1), torch.full((5,), k))
    threshold = rows[1].topk(k).values[-1]
    above = (rows[1] > threshold).nonzero().squeeze(1)
    tied = (rows[1] == threshold).nonzero().squeeze(1)[: k - len(above)]  # the lowest indices among the tied
    assert torch.equal(got[1].nonzero().squeeze(1), torch.cat([above, tied]).sort().values)
    for pick in ([2], [0, 1]):  # only full-row rows, only sampled rows
        part = torch.zeros(len(pick), n, dtype=torch.bool)
        part[top_entries(rows[pick], k)] = True
        assert torch.equal(part, expected[pick])


def test_shared_entries_send_the_shared_part_and_keep_the_senders_local_entries():
    from sim.compress.feedback import SharedEntries

    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    every = SharedEntries(None, 4)
    assert every.size == 4 and every.part(x) is x and every.put(x, x + 1).equal(x + 1)
    some = SharedEntries(torch.tensor([True, False, True, False]), 4)
    assert some.size == 2
    assert some.part(x).equal(torch.tensor([[1.0, 3.0], [5.0, 7.0]]))
    assert some.part(x[0]).equal(torch.tensor([1.0, 3.0]))  # a [P] model (FL's broadcast) too
    put = some.put(x, torch.zeros(2, 2))
    assert put.equal(torch.tensor([[0.0, 2.0, 0.0, 4.0], [0.0, 6.0, 0.0, 8.0]])) and x[0, 0] == 1.0  # base unchanged
