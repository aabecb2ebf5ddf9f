"""The model zoo: small classifiers sized for the data that ships here.

Models take flattened inputs ``[B, D]`` (the data container stores every example flat) and reshape
internally when they need spatial structure, so that one batching path serves every model and every
backend. Models hold no buffers that change in training, which keeps them servable by ``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import ConfigError
from .seeding import derived_seed

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
        for a, b in zip(sizes[:-1], sizes[1:]):
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
            nn.Conv2d(c_in, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * (h // 2) * (w // 2), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, *self.input_shape)))


def validate_model_config(model_cfg) -> None:
    name = model_cfg.get("name")
    if name not in MODEL_NAMES:
        raise ConfigError("model.name", name, f"one of {', '.join(MODEL_NAMES)}")
    if name == "mlp":
        hidden = list(model_cfg.get("hidden") or [])
        if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ConfigError("model.hidden", hidden, "a non-empty list of positive integers, e.g. [64] or [128,64]")
    if name == "cnn":
        channels = list(model_cfg.get("channels") or [])
        if len(channels) != 2 or any(not isinstance(c, int) or c < 1 for c in channels):
            raise ConfigError("model.channels", channels, "two positive integers, e.g. [16,32]")
        if not isinstance(model_cfg.get("hidden"), int) or model_cfg.get("hidden") < 1:
            raise ConfigError("model.hidden", model_cfg.get("hidden"), "a positive integer for the cnn")


def build_model(model_cfg, input_shape: Sequence[int], num_classes: int, seed: int) -> nn.Module:
    """Build the model with parameters drawn from the run's own ``"init"`` stream."""
    validate_model_config(model_cfg)
    name = model_cfg["name"]
    num_features = 1
    for d in input_shape:
        num_features *= int(d)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "init"))
        if name == "logreg":
            model = LogisticRegression(num_features, num_classes)
        elif name == "mlp":
            model = MLP(num_features, num_classes, list(model_cfg["hidden"]))
        else:
            if len(input_shape) != 3:
                raise ConfigError(
                    "model.name", name,
                    "a model that accepts flat inputs (logreg or mlp) for this dataset",
                    f"The cnn needs images shaped (channels, height, width); this dataset's examples are {tuple(input_shape)}.",
                )
            model = SmallCNN(input_shape, num_classes, list(model_cfg["channels"]), int(model_cfg["hidden"]))
    return model
