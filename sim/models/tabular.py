"""Models for feature vectors: logistic regression and a multi-layer perceptron.

Both flatten their input first, so they take any example shape (an image is read pixel by pixel)
and their parameter names (``linear.weight``, ``net.0.weight``...) are what the dense kernel of the
vectorized backend (sim/backends/dense_kernel.py) recognises.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from sim.data.inputs import InputSpec
from sim.errors import ConfigError

from .keys import int_list, not_tokens


class LogisticRegression(nn.Module):
    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    def __init__(self, num_features: int, num_classes: int, hidden: Sequence[int]):
        super().__init__()
        sizes = [num_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def validate_logreg(model_cfg) -> None:
    """logreg has no keys of its own."""


def build_logreg(model_cfg, spec: InputSpec, num_classes: int) -> nn.Module:
    not_tokens("logreg", spec)
    return LogisticRegression(spec.num_values, num_classes)


def validate_mlp(model_cfg) -> None:
    if not int_list(model_cfg.get("hidden")):
        raise ConfigError(
            "model.hidden", model_cfg.get("hidden"), "a non-empty list of positive integers, e.g. [64] or [128,64]"
        )


def build_mlp(model_cfg, spec: InputSpec, num_classes: int) -> nn.Module:
    not_tokens("mlp", spec)
    return MLP(spec.num_values, num_classes, list(model_cfg["hidden"]))
