"""Vectorized seed derivation equals numpy's SeedSequence word for word."""

import numpy as np
import pytest
import torch

from sim.seeding import derived_seed, derived_seeds, torch_generator, torch_generators


@pytest.mark.parametrize("seed", [0, 1, 7, 2**31 + 5, 2**40 + 3, 2**70 + 11])
@pytest.mark.parametrize("keys", [(), ("train",), ("train", 3), ("a", "b", "c", 12345678901)])
def test_derived_seeds_equal_the_scalar_derivation(seed, keys):
    rng = np.random.default_rng(0)
    clients = np.concatenate([[0, 1, 2**32 - 1], rng.integers(0, 2**32, 40)])
    rounds = rng.integers(0, 1000, len(clients))
    for varying in ([clients], [rounds, clients], []):
        got = derived_seeds(seed, keys, varying)
        rows = zip(*[c.tolist() for c in varying], strict=True) if varying else [()]
        want = [derived_seed(seed, *keys, *row) for row in rows]
        assert got.tolist() == want


def test_torch_generators_draw_what_torch_generator_draws():
    gens = torch_generators(5, ("train",), [np.array([3, 3, 9]), np.array([0, 17, 4])])
    for g, (r, c) in zip(gens, [(3, 0), (3, 17), (9, 4)], strict=True):
        want = torch.randperm(50, generator=torch_generator(5, "train", r, c))
        assert torch.equal(torch.randperm(50, generator=g), want)


def test_out_of_range_keys_are_refused():
    with pytest.raises(ValueError):
        derived_seeds(0, ("train",), [np.array([-1])])
