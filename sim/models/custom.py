"""``model=custom model.target=package.module.Name``: a user's own ``nn.Module`` in the simulator.

The target is a class or a function that returns an ``nn.Module``. It receives ``model.kwargs``,
plus ``input_shape`` (one example's natural shape, e.g. ``(3, 32, 32)``), ``num_classes`` and
``vocab_size`` (token data) for each of those its signature names, so a model written for one data
set can size itself for another. Every way this can go wrong is a ConfigError naming
``model.target`` with the reason (import error text, the exception the call raised...).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from sim.data.inputs import InputSpec
from sim.errors import ConfigError

#: what the simulator passes by name when the target's signature asks for it
PROVIDED = ("input_shape", "num_classes", "vocab_size")
TARGET_ALLOWED = "the import path of a class or function that returns a torch.nn.Module, e.g. mypackage.models.Net"


def _target_name(model_cfg) -> str:
    target = model_cfg.get("target")
    if not isinstance(target, str) or "." not in target.strip(".") or " " in target:
        raise ConfigError(
            "model.target",
            target,
            TARGET_ALLOWED,
            "model=custom needs the module and the name, separated by dots; the module must be importable "
            "(installed, or in the directory you run from).",
        )
    return target


def _kwargs(model_cfg) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    raw = model_cfg.get("kwargs")
    if raw is None:
        return {}
    if isinstance(raw, DictConfig):
        raw = OmegaConf.to_container(raw, resolve=True)
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise ConfigError("model.kwargs", raw, "a mapping of keyword arguments for model.target, e.g. {hidden: 64}")
    clash = sorted(set(raw) & set(PROVIDED))
    if clash:
        raise ConfigError(
            "model.kwargs",
            dict(raw),
            f"keyword arguments other than {', '.join(PROVIDED)}",
            f"The simulator passes {', '.join(clash)} from the data set itself.",
        )
    return dict(raw)


def load_target(model_cfg) -> Callable[..., Any]:
    """The callable ``model.target`` names (imported now), or the ConfigError that says why not."""
    target = _target_name(model_cfg)
    module_name, _, attribute = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised while it ran
        raise ConfigError(
            "model.target", target, TARGET_ALLOWED, f"Importing module {module_name!r} failed: {_describe(exc)}"
        ) from exc
    if not hasattr(module, attribute):
        raise ConfigError(
            "model.target",
            target,
            TARGET_ALLOWED,
            f"Module {module_name!r} ({getattr(module, '__file__', None) or 'built in'}) "
            f"has no attribute {attribute!r}.",
        )
    found = getattr(module, attribute)
    if not callable(found):
        raise ConfigError(
            "model.target", target, TARGET_ALLOWED, f"It is a {type(found).__name__}, which cannot be called."
        )
    return found


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def validate_custom(model_cfg) -> None:
    _kwargs(model_cfg)
    load_target(model_cfg)


def _accepted(factory: Callable[..., Any]) -> set[str]:
    """The names of ``PROVIDED`` that the target's signature names explicitly."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing extra
        return set()
    return {
        name
        for name in PROVIDED
        if name in params
        and params[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def build_custom(model_cfg, spec: InputSpec, num_classes: int) -> nn.Module:
    factory = load_target(model_cfg)
    target = str(model_cfg["target"])
    provided: dict[str, Any] = {"input_shape": tuple(spec.shape), "num_classes": num_classes}
    if spec.vocab_size is not None:
        provided["vocab_size"] = int(spec.vocab_size)
    accepted = _accepted(factory)
    kwargs = {**{k: v for k, v in provided.items() if k in accepted}, **_kwargs(model_cfg)}
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ConfigError(
            "model.target", target, TARGET_ALLOWED, f"Calling it as {target}({shown}) raised {_describe(exc)}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            "model.target",
            target,
            TARGET_ALLOWED,
            f"{target}({shown}) returned a {type(model).__module__}.{type(model).__qualname__}, not a torch.nn.Module.",
        )
    return model
