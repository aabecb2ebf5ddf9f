"""Models a user might name with ``model=custom model.target=custom_models.<Name>`` (tests put tests/ on sys.path).

Each one is what its name says: a working model, a factory, and every way a target can be wrong.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NOT_CALLABLE = 42  # a target that names a value, not a class or function


class TinyNet(nn.Module):
    """A conv layer and a classifier: takes input_shape and num_classes, plus its own ``width``."""

    def __init__(self, input_shape, num_classes, width: int = 3):
        super().__init__()
        channels, height, width_px = input_shape
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.fc = nn.Linear(width * height * width_px, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def make_linear(num_classes, features: int = 12):
    """A factory that asks only for num_classes; it is told nothing else."""
    return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))


def takes_everything(**kwargs):
    """Names none of input_shape/num_classes: gets only model.kwargs (here: none), so it fails to build."""
    return nn.Linear(kwargs["in_features"], 2)


def not_a_module(input_shape, num_classes):
    return {"weights": torch.zeros(num_classes)}


def raises(input_shape, num_classes):
    raise ValueError(f"no model for {num_classes} classes today")


class WrongOutput(nn.Module):
    """Returns one logit too many."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes + 1)

    def forward(self, x):
        return self.fc(x.flatten(1))


class BrokenForward(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(5, num_classes)  # the wrong input size: the forward pass raises

    def forward(self, x):
        return self.fc(x.flatten(1))


class RunningMean(nn.Module):
    """Keeps a running mean of its inputs in a buffer, updated in place: vmap cannot train it."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.register_buffer("mean", torch.zeros(math.prod(input_shape)))
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        flat = x.flatten(1)
        if self.training:
            with torch.no_grad():
                self.mean.mul_(0.9).add_(0.1 * flat.mean(0))
        return self.fc(flat - self.mean)


class WithDropout(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(x.flatten(1)))


class TorchLSTM(nn.Module):
    """torch's own LSTM: vmap runs it, but through a slow per-client fallback (no batching rule)."""

    def __init__(self, vocab_size, num_classes):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 3)
        self.rnn = nn.LSTM(3, 4, batch_first=True)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.rnn(self.embed(x))[0][:, -1])


class TokenBag(nn.Module):
    """Mean of token embeddings and a classifier: neither a dense chain nor conv/recurrent (auto tries vmap)."""

    def __init__(self, vocab_size, num_classes):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 3)
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        return self.fc(self.embed(x).mean(1))
