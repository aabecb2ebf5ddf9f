"""Checks of a sweep's Hydra plugins, before any job starts: installed, reachable, a usable search space.

Hydra finds a missing launcher or sweeper only after composing (``Could not find
'hydra/launcher/joblib'``), an unreachable Ray address only inside the launcher (after a long
``ray.init`` timeout), and an empty or non-numeric Optuna search space only in the sweeper. These
checks read the command line's ``hydra/...`` and ``hydra.*`` overrides, which the config preflight of
``sim/cli.py`` skips, and say what to install or fix. :func:`search_space_values` also returns the
values of the search space's bounds and choices, which the preflight validates like any sweep value.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
from collections.abc import Sequence
from typing import Any

from sim.errors import ConfigError
from sim.validation import choice

EXTRA = "gossipsoup[sweeps]"
#: (group, option) -> (module of the plugin, package that installs it)
PLUGINS: dict[tuple[str, str], tuple[str, str]] = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    ("hydra/launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
    ("hydra/launcher", "ray_cluster"): ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
    ("hydra/launcher", "ray_aws"): ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    ("hydra/launcher", "rq"): ("hydra_plugins.hydra_rq_launcher", "hydra-rq-launcher"),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
    ("hydra/sweeper", "ax"): ("hydra_plugins.hydra_ax_sweeper", "hydra-ax-sweeper"),
    ("hydra/sweeper", "nevergrad"): ("hydra_plugins.hydra_nevergrad_sweeper", "hydra-nevergrad-sweeper"),
}
BUILT_IN = {"hydra/launcher": ("basic",), "hydra/sweeper": ("basic",)}
RAY_ADDRESS_KEY = "hydra.launcher.ray.init.address"
SEARCH_PREFIX = "hydra.sweeper.params."


def _pairs(args: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for arg in args:
        if "=" in arg:
            key, value = arg.split("=", 1)
            out.append((key.lstrip("+~").removeprefix("override "), value))
    return out


def check_plugins(args: Sequence[str]) -> None:
    """ConfigError for a launcher or sweeper that does not exist or is not installed (naming the extra)."""
    for key, value in _pairs(args):
        if key not in BUILT_IN or value in BUILT_IN[key]:
            continue
        known = sorted({*BUILT_IN[key], *(o for g, o in PLUGINS if g == key)})
        if (key, value) not in PLUGINS:
            choice(key, value, known, "(Hydra's plugins this project knows; docs/sweeps.md.)")
        module, package = PLUGINS[(key, value)]
        if importlib.util.find_spec("hydra_plugins") is None or importlib.util.find_spec(module) is None:
            raise ConfigError(
                key,
                value,
                "a plugin that is installed",
                f"Hydra's {value} {key.split('/')[1]} comes with {package}. Install it with: "
                f"pip install '{EXTRA}' (or pip install {package}).",
            )


def check_ray_address(args: Sequence[str], timeout: float = 3.0) -> None:
    """ConfigError when the Ray cluster the launcher should join cannot be reached (a TCP connect, no Ray)."""
    pairs = dict(_pairs(args))
    launcher = pairs.get("hydra/launcher")
    address: Any = pairs.get(RAY_ADDRESS_KEY)
    if launcher == "ray_cluster" and address in (None, "null"):
        address = os.environ.get("RAY_ADDRESS")
        if not address:
            raise ConfigError(
                RAY_ADDRESS_KEY,
                None,
                "the head's address HOST:PORT (or set RAY_ADDRESS)",
                "hydra/launcher=ray_cluster joins a running Ray cluster; "
                "hydra/launcher=ray starts a local one instead.",
            )
    if address in (None, "null", "auto", "local"):
        return
    hostport = str(address).removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(RAY_ADDRESS_KEY, address, "HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            RAY_ADDRESS_KEY,
            address,
            "the address of a running Ray head that this machine can reach",
            f"Connecting to {host}:{port} failed ({exc}). Start one with: ray start --head --port {port}",
        ) from None


def _number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def search_space_values(args: Sequence[str]) -> list[str]:
    """``key=value`` overrides for the bounds and choices of every ``hydra.sweeper.params.KEY=...``.

    ConfigError for an empty search space (``optuna`` sweeper with no parameter to tune and no sweep
    on the command line), an empty choice, a range or interval whose bounds are not numbers or are
    reversed. Categorical choices of config options (``strategy=fedavg,fedadam``) are allowed; whether
    a value suits its key is left to the config check the returned overrides go through.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    pairs = _pairs(args)
    # the search space: hydra.sweeper.params.KEY=SPEC (quoted on a command line, as in a config file)
    # and, as Hydra's sweepers read them, the sweeps among the command line's own overrides
    space = [(k.removeprefix(SEARCH_PREFIX), v.strip("'\"")) for k, v in pairs if k.startswith(SEARCH_PREFIX)]
    for key, spec in pairs:
        if key.startswith("hydra") or not any(mark in spec for mark in (",", "(")):
            continue
        try:
            if parser.parse_override(f"{key}={spec}").is_sweep_override():
                space.append((key, spec))
        except HydraException:
            continue  # a malformed override: the config preflight reports it
    if dict(pairs).get("hydra/sweeper") == "optuna" and not space:
        raise ConfigError(
            "hydra.sweeper.params",
            {},
            "at least one key to tune, e.g. 'train.lr=tag(log, interval(0.001, 1))' on the command line",
            "The search space is empty.",
        )
    values: list[str] = []
    for key, spec in space:
        field = key
        try:
            sweep = parser.parse_override(f"{key}={spec}").value()
        except HydraException as exc:
            raise ConfigError(
                field,
                spec,
                "interval(LO, HI), range(START, STOP[, STEP]) or choice(A, B, ...)",
                " ".join(str(exc).split()),
            ) from None
        if isinstance(sweep, IntervalSweep):
            lo, hi = sweep.start, sweep.end
            if lo is None or hi is None or not (_number(lo) and _number(hi)) or float(lo) >= float(hi):
                raise ConfigError(field, spec, "interval(LO, HI) with numbers LO < HI")
            as_int = "int" in sweep.tags  # tag(int, interval(...)): Optuna draws integers
            values += [f"{key}={int(lo) if as_int else lo}", f"{key}={int(hi) if as_int else hi}"]
        elif isinstance(sweep, RangeSweep):
            start, stop, step = sweep.start or 0, sweep.stop or 0, sweep.step if sweep.step is not None else 1
            count = math.ceil((float(stop) - float(start)) / float(step)) if float(step) != 0 else 0
            if count <= 0:
                raise ConfigError(field, spec, "a range with at least one value", "This range is empty.")
            values += [f"{key}={start}", f"{key}={start + step * (count - 1)}"]
        elif isinstance(sweep, ChoiceSweep):
            if not sweep.list:
                raise ConfigError(field, spec, "choice(A, B, ...) with at least one value", "The choice is empty.")
            values += [f"{key}={v}" for v in sweep.list]
        else:
            values.append(f"{key}={spec}")
    return values
