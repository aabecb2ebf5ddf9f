"""Crash-safe runs: checkpoints of the whole run state, resume, stopping on a signal.

A checkpoint holds what a later round reads and nothing else (docs/design.md explains each):

- ``round``: the last completed round (asynchronous gossip: the simulated time in rounds,
  ``time / wake_interval``, of the evaluation it follows, and ``evaluation``, that evaluation's index);
- ``params``: the global model after it (gossip: every node's model ``[N, P]``);
- ``strategy``: the strategy's state (server optimizer moments and step, FedAU's intervals, MIFA's
  memory, ...), stored as data (:mod:`sim.run_state`); in synchronous gossip every node's state and
  the extras of the last training; in asynchronous gossip everything the event loop carries
  (:mod:`sim.gossip.async_state`: the event queue with the models in flight, the event stream's
  generator state, training counts, churn, per-node states);
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

import copy
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, RunInterrupted
from .run_state import load_state, save_state
from .validation import is_int

CHECKPOINT = "checkpoint.safetensors"
#: config keys a resume may change: the run's length (longer only), resume itself, and what changes how the run is
#: computed or recorded but not its numbers: the backend and its options (threads included; every backend gives
#: the same numbers to float tolerance), the progress bar, the logger, the checkpoint cadence, saving the model
RESUME_MAY_CHANGE = ("rounds", "resume")
RESUME_MAY_SET = ("backend", "progress", "logger", "checkpoint", "save_model")
#: backend options that do change the numbers, so a resume must keep them whatever backend it picks
RESUME_MUST_KEEP = ("backend.noop_train",)


def checkpoint_settings(cfg) -> tuple[int | None, int | None]:
    """``(every, keep_every)`` from the ``checkpoint`` block, each null or an integer >= 1.

    Both count rounds, except in asynchronous gossip, which has no rounds: there they count
    evaluations (one every ``gossip.eval_interval`` of simulated time).
    """
    block = cfg.get("checkpoint") or {}
    values = []
    for key in ("every", "keep_every"):
        value = block.get(key)
        if value is not None and not (is_int(value) and value >= 1):
            raise ConfigError(
                f"checkpoint.{key}", value, "null or an integer >= 1 (rounds; asynchronous gossip: evaluations)"
            )
        values.append(value)
    return values[0], values[1]


def kept_name(state: dict[str, Any]) -> str:
    """``checkpoint_round<R>``, or ``checkpoint_eval<K>`` for asynchronous gossip (whose rounds are not whole)."""
    if "evaluation" in state:
        return f"checkpoint_eval{state['evaluation']}.safetensors"
    return f"checkpoint_round{state['round']}.safetensors"


def write_checkpoint(out: Path, state: dict[str, Any], keep: bool) -> None:
    """The latest checkpoint (atomically replaced), plus a kept copy of this round when asked."""
    save_state(out / CHECKPOINT, state)
    if keep:
        save_state(out / kept_name(state), state)


def read_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The latest readable checkpoint of ``run_dir``: the latest file, else the newest kept one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError("resume", str(run_dir), "the folder of a run to continue", "No such folder exists.")
    kept = sorted(
        [*run_dir.glob("checkpoint_round*.safetensors"), *run_dir.glob("checkpoint_eval*.safetensors")],
        key=lambda p: -_position_of(p),
    )
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


def _position_of(path: Path) -> int:
    """The round (or evaluation) in a kept checkpoint's name; -1 for a name that has none."""
    digits = path.stem.removeprefix("checkpoint_round").removeprefix("checkpoint_eval")
    return int(digits) if digits.isdigit() else -1


def check_length(state: dict[str, Any], rounds: int) -> None:
    """A resume's ``rounds`` must reach the saved run's position (asynchronous gossip: possibly between rounds)."""
    done = state["round"]
    if float(done) > rounds:
        raise ConfigError("rounds", rounds, f"at least {done:g}, the rounds the saved run has done")


def resumed_config(saved: dict[str, Any], given: dict[str, Any], overridden: list[str], done: float) -> dict[str, Any]:
    """The saved config with the allowed changes the command line made; ConfigError naming any other.

    ``overridden`` are the keys the user set on the command line; each must keep its saved value,
    except ``rounds`` (at least the rounds already done: a finished run may be extended) and the keys
    under :data:`RESUME_MAY_SET`, which take the command line's value: ``backend=sequential`` swaps
    the whole backend block, ``backend.num_threads=2`` only that option of the saved backend.
    """
    changed = []
    merged = copy.deepcopy(saved)
    for key in overridden:
        dotted = key.lstrip("+~")
        top = dotted.split(".")[0].split("@")[0]
        if top in RESUME_MAY_CHANGE or top == "hydra":
            continue
        if top in RESUME_MAY_SET:
            _assign(merged, dotted, copy.deepcopy(_lookup(given, dotted)))
        elif _lookup(saved, dotted) != _lookup(given, dotted):
            changed.append(dotted)
    changed += [key for key in RESUME_MUST_KEEP if bool(_lookup(saved, key)) != bool(_lookup(merged, key))]
    if changed:
        raise ConfigError(
            "resume",
            given.get("resume"),
            "the command of the run it continues (only rounds may grow; backend, progress, logger, checkpoint "
            "and save_model may change)",
            f"These settings differ from the saved run: {', '.join(sorted(changed))}.",
        )
    rounds = given.get("rounds", saved["rounds"]) if "rounds" in overridden else saved["rounds"]
    if not (is_int(rounds) and rounds >= done):
        raise ConfigError("rounds", rounds, f"at least {done}, the rounds the saved run has done")
    return {**merged, "rounds": rounds}


def _assign(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``cfg[a][b]...`` for ``a.b...``, creating the blocks on the way (a key the saved config lacked)."""
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


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
    """Turn SIGINT and SIGTERM into a :class:`StopRequest` for the duration (main thread only).

    The run holds it until its files are written, so a second copy of the signal (a sweep's launcher passes a
    signal to the group on to its workers) cannot cut a checkpoint or summary short. A signal the run did not
    stop on (it came in the last round or during the final writes) goes to the handler there was before once
    the files are written: a sweep's launcher or worker then stops the sweep, as it would have without the run.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: object) -> None:
        request.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    stopped = False
    try:
        yield request
    except RunInterrupted:
        stopped = True
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if request.signal_name is not None and not stopped:
            signal.raise_signal(signal.Signals[request.signal_name])


def run_state(
    round_: float,
    params: torch.Tensor,
    strategy_state: Any,
    rows: list,
    config: dict,
    evaluation: int | None = None,
    clients: Any = None,
) -> dict[str, Any]:
    """A checkpoint's content; ``evaluation`` (asynchronous gossip) is the index of the evaluation it follows.

    ``clients`` (a :class:`sim.results.ClientLog`, per-client evaluation only) adds clients.csv's text so far,
    so a resume continues that file with the same bytes; without it the checkpoint is as before.
    """
    state = {"round": round_, "params": params, "strategy": strategy_state, "rows": rows, "config": config}
    if evaluation is not None:
        state["evaluation"] = evaluation
    if clients is not None:
        state["clients"] = clients.saved()
    return state
