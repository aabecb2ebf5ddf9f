"""The CIFAR ResNet of He et al. (2016): depth 6n+2, three stages of widths 16, 32, 64.

Normalization is GroupNorm by default (``model.norm=group``): it keeps no running statistics, so
``vmap`` trains many clients at once and federated averaging has no statistics to average (Hsieh et
al., 2020, show BatchNorm suffers under non-IID clients). ``model.norm=batch`` gives the original
BatchNorm network, which only the sequential backend can train (``backend=auto`` picks it).
Shortcuts that change the shape subsample and zero-pad channels (the paper's option A), so the
network has no parameters beyond its convolutions, norms and classifier: resnet20 has 0.27 M.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sim.data.inputs import InputSpec
from sim.errors import ConfigError
from sim.validation import choice, integer

from .keys import image_shape

NORMS = ("group", "batch")
WIDTHS = (16, 32, 64)


def make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if kind == "group" else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; the first convolution may halve the resolution."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, c_out, groups)
        self.stride, self.extra_channels = stride, c_out - c_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int, norm: str, groups: int):
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        c_in = int(input_shape[0])
        self.conv = nn.Conv2d(c_in, WIDTHS[0], 3, padding=1, bias=False)
        self.norm = make_norm(norm, WIDTHS[0], groups)
        layers: list[nn.Module] = []
        width = WIDTHS[0]
        for stage, stage_width in enumerate(WIDTHS):
            for b in range(blocks_per_stage):
                layers.append(BasicBlock(width, stage_width, 2 if stage > 0 and b == 0 else 1, norm, groups))
                width = stage_width
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.norm(self.conv(x))))
        return self.fc(out.mean(dim=(-2, -1)))


def validate_resnet(model_cfg) -> None:
    depth = integer("model.depth", model_cfg.get("depth"), 8, allowed="6n+2 for n >= 1: 8, 14, 20, 32, 44, 56, 110")
    if (depth - 2) % 6:
        raise ConfigError("model.depth", depth, "6n+2 for n >= 1: 8, 14, 20, 32, 44, 56, 110")
    norm = choice("model.norm", model_cfg.get("norm"), NORMS)
    groups = integer("model.groups", model_cfg.get("groups"), 1, allowed="a positive integer that divides 16")
    if norm == "group" and WIDTHS[0] % groups:
        raise ConfigError(
            "model.groups", groups, "a divisor of 16: 1, 2, 4, 8 or 16", "GroupNorm splits 16, 32 and 64 channels."
        )


def build_resnet(model_cfg, spec: InputSpec, num_classes: int) -> nn.Module:
    shape = image_shape("resnet", spec)
    return CifarResNet(shape, num_classes, int(model_cfg["depth"]), str(model_cfg["norm"]), int(model_cfg["groups"]))
