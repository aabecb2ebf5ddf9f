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

# Config groups that only one mode reads: FL is gossip on a fixed star (``topology`` says nothing more),
# gossip nodes all take part every round (no ``participation``) and refuse every DP layer (``dp`` must be
# none), and a synchronous gossip run never reads the asynchronous schedule's clock, delays and churn.
GOSSIP_ONLY_GROUPS = frozenset({"gossip", "topology"})
FL_ONLY_GROUPS = frozenset({"participation", "dp", "federated", "async_fl"})
# The system model (docs/system.md): gossip edges are gossip's; the server's link is FL's; a round deadline and
# over-selection are synchronous FL's; the async_fl block is read only with federated.schedule=async.
GOSSIP_ONLY_PREFIXES = ("system.links.",)
FL_ONLY_KEYS = frozenset({"system.server_bandwidth", "system.deadline_s", "system.over_selection"})
SYNC_FL_ONLY_KEYS = frozenset({"system.deadline_s", "system.over_selection"})
ASYNC_ONLY = frozenset(
    f"gossip.{k}"
    for k in (
        "clock",
        "wake_interval",
        "protocol",
        "delay",
        "delay_value",
        "delay_low",
        "churn",
        "online_prob",
        "mean_online",
        "mean_offline",
        "eval_interval",
        "batch_exchanges",
    )
)


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


def applies(key: str, config: dict) -> bool:
    """Whether the run reads ``key`` (dotted) in its mode; a config without ``mode`` keeps every key."""
    mode = config.get("mode")
    group = key.split(".", 1)[0]
    if mode == "federated":
        federated = config.get("federated")
        schedule = federated.get("schedule", "sync") if isinstance(federated, dict) else "sync"
        if schedule == "async":
            own = key not in SYNC_FL_ONLY_KEYS
        else:
            own = group != "async_fl"
        return own and group not in GOSSIP_ONLY_GROUPS and not key.startswith(GOSSIP_ONLY_PREFIXES)
    if mode == "gossip":
        gossip = config.get("gossip")
        schedule = gossip.get("schedule", "sync") if isinstance(gossip, dict) else "sync"
        fl_only = group in FL_ONLY_GROUPS or key in FL_ONLY_KEYS
        return not fl_only and (schedule == "async" or key not in ASYNC_ONLY)
    return True


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
    """Keys whose values differ among the runs that have them, less those a differing ``<group>.name`` explains.

    A key that exists only for some runs (``participation.q`` for markov, ``gossip.*`` in gossip runs) is
    compared among those runs only: that the others lack it is what their group option or mode already
    says. A key that takes one value within each option of a differing group (``topology.mixing`` per
    topology) would only repeat ``<group>.name``.
    """
    keys = sorted({k for f in flats for k in f})
    differ = [k for k in keys if len({_canonical(f[k]) for f in flats if k in f}) > 1]
    named = {k.rsplit(".", 1)[0] for k in differ if k.endswith(".name")}

    def explained(key: str) -> bool:
        group = key.rsplit(".", 1)[0] if "." in key else ""
        if key.endswith(".name") or group not in named:
            return False
        per_option: dict[str, set[str]] = defaultdict(set)
        for f in flats:
            if key in f:
                per_option[_canonical(f.get(f"{group}.name", MISSING))].add(_canonical(f[key]))
        return all(len(v) == 1 for v in per_option.values())

    return [k for k in differ if not explained(k)]


def _label(flat: dict[str, object], keys: list[str], unset: frozenset[str] = frozenset()) -> tuple[str, tuple]:
    """Keys the run lacks are left out of its label, except those in ``unset`` (shown as ``k=unset``)."""
    values = [flat.get(k, MISSING) for k in keys]
    label = ", ".join(
        f"{k}={fmt_value(v)}" for k, v in zip(keys, values, strict=True) if v is not MISSING or k in unset
    )
    return label, tuple(_sort_value(v) for v in values)


def _distinct_labels(flats: list[dict[str, object]], empty: str) -> list[tuple[str, tuple]]:
    """Labels from the differing keys; where two runs with different values would share one, the keys
    that tell them apart are added (a key one of them lacks shows as ``unset``)."""
    keys = differing_keys(flats)
    labels = [_label(f, keys)[0] for f in flats]
    clash: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        clash[label].append(i)
    extra: set[str] = set()
    for idx in clash.values():
        if len({_canonical(flats[i]) for i in idx}) > 1:
            members = [flats[i] for i in idx]
            every = {k for f in members for k in f}
            extra |= {k for k in every if len({_canonical(f.get(k, MISSING)) for f in members}) > 1}
    keys = sorted({*keys, *extra})
    out = []
    for f in flats:
        label, key = _label(f, keys, frozenset(extra))
        out.append((label or empty, key))
    return out


def setting_labels(configs: list[dict]) -> list[tuple[str, tuple]]:
    """(label, sort key) per run; the label is "default" when no setting key differs.

    Keys that do not apply to a run's mode (``gossip.*`` and ``topology.*`` in FL, ``participation.*`` and
    ``dp.*`` in gossip, the asynchronous schedule's keys in synchronous gossip) are not compared or listed for it.
    """
    flats = [{k: v for k, v in flatten(c).items() if not ignored(k) and applies(k, c)} for c in configs]
    return _distinct_labels(flats, "default")


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
        for i, (opts, key) in zip(idx, _distinct_labels([options[i] for i in idx], ""), strict=True):
            out[i] = (f"{name}({opts})" if opts else name, (name, key))
    return out
