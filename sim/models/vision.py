"""Convolutional models for images ``[B, C, H, W]``: the small CNN and LeNet-5.

Both size their dense head from the image shape they are built for, so any (C, H, W) at least the
model's minimum works (odd sides included: pooling floors). Neither holds a buffer that changes in
training, so ``vmap`` serves them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sim.data.inputs import InputSpec
from sim.errors import ConfigError
from sim.validation import integer

from .keys import image_shape, int_list


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


def validate_cnn(model_cfg) -> None:
    channels = int_list(model_cfg.get("channels"))
    if channels is None or len(channels) != 2:
        raise ConfigError("model.channels", model_cfg.get("channels"), "two positive integers, e.g. [16,32]")
    integer("model.hidden", model_cfg.get("hidden"), 1, allowed="a positive integer for the cnn")


def build_cnn(model_cfg, spec: InputSpec, num_classes: int) -> nn.Module:
    shape = image_shape("cnn", spec, min_side=2)
    return SmallCNN(shape, num_classes, list(model_cfg["channels"]), int(model_cfg["hidden"]))


#: LeNet pads its first convolution by 2 on images smaller than this (28x28 MNIST becomes 32x32, as usual)
LENET_PAD_BELOW = 32
#: the smallest side LeNet can take: 12 -> (pad 2, conv5) 12 -> pool 6 -> conv5 2 -> pool 1
LENET_MIN_SIDE = 12


def lenet_padding(h: int, w: int) -> int:
    return 2 if min(h, w) < LENET_PAD_BELOW else 0


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling: conv5(6) pool conv5(16) pool fc120 fc84 fc(classes).

    Images smaller than 32x32 get a 2-pixel padding on the first convolution (so 28x28 MNIST sees the
    32x32 field of the original design); larger ones none. The first dense layer takes whatever the
    feature maps measure, so any image of at least 12x12 fits.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        c, h, w = (int(d) for d in input_shape)
        pad = lenet_padding(h, w)
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        fh, fw = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * fh * fw, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def validate_lenet(model_cfg) -> None:
    """LeNet-5's layer sizes are the classic ones; it has no keys of its own."""


def build_lenet(model_cfg, spec: InputSpec, num_classes: int) -> nn.Module:
    return LeNet5(image_shape("lenet", spec, min_side=LENET_MIN_SIDE), num_classes)
