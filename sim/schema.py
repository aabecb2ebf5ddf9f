"""Which config keys exist: those of the YAML files in configs/, and no others.

Hydra lets ``+train.foo=1`` add a key that nothing reads, and an experiment file could set
``dataset.iidd`` without anyone noticing; the run then silently ignores the setting. Here the keys
allowed in a group are those of the chosen option's file (``configs/strategy/fedavg.yaml`` when
``strategy=fedavg``), and the top-level keys are those of ``configs/config.yaml`` plus the group
names, so a key that no file declares is refused with the closest existing key suggested.

Options whose file is ``# @package _global_`` set top-level keys instead of a group's: those of
:data:`PRESET_GROUPS` (experiments) only set values of keys declared elsewhere, while any other
global group (e.g. a ``mode`` group that selects a topology) also declares the keys it sets.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .validation import did_you_mean

CONFIG_MODULE = "configs"
ROOT_CONFIG = "config"
PRESET_GROUPS = ("experiment",)  # global options that set values but declare no keys


def config_root() -> Path:
    try:
        import configs

        return Path(configs.__file__).parent
    except ImportError:  # pragma: no cover - configs ships with the package
        return Path(__file__).resolve().parent.parent / CONFIG_MODULE


def config_dict(node: Any, resolve: bool = True) -> dict[str, Any]:
    """A DictConfig (or a mapping node) as a plain dict; ``to_container`` is typed to return lists and strings too."""
    container = OmegaConf.to_container(node, resolve=resolve)
    if not isinstance(container, dict):
        raise TypeError(f"expected a mapping config, got {type(container).__name__}: {container!r}")
    return {str(k): v for k, v in container.items()}


@lru_cache(maxsize=1)
def group_options() -> dict[str, tuple[str, ...]]:
    """Each config group (a folder of configs/) and its options (the YAML files in it)."""
    root = config_root()
    return {
        d.name: tuple(sorted(p.stem for p in d.glob("*.yaml")))
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(("_", "."))
    }


@cache
def _file(relative: str) -> tuple[dict, bool]:
    """(content without ``defaults``, is it ``@package _global_``) of one YAML file under configs/."""
    path = config_root() / f"{relative}.yaml"
    text = path.read_text()
    is_global = any(line.strip().replace(" ", "") == "#@package_global_" for line in text.splitlines()[:5])
    content = config_dict(OmegaConf.create(text), resolve=False)
    return {k: v for k, v in content.items() if k != "defaults"}, is_global


def _merge(into: dict, extra: Mapping) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value if not isinstance(value, Mapping) else dict(value)


def config_choices(cfg: Any) -> dict[str, str]:
    """The option chosen in each group: Hydra's record when the config has one, else each group's ``name``."""
    hydra_choices = OmegaConf.select(cfg, "hydra.runtime.choices") if isinstance(cfg, DictConfig) else None
    if hydra_choices is not None:
        return {str(k): str(v) for k, v in hydra_choices.items() if v is not None and "/" not in str(k)}
    choices = {}
    for group, options in group_options().items():
        block = cfg.get(group) if isinstance(cfg, (Mapping, DictConfig)) else None
        name = block.get("name") if isinstance(block, (Mapping, DictConfig)) else None
        if name in options:
            choices[group] = name
        elif isinstance(block, str) and block in options:  # a global group that sets a key of its name (mode)
            choices[group] = block
        elif len(options) == 1 and isinstance(block, (Mapping, DictConfig)):
            choices[group] = options[0]
    return choices


def reference(choices: Mapping[str, str]) -> tuple[dict, dict[str, str]]:
    """(the keys every block may hold, with their defaults; where each group's keys are declared)."""
    ref = {k: v for k, v in copy.deepcopy(_file(ROOT_CONFIG)[0]).items() if k != "hydra"}
    sources = {}
    for group, options in group_options().items():
        option = choices.get(group)
        if group in PRESET_GROUPS or option not in options:
            continue
        content, is_global = _file(f"{group}/{option}")
        if is_global:
            _merge(ref, copy.deepcopy(content))
        else:
            ref[group] = content
            sources[group] = f"configs/{group}/{option}.yaml"
    return ref, sources


def check_keys(cfg: Any, choices: Mapping[str, str] | None = None) -> None:
    """ConfigError for the first key of ``cfg`` that no config file declares."""
    choices = config_choices(cfg) if choices is None else choices
    ref, sources = reference(choices)
    container = config_dict(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    given = {str(k): v for k, v in dict(container).items()}
    top = sorted(set(ref) | set(group_options()))
    for key, value in given.items():
        if key not in top and key != "hydra":
            nested = {f"{k}.{leaf}": leaf for k, v in ref.items() if isinstance(v, dict) for leaf in v}
            _unknown(key, value, top, "configs/config.yaml (or a group name)", nested)
        if key in ref and (key in sources or key not in group_options()):
            _compare(value, ref[key], f"{key}.", sources.get(key, "configs/config.yaml"))


def _compare(given: Any, declared: Any, prefix: str, source: str) -> None:
    if not (isinstance(given, dict) and isinstance(declared, dict)):
        return
    for key, value in given.items():
        if key not in declared:
            _unknown(f"{prefix}{key}", value, sorted(declared), source)
        _compare(value, declared[key], f"{prefix}{key}.", source)


_ABSENT = object()


def options_declaring(group: str, dotted: str) -> list[str]:
    """The options of config group ``group`` whose file declares ``dotted``, a key inside the group's block."""
    found = []
    for option in group_options().get(group, ()):
        content, is_global = _file(f"{group}/{option}")
        node: Any = content
        for part in dotted.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if not is_global and node is not _ABSENT:
            found.append(option)
    return found


def _unknown(field: str, value: Any, keys: list[str], source: str, nested: Mapping[str, str] | None = None) -> None:
    """Refuse ``field``, suggesting the closest sibling key (or, at the top, the closest key of any block).

    A key of another option of the same group (``backend.device`` with the default backend, declared by
    ``configs/backend/ray.yaml``) is named with the options that have it: the fix is to choose one of them.
    """
    group, _, inside = field.partition(".")
    if inside and source.startswith(f"configs/{group}/"):
        owners = options_declaring(group, inside)
        if owners:
            where = ", ".join(f"{group}={o} (configs/{group}/{o}.yaml)" for o in owners)
            raise ConfigError(
                field,
                value,
                f"a key declared in {source}: {', '.join(keys)}",
                f"It is a key of {where}, not of the option this run uses: choose "
                f"{' or '.join(f'{group}={o}' for o in owners)} to set it.",
            )
    parent, _, leaf = field.rpartition(".")
    siblings = {f"{parent}.{k}" if parent else k: k for k in keys}
    candidates = {**(nested or {}), **siblings}
    hint = did_you_mean(leaf, set(candidates.values()))
    if hint:
        target = hint[len(" Did you mean ") : -1]
        hint = f" Did you mean {next(path for path, name in candidates.items() if name == target)}?"
    raise ConfigError(
        field,
        value,
        f"a key declared in {source}: {', '.join(keys)}",
        f"No config file has this key, so nothing would read it.{hint}",
    )
