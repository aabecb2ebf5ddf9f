"""The model zoo: small classifiers sized for the data that ships here.

Models take flattened inputs ``[B, D]`` (the data container stores every example flat) and reshape
internally when they need spatial structure, so that one batching path serves every model and every
backend. Models hold no buffers that change in training, which keeps them servable by ``vmap``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from .errors import ConfigError
from .seeding import derived_seed
from .validation import choice, integer, is_int

MODEL_NAMES = ("logreg", "mlp", "cnn")


class LogisticRegression(nn.Module):
    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


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
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and one pooling step: enough for 8x8 digits, cheap on a CPU."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int], hidden: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        c_in, h, w = self.input_shape
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(c_in, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * (h // 2) * (w // 2), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, *self.input_shape)))


def _int_list(value) -> list | None:
    """The list of positive integers in ``value``, or None when it is anything else."""
    from omegaconf import ListConfig

    if not isinstance(value, (list, tuple, ListConfig)):
        return None
    items = list(value)
    return items if all(is_int(v) and v >= 1 for v in items) else None


def validate_model_config(model_cfg) -> None:
    name = choice("model.name", model_cfg.get("name"), MODEL_NAMES)
    if name == "mlp":
        hidden = _int_list(model_cfg.get("hidden"))
        if not hidden:
            raise ConfigError(
                "model.hidden", model_cfg.get("hidden"), "a non-empty list of positive integers, e.g. [64] or [128,64]"
            )
    if name == "cnn":
        channels = _int_list(model_cfg.get("channels"))
        if channels is None or len(channels) != 2:
            raise ConfigError("model.channels", model_cfg.get("channels"), "two positive integers, e.g. [16,32]")
        integer("model.hidden", model_cfg.get("hidden"), 1, allowed="a positive integer for the cnn")


def build_model(model_cfg, input_shape: Sequence[int], num_classes: int, seed: int) -> nn.Module:
    """Build the model with parameters drawn from the run's own ``"init"`` stream."""
    validate_model_config(model_cfg)
    name = model_cfg["name"]
    num_features = 1
    for d in input_shape:
        num_features *= int(d)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "init"))
        model: nn.Module
        if name == "logreg":
            model = LogisticRegression(num_features, num_classes)
        elif name == "mlp":
            model = MLP(num_features, num_classes, list(model_cfg["hidden"]))
        else:
            if len(input_shape) != 3:
                raise ConfigError(
                    "model.name",
                    name,
                    "a model that accepts flat inputs (logreg or mlp) for this dataset",
                    "The cnn needs images shaped (channels, height, width); "
                    f"this dataset's examples are {tuple(input_shape)}.",
                )
            model = SmallCNN(input_shape, num_classes, list(model_cfg["channels"]), int(model_cfg["hidden"]))
    return model
