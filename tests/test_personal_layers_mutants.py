"""Exact numbers for the mutants of personal_layers.py and layer_patterns.py that survived (docs/mutation_testing.md).

FedRep's round is two backend calls; ``_both_phases`` joins their ClientBatches. Hand-made batches pin how.
"""

from __future__ import annotations

import math

import torch

from sim.backends.base import ClientBatch
from sim.layout import Layout
from strategies.layer_patterns import matched_names
from strategies.personal_layers import _both_phases


def batch(loss, steps, stats):
    ids = torch.arange(len(loss))
    return ClientBatch(
        client_ids=ids,
        params=torch.zeros(len(loss), 2),
        num_samples=torch.full((len(loss),), 5),
        train_loss=torch.tensor(loss, dtype=torch.float32),
        stats=stats,
        num_steps=None if steps is None else torch.tensor(steps),
    )


def test_both_phases_weights_the_losses_by_steps_and_sums_the_counters():
    # client 0: 3 head steps of loss 1 and 1 body step of loss 5 -> 8 / 4 = 2; client 1: one head step alone (loss 4);
    # client 2: no step in either phase -> NaN
    head = batch([1.0, 4.0, float("nan")], [3, 1, 0], {"retries": 2.0, "bytes": 1.0})
    body = batch([5.0, float("nan"), float("nan")], [1, 0, 0], {"retries": 3.0, "moves": 4.0})
    out = _both_phases(head, body)
    assert out.num_steps.tolist() == [4, 1, 0]
    assert out.train_loss.dtype == torch.float32
    assert out.train_loss[:2].tolist() == [2.0, 4.0] and math.isnan(out.train_loss[2])
    assert out.stats == {"retries": 5.0, "bytes": 1.0, "moves": 4.0}


def test_both_phases_counts_a_phase_without_step_counts_as_no_steps():
    # a backend that does not report num_steps: that phase adds no steps and no loss
    out = _both_phases(batch([1.0, 2.0], None, {}), batch([3.0, 6.0], [2, 1], {}))
    assert out.num_steps.tolist() == [2, 1] and out.train_loss.tolist() == [3.0, 6.0]
    out = _both_phases(batch([1.0, 2.0], [1, 2], {}), batch([3.0, 6.0], None, {}))
    assert out.num_steps.tolist() == [1, 2] and out.train_loss.tolist() == [1.0, 2.0]


class RootParams(torch.nn.Module):
    """A model whose tensors sit on the root module (names without a dot): one layer, the module ``""``."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.bias = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return x * self.weight + self.bias


def test_tensors_of_the_root_module_form_one_layer():
    # both root tensors belong to the last layer; the 1-D root "weight" makes the root a norm-like layer, bias included
    layout = Layout.from_module(RootParams())
    assert matched_names(layout, "<last>") == ["weight", "bias"]
    assert matched_names(layout, "<norm>") == ["weight", "bias"]


def test_last_layer_with_one_tensor_and_a_norm_layer_without_affine_weights():
    # the last layer's weight alone (bias=False) is the last layer; BatchNorm(affine=False) is told by running_mean only
    nn = torch.nn
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, affine=False), nn.Linear(3, 2, bias=False))
    layout = Layout.from_module(model)
    assert matched_names(layout, "<last>") == ["2.weight"]
    assert matched_names(layout, "<norm>") == ["1.running_mean", "1.running_var"]  # the layout keeps float tensors
