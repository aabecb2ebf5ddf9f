"""The model zoo and a door for the user's own models.

Every model takes inputs in their natural shape (``[B, C, H, W]`` images, ``[B, T]`` token ids,
``[B, *shape]`` features): :func:`build_model` attaches the data set's :class:`InputSpec` as a
forward pre-hook, which turns the flat stored rows into those. Built-in models hold no buffers that
change in training (resnet with ``norm=batch`` excepted, which the sequential backend serves), so
``vmap`` trains many clients of them at once.

Each option of ``configs/model/`` has a validator (every key, ConfigError before any work) and a
builder; parameters are drawn from the run's own ``"init"`` stream, so one seed gives one model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sim.data.inputs import InputSpec, attach_inputs
from sim.seeding import derived_seed
from sim.validation import choice

from . import custom, resnet, tabular, text, vision
from .check import check_model_output
from .resnet import CifarResNet
from .tabular import MLP, LogisticRegression
from .text import CharRNN
from .vision import LeNet5, SmallCNN


@dataclass(frozen=True)
class ZooEntry:
    validate: Callable[[object], None]  # (model config) -> None, or ConfigError
    build: Callable[[object, InputSpec, int], nn.Module]  # (model config, inputs, classes) -> model


ZOO: dict[str, ZooEntry] = {
    "logreg": ZooEntry(tabular.validate_logreg, tabular.build_logreg),
    "mlp": ZooEntry(tabular.validate_mlp, tabular.build_mlp),
    "cnn": ZooEntry(vision.validate_cnn, vision.build_cnn),
    "lenet": ZooEntry(vision.validate_lenet, vision.build_lenet),
    "resnet": ZooEntry(resnet.validate_resnet, resnet.build_resnet),
    "charlstm": ZooEntry(text.validate_charlstm, text.build_charlstm),
    "custom": ZooEntry(custom.validate_custom, custom.build_custom),
}
MODEL_NAMES = tuple(ZOO)

__all__ = [
    "MLP",
    "MODEL_NAMES",
    "CharRNN",
    "CifarResNet",
    "InputSpec",
    "LeNet5",
    "LogisticRegression",
    "SmallCNN",
    "build_model",
    "check_model_output",
    "validate_model_config",
]


def validate_model_config(model_cfg) -> None:
    """Check every key of the model group (a custom target is imported here, before any work)."""
    ZOO[choice("model.name", model_cfg.get("name"), MODEL_NAMES)].validate(model_cfg)


def build_model(model_cfg, inputs: InputSpec | Sequence[int], num_classes: int, seed: int) -> nn.Module:
    """Build the model with parameters drawn from the run's own ``"init"`` stream, taking stored rows.

    ``inputs`` is the data set's :class:`InputSpec`, or (older callers) one example's shape, read
    as float features of that shape.
    """
    validate_model_config(model_cfg)
    spec = inputs if isinstance(inputs, InputSpec) else InputSpec(tuple(int(d) for d in inputs))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "init"))
        model = ZOO[model_cfg["name"]].build(model_cfg, spec, num_classes)
    return attach_inputs(model, spec)
