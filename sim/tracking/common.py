"""What every tracker shares: the run's identity in a sweep, config flattening, steps, and resume.

A tracker mirrors the run folder; the folder stays the source of truth. Three rules hold for all
trackers, so they live here once:

- **Steps.** A row's step is its ``round`` (federated runs, synchronous gossip). Rows of
  asynchronous gossip carry a ``time`` column and fractional rounds; their step is the evaluation's
  number, ``time / gossip.eval_interval`` (its row index in metrics.csv), and ``round`` and ``time``
  are logged as metrics like any other column.
- **No row lost, none twice.** ``tracking.json`` in the run folder records the tracker's run id and
  the steps logged so far (as ranges), rewritten after every row. Rows reach the tracker through
  ``log_row`` as they are made; at ``finish`` every row of metrics.csv whose step is not recorded
  yet is logged too (the initial evaluation at round 0 is written without a ``log_row`` call, and a
  run killed by SIGKILL may have flushed rows it never logged). A resumed run reopens the same
  tracker run and skips the steps already recorded: it recomputes exactly the rows of the
  uninterrupted run (docs/design.md), so a skipped row equals the one logged before.
- **Sweeps.** A job of a Hydra multirun knows its sweep folder and job number; the sweep folder is
  the key of the parent (an MLflow parent run, a W&B group, a TensorBoard folder per sweep).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.errors import ConfigError
from sim.results import atomic_write_text

STATE_FILE = "tracking.json"
#: the run folder's files a tracker uploads, when present
ARTIFACTS = ("summary.json", "metrics.csv", "accuracy.png", "model.safetensors")


@dataclass(frozen=True)
class RunContext:
    """Where this run sits: alone, or job ``job_num`` of the sweep in ``sweep_dir``."""

    name: str
    sweep_dir: str | None
    job_num: int | None
    launch_dir: Path


def launch_dir() -> Path:
    """The folder the command was started in (Hydra's ``runtime.cwd``; a Ray worker's cwd differs)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def run_context(out_dir: Path) -> RunContext:
    """Hydra's view of the job when Hydra runs it; otherwise a standalone run named after its folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return RunContext(out_dir.name or "run", None, None, Path.cwd())
    hc = HydraConfig.get()
    launch_dir = Path(hc.runtime.cwd)
    if hc.mode != RunMode.MULTIRUN:
        return RunContext(out_dir.name or "run", None, None, launch_dir)
    sweep_dir = str((launch_dir / str(hc.sweep.dir)).resolve())
    overrides = str(hc.job.override_dirname) or f"job {hc.job.num}"
    return RunContext(f"{hc.job.num}: {overrides}", sweep_dir, int(hc.job.num), launch_dir)


def eval_interval(cfg: Any) -> float:
    """Simulated time between evaluations of asynchronous gossip (the unit of its steps)."""
    gossip = cfg.get("gossip") or {}
    return float(gossip.get("eval_interval", 1.0) or 1.0)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as ``{"strategy.server_lr": 1.0, ...}``; lists become their JSON text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = value
    return flat


def numeric_items(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's values a tracker can plot: finite numbers (an empty cell or NaN means not measured)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The final and best figures of summary.json and its timings, as ``summary.final.test_accuracy`` etc."""
    picked = {k: summary[k] for k in ("final", "best", "wall_s", "setup_s", "loop_s") if k in summary}
    return {f"summary.{k}": v for k, v in numeric_items(flatten(picked)).items()}


def artifact_paths(out_dir: Path) -> list[Path]:
    return [out_dir / name for name in ARTIFACTS if (out_dir / name).is_file()]


class StepCounter:
    """Turns rows into steps and remembers, in ``tracking.json``, which steps were logged (see module doc)."""

    def __init__(self, out_dir: Path, logger: str, eval_interval: float = 1.0):
        self.path = out_dir / STATE_FILE
        self.eval_interval = eval_interval
        saved = self._read() if self._read().get("logger") == logger else {}
        self.logger = logger
        self.run_id: str | None = saved.get("run_id")
        self.spans: list[list[int]] = [list(map(int, s)) for s in saved.get("steps", [])]

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def step(self, row: Mapping[str, Any]) -> int:
        """Round for rounds; for asynchronous gossip the evaluation's number (its time / eval_interval)."""
        if "time" in row:
            return int(round(float(row["time"]) / self.eval_interval))
        return int(round(float(row["round"])))

    def done(self, step: int) -> bool:
        return any(lo <= step <= hi for lo, hi in self.spans)

    @property
    def last_step(self) -> int:
        return max((hi for _, hi in self.spans), default=-1)

    def logged(self, step: int) -> None:
        """Record ``step`` (as closed ranges of steps, so the file stays small) and save."""
        for span in self.spans:
            if span[0] - 1 <= step <= span[1] + 1:
                span[0], span[1] = min(span[0], step), max(span[1], step)
                break
        else:
            self.spans.append([step, step])
        self.spans.sort()
        merged: list[list[int]] = []
        for lo, hi in self.spans:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.spans = merged
        self.save()

    def save(self) -> None:
        payload = {"logger": self.logger, "run_id": self.run_id, "steps": self.spans}
        atomic_write_text(self.path, json.dumps(payload) + "\n")


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """metrics.csv's rows with numbers as floats and empty cells left out; [] when there is no file."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, cell in raw.items():
                if cell in ("", None):
                    continue
                try:
                    row[key] = float(cell)
                except ValueError:
                    row[key] = cell
            rows.append(row)
    return rows


def check_writable_dir(field: str, value: Any, path: Path) -> None:
    """ConfigError unless ``path`` is, or can be created as, a folder this process can write in.

    Nothing is created: the nearest existing ancestor must be a folder, and a probe file made and
    removed there must succeed (``os.access`` says yes to root even on read-only places).
    """
    path = path.expanduser()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            field, value, "a folder that exists or can be created", f"{existing} is a file, not a folder."
        )
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".gossipsoup-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            field, value, "a folder this user can write in", f"Writing in {existing} failed: {exc}."
        ) from None


def required_text(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, value, "a non-empty string")
    return value


def optional_text(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(field, value, "null or a non-empty string")
    return value
