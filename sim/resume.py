"""Crash-safe runs (FL and synchronous gossip): checkpoints of the whole run state, resume, stopping on a signal.

A checkpoint holds what a later round reads and nothing else (docs/design.md explains each):

- ``round``: the last completed round;
- ``params``: the global model after it (synchronous gossip: every node's model ``[N, P]``);
- ``strategy``: the strategy's state (server optimizer moments and step, FedAU's intervals, MIFA's
  memory, ...), stored as data (:mod:`sim.run_state`); in gossip every node's state and the extras
  of the last training;
- ``rows``: the metrics rows so far, so that ``metrics.csv`` continues exactly;
- ``config``: the resolved config of the run, which a resume must match.

The participation process (Markov chains, cyclic phases) is not stored: it is a function of the seed
and the rounds, so a resume replays ``sample`` for the completed rounds, which reproduces its state
exactly at the cost of a few microseconds per round. Every other random draw (batches, augmentation,
dropout) comes from per-round, per-client streams and needs no state at all.

The file is one safetensors file written atomically (temporary file, then rename), so a SIGKILL
during the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .run_state import load_state, save_state
from .validation import is_int

CHECKPOINT = "checkpoint.safetensors"
#: config keys a resume may change: the run's length (longer only), the progress bar, resume itself
RESUME_MAY_CHANGE = ("rounds", "progress", "resume")


def checkpoint_settings(cfg) -> tuple[int | None, int | None]:
    """``(every, keep_every)`` from the ``checkpoint`` block, each null or an integer >= 1."""
    block = cfg.get("checkpoint") or {}
    values = []
    for key in ("every", "keep_every"):
        value = block.get(key)
        if value is not None and not (is_int(value) and value >= 1):
            raise ConfigError(f"checkpoint.{key}", value, "null or an integer >= 1 (rounds)")
        values.append(value)
    asynchronous = cfg.get("mode") == "gossip" and (cfg.get("gossip") or {}).get("schedule") == "async"
    if asynchronous and (values[0] is not None or cfg.get("resume")):
        raise ConfigError(
            "checkpoint.every" if values[0] is not None else "resume",
            values[0] if values[0] is not None else cfg.get("resume"),
            "null for gossip.schedule=async",
            "Checkpoints and resume cover federated runs and synchronous gossip; asynchronous gossip "
            "(its event queue and messages in flight) cannot be resumed yet.",
        )
    return values[0], values[1]


def write_checkpoint(out: Path, state: dict[str, Any], keep: bool) -> None:
    """The latest checkpoint (atomically replaced), plus a kept copy of this round when asked."""
    save_state(out / CHECKPOINT, state)
    if keep:
        save_state(out / f"checkpoint_round{state['round']}.safetensors", state)


def read_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The latest readable checkpoint of ``run_dir``: the latest file, else the newest kept one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError("resume", str(run_dir), "the folder of a run to continue", "No such folder exists.")
    kept = sorted(run_dir.glob("checkpoint_round*.safetensors"), key=lambda p: -_round_of(p))
    candidates = [p for p in [run_dir / CHECKPOINT, *kept] if p.is_file()]
    if not candidates:
        raise ConfigError(
            "resume",
            str(run_dir),
            "the folder of a run that wrote a checkpoint",
            f"It has no {CHECKPOINT}: the run was stopped before its first checkpoint (checkpoint.every), "
            "or it was not run with checkpoints; start it again instead.",
        )
    problems = []
    for path in candidates:
        try:
            state = load_state(path)
        except ConfigError as err:
            problems.append(str(err))
            continue
        if isinstance(state, dict) and {"round", "params", "strategy", "rows", "config"} <= state.keys():
            return state
        problems.append(f"{path.name} is not a run checkpoint")
    raise ConfigError("resume", str(run_dir), "a folder with a readable checkpoint", " ".join(problems))


def _round_of(path: Path) -> int:
    digits = path.stem.removeprefix("checkpoint_round")
    return int(digits) if digits.isdigit() else -1


def resumed_config(saved: dict[str, Any], given: dict[str, Any], overridden: list[str], done: int) -> dict[str, Any]:
    """The saved config with the allowed changes the command line made; ConfigError naming any other.

    ``overridden`` are the keys the user set on the command line; each must keep its saved value,
    except ``rounds`` (at least the rounds already done: a finished run may be extended).
    """
    changed = []
    for key in overridden:
        top = key.lstrip("+~").split(".")[0].split("@")[0]
        if top in RESUME_MAY_CHANGE or top == "hydra":
            continue
        if _lookup(saved, key.lstrip("+~")) != _lookup(given, key.lstrip("+~")):
            changed.append(key.lstrip("+~"))
    if changed:
        raise ConfigError(
            "resume",
            given.get("resume"),
            "the command of the run it continues (only rounds may grow)",
            f"These settings differ from the saved run: {', '.join(sorted(changed))}.",
        )
    rounds = given.get("rounds", saved["rounds"]) if "rounds" in overridden else saved["rounds"]
    if not (is_int(rounds) and rounds >= done):
        raise ConfigError("rounds", rounds, f"at least {done}, the rounds the saved run has done")
    return {**saved, "rounds": rounds}


def _lookup(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class StopRequest:
    """Set by SIGINT / SIGTERM; the loop checks it at each round boundary."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn SIGINT and SIGTERM into a :class:`StopRequest` for the duration (main thread only)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: object) -> None:
        request.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_state(round_: int, params: torch.Tensor, strategy_state: Any, rows: list, config: dict) -> dict[str, Any]:
    return {"round": round_, "params": params, "strategy": strategy_state, "rows": rows, "config": config}
