"""Where the ray backend's actors live: connecting to Ray, checking the address, sizing the pool.

Three cases, in this order:

* a Ray that this process already initialised (a test session, a notebook, a program that called
  ``ray.init`` itself) is used as it is, and never shut down by the backend;
* ``backend.address=null`` starts a local Ray with this machine's CPUs and GPUs, which the backend
  shuts down at the end of the run;
* any other address connects to a running cluster: ``auto`` (the cluster ``ray start`` began on this
  machine), ``HOST:PORT`` (the head's GCS port, 6379 by default) or ``ray://HOST:PORT`` (the head's
  Ray Client server, 10001 by default).

An address is first probed with a plain TCP connection (a few seconds at most), so a wrong host or
port is a clear ``ConfigError`` at once, before Ray's own retries, which can take minutes.

Nothing here imports Ray at module level: the address check runs while the config is validated.
"""

from __future__ import annotations

import logging
import math
import socket
import warnings
from typing import Any

from sim.errors import ConfigError

#: Ray settings for a Ray this backend starts itself: a round's models (a few hundred KB to a few MB)
#: then travel inline with the task reply instead of through the shared-memory store, which costs
#: ~2 ms instead of ~8 ms per actor and round here. A cluster started elsewhere keeps its own settings.
LOCAL_SYSTEM_CONFIG = {"max_direct_call_object_size": 4 << 20}
PROBE_TIMEOUT_S = 5.0
ADDRESS_HELP = ("null (start a local Ray), auto (the cluster `ray start` began on this machine), HOST:PORT of a "
                "running head's GCS (6379 by default) or ray://HOST:PORT of its Ray Client server (10001 by default)")


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``HOST:PORT`` or ``ray://HOST:PORT`` address; None for ``auto`` / ``local``."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    if rest in ("auto", "local"):
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("backend.address", address, ADDRESS_HELP, "It has no valid HOST:PORT.")
    return host.strip("[]"), int(port)


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """ConfigError unless something accepts a TCP connection at the address's host and port."""
    target = host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError("backend.address", address, ADDRESS_HELP,
                          f"Nothing answers at {target[0]}:{target[1]} ({exc.strerror or exc}). Start a head there "
                          "with `ray start --head` (see docs/ray.md), or leave backend.address=null to run on "
                          "this machine.") from None


def connect(address: str | None, runtime_env: dict[str, Any] | None) -> bool:
    """Make sure this process is connected to Ray; True when this call started it (so close must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator env vars
        if address is None:
            ray.init(include_dashboard=False, _system_config=LOCAL_SYSTEM_CONFIG, **kwargs)
            return True
        probe_address(address)
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # anything that goes wrong while connecting is about the address
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError("backend.address", address, ADDRESS_HELP,
                              f"Ray could not connect: {first}") from None
    return True


def check_gpus(resources: dict[str, float], num_gpus: float, device: str) -> None:
    """ConfigError when the config asks for GPUs that the cluster does not have."""
    gpus = resources.get("GPU", 0.0)
    if gpus > 0:
        return
    if num_gpus > 0:
        raise ConfigError("backend.num_gpus", num_gpus, "0 on a Ray cluster without GPUs",
                          "The cluster has no GPU (its resources: "
                          f"{', '.join(f'{k}={v:g}' for k, v in sorted(resources.items()) if k in ('CPU', 'GPU'))}). "
                          "Set backend.num_gpus=0; the actors then train on the CPU.")
    if device == "cuda":
        raise ConfigError("backend.device", device, "auto or cpu on a Ray cluster without GPUs",
                          "device=auto uses a GPU where an actor holds one and the CPU otherwise.")


def pool_size(num_actors: int | None, num_cpus: float, num_gpus: float, resources: dict[str, float],
              reserved_gpus: float = 0.0) -> int:
    """How many training actors to start: ``num_actors``, or as many as the whole cluster's CPUs/GPUs hold.

    Sized from the cluster's total, not from what is free this instant, so that the same config gives
    the same pool; actors that do not fit yet (another pool is still shutting down) wait for it.
    """
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0) - reserved_gpus
    limits = [math.floor(cpus / num_cpus + 1e-9)]
    if num_gpus > 0:
        limits.append(math.floor(max(gpus, 0.0) / num_gpus + 1e-9))
    fit = min(limits)
    what = f"{cpus:g} CPU(s) and {max(gpus, 0.0):g} GPU(s)" + (" after the aggregator's share" if reserved_gpus else "")
    if num_actors is None:
        if fit < 1:
            field, value = ("backend.num_gpus", num_gpus) if num_gpus > 0 and limits[-1] < 1 else ("backend.num_cpus", num_cpus)
            raise ConfigError(field, value, f"a share that fits the cluster's {what}",
                              "Not even one actor fits.")
        return fit
    if num_actors > fit:
        raise ConfigError("backend.num_actors", num_actors, f"at most {fit} on this cluster, or null",
                          f"The cluster has {what}; each actor takes {num_cpus:g} CPU(s) and {num_gpus:g} GPU(s), "
                          "and actors that do not fit would wait forever.")
    return num_actors
