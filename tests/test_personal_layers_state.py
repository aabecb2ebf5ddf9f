"""The client-state helpers shared by Ditto and FedPer/FedRep/FedBN, and the local mask kept once per device."""

from __future__ import annotations

import pytest
import torch

from sim.cli import preflight
from sim.errors import ConfigError
from sim.layout import Layout
from strategies.base import AggregationInfo
from strategies.client_state import PERSONAL, personal_rows, store_rows, sum_stats
from strategies.personal_layers import PersonalLayers


def test_store_rows_writes_the_given_clients_casts_and_leaves_the_old_state_alone():
    old = {PERSONAL: torch.zeros(4, 2, dtype=torch.float64), "num_clients": torch.tensor(4)}
    new = store_rows(old, torch.tensor([3, 1]), torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float32))
    assert torch.equal(new[PERSONAL], torch.tensor([[0.0, 0], [3, 4], [0, 0], [1, 2]], dtype=torch.float64))
    assert new["num_clients"] is old["num_clients"] and not old[PERSONAL].any()
    assert torch.equal(personal_rows(new, torch.tensor([1, 1, 0])), torch.tensor([[3.0, 4], [3, 4], [0, 0]]).double())
    assert sum_stats({"retries": 1.0}, {"retries": 2.0, "other": 1.0}) == {"retries": 3.0, "other": 1.0}
    assert sum_stats({}, {}) == {}


def test_the_local_mask_is_copied_once_per_device_and_follows_a_new_layout():
    small = Layout.from_module(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 2)))
    big = Layout.from_module(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4)))
    rule = PersonalLayers("fedper")
    shared = rule.shared_mask(small)
    cpu = torch.device("cpu")
    first = rule._mask(cpu)
    assert rule._mask(cpu) is first and torch.equal(first, ~shared)
    assert int(first.sum()) == 3 * 2 + 2  # the last Linear: weight and bias
    # another layout (another model) must not reuse the first one's mask
    rule.shared_mask(big)
    assert rule._mask(cpu).shape == (big.size,) and int(rule._mask(cpu).sum()) == 3 * 4 + 4
    # aggregate keeps the reference's local entries with the cached mask
    models = torch.ones(2, big.size)
    info = AggregationInfo(torch.tensor([0, 1]), torch.tensor([1, 1]), 1, 2, big, torch.zeros(big.size))
    merged, _ = rule.aggregate(models, info, {})
    assert torch.equal(merged, (~rule._mask(cpu)).float())


def test_an_unquoted_regex_that_hydra_cannot_parse_names_the_key_and_the_value():
    with pytest.raises(ConfigError) as info:
        preflight(["strategy=fedper", "strategy.local=re:(", "rounds=1"])
    assert (info.value.field, info.value.value) == ("strategy.local", "re:("), str(info.value)
    assert "key='value'" in str(info.value)
