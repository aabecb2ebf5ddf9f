"""The ``federated.schedule`` switch and the ``async_fl`` block, checked before any work starts.

Kept apart from the event loop so that the config check (which every job of a sweep runs before the
first one starts) imports no torch-heavy module and never builds an experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import ConfigError
from sim.validation import choice, integer, number

SCHEDULES = ("sync", "async")
ALGORITHMS = ("fedbuff", "fedasync")
STALENESS = ("constant", "polynomial", "hinge")


def schedule_of(cfg) -> str:
    """``sync`` or ``async``: how a federated run schedules its clients (``federated.schedule``)."""
    block = cfg.get("federated") or {}
    return choice("federated.schedule", block.get("schedule", "sync"), SCHEDULES)


def is_async_fl(cfg) -> bool:
    """Whether the run is asynchronous FL (``mode=federated federated.schedule=async``)."""
    return cfg.get("mode") == "federated" and schedule_of(cfg) == "async"


def staleness_weight(kind: str, staleness: float, a: float, b: float) -> float:
    """Xie et al.'s s(t - tau), with ``staleness`` = server updates since the client's download (0: fresh).

    constant: 1; polynomial: ``(staleness + 1) ** -a``; hinge: 1 while ``staleness <= b``, else
    ``1 / (a (staleness - b) + 1)``. FedBuff's ``1 / sqrt(1 + staleness)`` is polynomial with a = 0.5.
    """
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((staleness + 1.0) ** -a)
    return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)


@dataclass(frozen=True)
class AsyncFLConfig:
    algorithm: str = "fedbuff"
    concurrency: int = 10
    buffer_size: int = 5
    server_lr: float = 1.0
    alpha: float = 0.6
    staleness: str = "polynomial"
    staleness_a: float = 0.5
    staleness_b: float = 4.0

    def weight(self, staleness: float) -> float:
        return staleness_weight(self.staleness, staleness, self.staleness_a, self.staleness_b)

    @classmethod
    def from_config(cls, block, num_clients: int | None = None) -> AsyncFLConfig:
        """Validate the ``async_fl`` block; ``num_clients`` bounds the concurrency (one task per client at a time).

        Without ``num_clients`` (a synchronous run) every value is checked but the bound, so that a sweep
        refuses a bad value whichever schedule its first job runs.
        """
        block = block if block is not None else {}
        get = block.get
        bound = "" if num_clients is None else f", at most num_clients = {num_clients} (one task per client at a time)"
        concurrency = integer(
            "async_fl.concurrency", get("concurrency", 10), 1, num_clients, allowed=f"an integer >= 1{bound}"
        )
        return cls(
            algorithm=choice("async_fl.algorithm", get("algorithm", "fedbuff"), ALGORITHMS),
            concurrency=concurrency,
            buffer_size=integer("async_fl.buffer_size", get("buffer_size", 5), 1),
            server_lr=number(
                "async_fl.server_lr", get("server_lr", 1.0), 0, lo_open=True, allowed="a finite number > 0"
            ),
            alpha=number("async_fl.alpha", get("alpha", 0.6), 0, 1, lo_open=True, allowed="a number in (0, 1]"),
            staleness=choice("async_fl.staleness", get("staleness", "polynomial"), STALENESS),
            staleness_a=number(
                "async_fl.staleness_a", get("staleness_a", 0.5), 0, allowed="a finite number >= 0 (0: no decay)"
            ),
            staleness_b=number("async_fl.staleness_b", get("staleness_b", 4), 0, allowed="a finite number >= 0"),
        )


def check_async_fl_run(cfg) -> AsyncFLConfig | None:
    """The run's :class:`AsyncFLConfig` (None for a synchronous run); ConfigError for what async FL cannot run.

    ``federated.schedule`` and the ``async_fl`` block are checked in every mode and schedule (a sweep
    refuses a bad value whichever job runs first). Refused with an asynchronous schedule: attacks, round
    deadlines, over-selection and differential privacy (before the DP wrapper asks for a participation
    pattern, which asynchronous FL does not use).
    """
    schedule_of(cfg)
    AsyncFLConfig.from_config(cfg.get("async_fl"))
    if not is_async_fl(cfg):
        return None
    conf = AsyncFLConfig.from_config(cfg.get("async_fl"), int(cfg.num_clients))
    for group, why in (
        ("attack", "Byzantine clients run in synchronous FL and gossip."),
        ("dp", "The privacy accountants count synchronous rounds of sampled clients."),
    ):
        name = (cfg.get(group) or {}).get("name", "none")
        if name != "none":
            raise ConfigError(f"{group}.name", name, "none with federated.schedule=async", why)
    system = cfg.get("system") or {}
    for key in ("deadline_s", "over_selection"):
        if system.get(key) is not None:
            raise ConfigError(
                f"system.{key}",
                system.get(key),
                "null with federated.schedule=async",
                "Deadlines and over-selection close synchronous rounds; asynchronous FL has none.",
            )
    return conf


def check_async_fl_strategy(cfg, strategy) -> None:
    """Refuse the rules asynchronous FL cannot run: those that change local training or need per-client
    extras (the loop passes no correction and computes no extras), any rule but fedavg under FedAsync
    (whose update is its own mixing of one model; server rules aggregate FedBuff's buffer), and a robust
    rule that does not tolerate a buffer of ``buffer_size`` models."""
    conf = check_async_fl_run(cfg)
    if conf is None:
        return
    if strategy.client_side or strategy.requires:
        why = "adds a term to every local gradient" if strategy.client_side else f"needs {sorted(strategy.requires)}"
        raise ConfigError(
            "federated.schedule",
            "async",
            "sync for this strategy",
            f"Strategy {strategy.name} {why}; asynchronous FL trains clients without it.",
        )
    if strategy.name == "known_probability":
        raise ConfigError(
            "strategy",
            strategy.name,
            "a rule that needs no participation probabilities with federated.schedule=async",
            "known_probability weights by a participation pattern's p_n; asynchronous FL draws idle clients instead.",
        )
    if conf.algorithm == "fedasync" and strategy.name != "fedavg":
        raise ConfigError(
            "strategy",
            strategy.name,
            "fedavg with async_fl.algorithm=fedasync",
            "FedAsync mixes each client model into the global one by itself; server rules aggregate "
            "FedBuff's buffer (async_fl.algorithm=fedbuff).",
        )
    if conf.algorithm == "fedbuff":
        strategy.check_tolerance(conf.buffer_size, 0)
