"""Where the ray backend's actors live: connecting to Ray, checking the address, sizing the pool.

Three cases, in this order:

* a Ray that this process already initialised (a test session, a notebook, a program that called
  ``ray.init`` itself) is used as it is, and never shut down by the backend;
* ``backend.address=null`` starts a new local Ray with this machine's CPUs and GPUs (always a new
  one, whatever other Ray runs here or whatever a stale session file names), which the backend shuts
  down at the end of the run;
* any other address connects to a running cluster: ``auto`` (the cluster ``ray start`` began on this
  machine), ``HOST:PORT`` (the head's GCS port, 6379 by default) or ``ray://HOST:PORT`` (the head's
  Ray Client server, 10001 by default).

An address is first probed with a plain TCP connection (a few seconds at most), so a wrong host or
port is a clear error at once (:class:`ConnectionFailed`, a ``ConfigError`` saying "connection
refused at HOST:PORT" or "timed out" and what to check), before Ray's own retries, which can take
minutes.

Nothing here imports Ray at module level: the address check runs while the config is validated.
"""

from __future__ import annotations

import logging
import math
import socket
import warnings
from typing import Any

from sim.errors import ConfigError, GossipsoupError

#: Ray settings for a Ray this backend starts itself: a round's models (a few hundred KB to a few MB)
#: then travel inline with the task reply instead of through the shared-memory store, which costs
#: ~2 ms instead of ~8 ms per actor and round here. A cluster started elsewhere keeps its own settings.
LOCAL_SYSTEM_CONFIG = {"max_direct_call_object_size": 4 << 20}
PROBE_TIMEOUT_S = 5.0
CONNECT_HINT = (
    "Check that a Ray head runs there (`ray start --head`, docs/ray.md) and that no firewall blocks the "
    "port; ray://HOST:PORT needs the head's Ray Client port (10001 by default), HOST:PORT its GCS port "
    "(6379 by default). backend.address=null starts a local Ray on this machine instead."
)
ADDRESS_HELP = (
    "null (start a local Ray), auto (the cluster `ray start` began on this machine), HOST:PORT of a "
    "running head's GCS (6379 by default) or ray://HOST:PORT of its Ray Client server (10001 by default)"
)


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``HOST:PORT`` or ``ray://HOST:PORT`` address; None for ``auto`` / ``local``."""
    rest = address.removeprefix("ray://")
    if rest in ("auto", "local"):
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("backend.address", address, ADDRESS_HELP, "It has no valid HOST:PORT.")
    return host.strip("[]"), int(port)


class ConnectionFailed(ConfigError):
    """``backend.address`` is well formed but Ray cannot be reached there: says what failed and what to check.

    A ConfigError (exit code 2, no result files), worded as a failed connection rather than a
    disallowed value, since the same address works once the head is up.
    """

    def __init__(self, address: str, what: str):
        GossipsoupError.__init__(self, f"backend.address={address!r}: cannot connect to Ray: {what}. {CONNECT_HINT}")
        self.field, self.value, self.allowed = "backend.address", address, ADDRESS_HELP


def _socket_failure(host: str, port: int, exc: OSError, timeout: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused at {host}:{port} (nothing listens on that port)"
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
        return f"connection to {host}:{port} timed out after {timeout:g} s (no answer from that host)"
    if isinstance(exc, socket.gaierror):
        return f"the host {host!r} cannot be resolved ({exc.strerror or exc})"
    return f"connecting to {host}:{port} failed ({exc.strerror or exc})"


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """ConnectionFailed unless something accepts a TCP connection at the address's host and port."""
    target = host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionFailed(address, _socket_failure(*target, exc, timeout)) from None


def _init_failure(exc: Exception) -> str:
    """What ``ray.init`` said, in one line; its messages can be empty or many lines of traceback."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    said = lines[0] if lines else "no message"
    return f"the port answers, but ray.init failed: {type(exc).__name__}: {said}"


def connect(address: str | None, runtime_env: dict[str, Any] | None) -> bool:
    """Make sure this process is connected to Ray; True when this call started it (so close must stop it).

    ``None`` starts a new local Ray with ``address="local"``: a plain ``ray.init()`` would instead join
    whatever cluster ``ray start`` last recorded on this machine (another user's head, or a stale
    session file of one that is gone), which fails or, worse, runs the job somewhere else.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator env vars
        if address is None:
            ray.init(address="local", include_dashboard=False, _system_config=LOCAL_SYSTEM_CONFIG, **kwargs)
            return True
        probe_address(address)
        warnings.simplefilter("ignore", UserWarning)  # Ray Client's own timeout notice: the error below says it
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # anything that goes wrong while connecting is about the address
            raise ConnectionFailed(address, _init_failure(exc)) from None
    return True


def check_gpus(resources: dict[str, float], num_gpus: float, device: str, where: str = "the Ray cluster") -> None:
    """ConfigError when the config asks for GPUs that ``where`` (the cluster, or this machine) does not have."""
    gpus = resources.get("GPU", 0.0)
    if gpus > 0:
        return
    has = f"{where.capitalize()} has {resources.get('CPU', 0.0):g} CPU(s) and no GPU"
    if where == "this machine":
        has += " that torch can use"
    if num_gpus > 0:
        raise ConfigError(
            "backend.num_gpus",
            num_gpus,
            f"0 on {where} (it has no GPU)",
            f"{has}. Set backend.num_gpus=0; the actors then train on the CPU.",
        )
    if device == "cuda":
        raise ConfigError(
            "backend.device",
            device,
            f"auto or cpu on {where} (it has no GPU)",
            f"{has}. device=auto uses a GPU where an actor holds one and the CPU otherwise.",
        )


def pool_size(
    num_actors: int | None, num_cpus: float, num_gpus: float, resources: dict[str, float], reserved_gpus: float = 0.0
) -> int:
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
            gpu_bound = num_gpus > 0 and limits[-1] < 1
            field, value = ("backend.num_gpus", num_gpus) if gpu_bound else ("backend.num_cpus", num_cpus)
            raise ConfigError(field, value, f"a share that fits the cluster's {what}", "Not even one actor fits.")
        return fit
    if num_actors > fit:
        raise ConfigError(
            "backend.num_actors",
            num_actors,
            f"at most {fit} on this cluster, or null",
            f"The cluster has {what}; each actor takes {num_cpus:g} CPU(s) and {num_gpus:g} GPU(s), "
            "and actors that do not fit would wait forever.",
        )
    return num_actors
