"""Which tensors of a model a pattern names: the local layers of FedPer, FedRep and FedBN.

A pattern is matched against the Layout's tensor names (``net.4.weight``, ``blocks.0.norm1.bias``):

- a glob (``fnmatch``: ``head.*``, ``*.norm*``), matched against the whole name;
- ``re:<regex>``: a regular expression, matched against the whole name;
- ``<last>``: every tensor of the last layer, the module holding the model's last parameter (the
  classifier of every zoo model: ``linear``, ``net.<2L>``, ``head.3``, ``head.4``, ``fc``, ``head``);
- ``<norm>``: every tensor of every normalization layer, told from the layout alone: a module that keeps
  running statistics (``running_mean``: BatchNorm) or whose ``weight`` is 1-D (the affine scale of
  BatchNorm, GroupNorm, LayerNorm; Linear, Conv and Embedding weights have two or more dimensions).

A pattern that names no tensor, or patterns that together name every tensor (nothing left to share), are
refused with a ConfigError naming ``strategy.local``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

import torch
from omegaconf import ListConfig

from sim.errors import ConfigError
from sim.layout import Layout

LAST, NORM = "<last>", "<norm>"
FIELD = "strategy.local"
ALLOWED = "a list of globs on the model's tensor names, re:<regex>, <last> (the last layer) or <norm> (norm layers)"


def check_patterns(value) -> tuple[str, ...]:
    """The patterns of ``strategy.local`` (one string or a list of them), regexes compiled once to check them."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, (list, tuple, ListConfig)):
        items = list(value)
    else:
        raise ConfigError(FIELD, value, ALLOWED)
    if not items or any(not isinstance(p, str) or not p.strip() for p in items):
        raise ConfigError(FIELD, value, ALLOWED, "Every pattern must be a non-empty string.")
    for p in items:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as exc:
                raise ConfigError(FIELD, p, ALLOWED, f"The regular expression does not compile: {exc}.") from None
    return tuple(items)


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _in_modules(name: str, modules: set[str]) -> bool:
    return _module(name) in modules


def matched_names(layout: Layout, pattern: str) -> list[str]:
    """The tensor names ``pattern`` names, in layout order."""
    names = layout.names
    if pattern == LAST:
        params = [s.name for s in layout if s.kind != "buffer"]
        if not params:
            return []
        last = _module(params[-1])
        return [n for n in names if _module(n) == last]
    if pattern == NORM:
        norms = {_module(s.name) for s in layout if s.name.endswith("running_mean")}
        norms |= {_module(s.name) for s in layout if s.name.rsplit(".", 1)[-1] == "weight" and len(s.shape) == 1}
        return [n for n in names if _in_modules(n, norms)]
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return [n for n in names if rx.fullmatch(n)]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def local_mask(layout: Layout, patterns: Sequence[str]) -> torch.Tensor:
    """``[P]`` bool: the entries of the tensors the patterns name (the layers that stay on the client)."""
    mask = torch.zeros(layout.size, dtype=torch.bool)
    chosen: set[str] = set()
    for pattern in patterns:
        found = matched_names(layout, pattern)
        if not found:
            shown = ", ".join(layout.names[:12]) + (", ..." if len(layout.names) > 12 else "")
            raise ConfigError(
                FIELD,
                pattern,
                ALLOWED,
                f"The pattern names no tensor of this model (a rule that keeps nothing local is FedAvg); its "
                f"tensors are {shown}.",
            )
        chosen.update(found)
    if len(chosen) == len(layout.names):
        raise ConfigError(
            FIELD,
            list(patterns),
            ALLOWED + ", naming some but not all tensors",
            f"The patterns name every tensor of this model ({', '.join(layout.names)}): nothing would be shared, "
            "so there would be no federated model (for a model of one layer, such as logreg, use a deeper model).",
        )
    for spec in layout:
        if spec.name in chosen:
            mask[spec.slice] = True
    return mask
