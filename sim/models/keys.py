"""Checks shared by the zoo's models: lists of sizes in a config and the input kind a model needs."""

from __future__ import annotations

from typing import Any

from sim.data.inputs import InputSpec
from sim.errors import ConfigError
from sim.validation import is_int


def int_list(value: Any) -> list[int] | None:
    """The list of positive integers in ``value``, or None when it is anything else."""
    from omegaconf import ListConfig

    if not isinstance(value, (list, tuple, ListConfig)):
        return None
    items = list(value)
    return items if all(is_int(v) and v >= 1 for v in items) else None


def image_shape(name: str, spec: InputSpec, min_side: int = 1) -> tuple[int, int, int]:
    """``(C, H, W)`` of image-like inputs, or the ConfigError that says why ``name`` cannot take these inputs."""
    shape = tuple(int(d) for d in spec.shape)
    if len(shape) != 3 or spec.kind == "tokens":
        raise ConfigError(
            "model.name",
            name,
            "a model that accepts this dataset's inputs (logreg or mlp for flat features, charlstm for tokens)",
            f"The {name} model needs images shaped (channels, height, width); this dataset's examples are "
            f"{spec.kind} values of shape {shape}.",
        )
    c, h, w = shape
    if min(h, w) < min_side:
        raise ConfigError(
            "model.name",
            name,
            f"a model for {h}x{w} images (cnn or resnet), or images of at least {min_side}x{min_side}",
            f"The {name} model shrinks its input below one pixel for images smaller than {min_side}x{min_side}.",
        )
    return c, h, w


def not_tokens(name: str, spec: InputSpec) -> None:
    """Refuse token ids for a model that reads real numbers (an id is a name, not a quantity)."""
    if spec.kind == "tokens":
        raise ConfigError(
            "model.name",
            name,
            "charlstm (or a custom model) for token data",
            f"The {name} model reads real-valued features; this dataset's examples are token ids.",
        )
