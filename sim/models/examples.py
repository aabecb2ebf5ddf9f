"""A custom model as a user would write one: ``configs/model/custom.yaml`` names it as its default target.

It shows the contract of ``model=custom``: the constructor names ``input_shape`` and
``num_classes`` to be told them, takes its own options as keywords (``model.kwargs``), and the
forward pass receives a batch in its natural shape and returns ``[B, num_classes]`` logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class TwoLayerNet(nn.Module):
    """Flatten, one hidden ReLU layer of ``hidden`` units, a linear classifier."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: int = 32):
        super().__init__()
        self.hidden = nn.Linear(math.prod(input_shape), hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x.flatten(1).float())))
