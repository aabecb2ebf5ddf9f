"""Strategy and setting labels: name runs by what actually differs between them.

The config of each run is flattened to dotted keys (``partition.alpha``). A run's *setting* is
the values of the non-strategy keys that differ across all runs of the report; its *strategy* is
``strategy.name`` plus the strategy options that differ between the runs of that same strategy
(so ``fedavg`` stays ``fedavg`` when compared with ``fedadam(server_lr=0.1)``).
"""

from __future__ import annotations

import json
from collections import defaultdict

# Keys that never make two runs a different setting: the seed (the thing averaged over), and
# bookkeeping that does not change what is computed.
IGNORED_TOP = frozenset({"seed", "hydra", "progress", "save_model", "strategy"})
# Matched against a key's last part anywhere in the config: derived seeds (``partition.seed``,
# ``data_seed``, often ``${seed}``) and machine-local paths.
IGNORED_LAST = frozenset({"seed", "dir", "path", "root"})
IGNORED_LAST_SUFFIXES = ("_seed", "_dir", "_path")
# Strategy entries that are not options: the name itself and Hydra's instantiation keys.
STRATEGY_NOT_OPTIONS = frozenset({"name"})

MISSING = object()  # a key that one run's config lacks


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def ignored(key: str) -> bool:
    parts = key.split(".")
    last = parts[-1]
    return (
        parts[0] in IGNORED_TOP
        or last in IGNORED_LAST
        or last.endswith(IGNORED_LAST_SUFFIXES)
        or last.startswith("_")  # _target_, _partial_, ...
    )


def fmt_value(v: object) -> str:
    if v is MISSING:
        return "unset"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)
    return str(v)


def _canonical(v: object) -> str:
    return "\0missing" if v is MISSING else json.dumps(v, sort_keys=True, default=str)


def _sort_value(v: object) -> tuple:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (2, 0.0, "") if v is MISSING else (1, 0.0, fmt_value(v))


def differing_keys(flats: list[dict[str, object]]) -> list[str]:
    """Keys whose values differ, less those a differing ``<group>.name`` already explains.

    A key that exists only for some options of a group (``participation.q`` for markov) differs
    whenever the option does; naming it again ("q=unset") would only repeat ``participation.name``.
    """
    keys = sorted({k for f in flats for k in f})
    differ = [k for k in keys if len({_canonical(f.get(k, MISSING)) for f in flats}) > 1]
    named = {k.rsplit(".", 1)[0] for k in differ if k.endswith(".name")}

    def explained(key: str) -> bool:
        group = key.rsplit(".", 1)[0] if "." in key else ""
        if key.endswith(".name") or group not in named:
            return False
        # explained when, within each option of the group, the key takes one value
        per_option: dict[str, set[str]] = defaultdict(set)
        for f in flats:
            per_option[_canonical(f.get(f"{group}.name", MISSING))].add(_canonical(f.get(key, MISSING)))
        return all(len(v) == 1 for v in per_option.values())

    return [k for k in differ if not explained(k)]


def _label(flat: dict[str, object], keys: list[str]) -> tuple[str, tuple]:
    values = [flat.get(k, MISSING) for k in keys]
    label = ", ".join(f"{k}={fmt_value(v)}" for k, v in zip(keys, values, strict=True))
    return label, tuple(_sort_value(v) for v in values)


def setting_labels(configs: list[dict]) -> list[tuple[str, tuple]]:
    """(label, sort key) per run; the label is "default" when no setting key differs."""
    flats = [{k: v for k, v in flatten(c).items() if not ignored(k)} for c in configs]
    keys = differing_keys(flats)
    out = []
    for f in flats:
        label, key = _label(f, keys)
        out.append((label or "default", key))
    return out


def strategy_name(config: dict) -> str:
    s = config.get("strategy")
    if isinstance(s, dict):
        return str(s.get("name", "unknown"))
    return "unknown" if s is None else str(s)


def strategy_labels(configs: list[dict]) -> list[tuple[str, tuple]]:
    """(label, sort key) per run: ``name`` or ``name(opt=value, ...)``."""
    names = [strategy_name(c) for c in configs]
    options = []
    for c in configs:
        s = c.get("strategy")
        flat = flatten(s) if isinstance(s, dict) else {}
        options.append({k: v for k, v in flat.items() if k not in STRATEGY_NOT_OPTIONS and not ignored(k)})
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(names):
        by_name[n].append(i)
    out: list[tuple[str, tuple]] = [("", ())] * len(configs)
    for name, idx in by_name.items():
        keys = differing_keys([options[i] for i in idx])
        for i in idx:
            opts, key = _label(options[i], keys)
            out[i] = (f"{name}({opts})" if opts else name, (name, key))
    return out
