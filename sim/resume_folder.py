"""``resume=true``: find the folder that an earlier launch of this same command wrote.

Rerunning a killed sweep should need nothing but the same command with ``resume=true``. Hydra's
default folders carry a timestamp (``multirun/DATE/TIME/JOB``), so the rerun's own folder is new
and empty; the earlier one is found by its ``.hydra/overrides.yaml``, which Hydra writes into every
job folder: a folder under the same root whose overrides equal this job's (the swept value
included; ``resume=`` aside, so the first launch need not have said it) ran exactly this job.
With a fixed ``hydra.run.dir`` / ``hydra.sweep.dir`` the job's own folder is the earlier one and
no search is needed (and none is made: another launch's folder is not this job's).

A sweep launched again with ``resume=true`` continues in its earlier sweep folder as a whole
(:func:`earlier_sweep_folder`, found by the ``multirun.yaml`` Hydra writes there): every job, the
started and the never-started, then lands in one folder under one tracker parent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .resume import CHECKPOINT

#: how deep below the folder pattern's fixed root a job folder may lie (multirun/DATE/TIME/JOB: 3)
MAX_DEPTH = 4


def holds_a_run(folder: Path) -> bool:
    """A folder that a run got far enough to leave a result or a checkpoint in."""
    return (folder / "summary.json").is_file() or any(folder.glob("checkpoint*.safetensors"))


def fixed_root(dir_pattern: str) -> Path:
    """The part of Hydra's (unresolved) output folder pattern before its first interpolation."""
    head = dir_pattern.split("${", 1)[0]
    return Path(head if head.endswith("/") or not head else Path(head).parent)


def _overrides(folder: Path) -> list[str] | None:
    path = folder / ".hydra" / "overrides.yaml"
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return _job_key([str(o) for o in loaded]) if isinstance(loaded, list) else None


def _job_key(overrides: list[str]) -> list[str]:
    """What identifies a job: its overrides in any order, ``resume=...`` aside (the first launch may lack it)."""
    return sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "resume")


def earlier_run_folder(out_dir: Path, dir_pattern: str, overrides: list[str]) -> Path | None:
    """This job's folder from an earlier launch: ``out_dir`` itself, else the newest match under the root."""
    if holds_a_run(out_dir):
        return out_dir
    if "${" not in dir_pattern:  # a fixed folder: only out_dir itself can be this job's
        return None
    root = fixed_root(dir_pattern)
    if not root.is_dir():
        return None
    wanted = _job_key(overrides)
    found = []
    for depth in range(1, MAX_DEPTH + 1):
        for marker in root.glob("/".join(["*"] * depth) + "/.hydra/overrides.yaml"):
            folder = marker.parent.parent
            if folder.resolve() != out_dir.resolve() and _overrides(folder) == wanted and holds_a_run(folder):
                found.append(folder)
    return max(found, key=lambda f: f.stat().st_mtime) if found else None


def completed_summary(folder: Path) -> dict[str, Any] | None:
    """The folder's summary.json when its run completed (it then needs nothing more, unless extended)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") == "completed" else None


def has_checkpoint(folder: Path) -> bool:
    return (folder / CHECKPOINT).is_file() or any(folder.glob("checkpoint_*.safetensors"))


#: Hydra's own sweep folder pattern (configs/ does not change it)
DEFAULT_SWEEP_DIR = "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}"


def _sweep_overrides(folder: Path) -> list[str] | None:
    try:
        loaded = yaml.safe_load((folder / "multirun.yaml").read_text())
        task = loaded["hydra"]["overrides"]["task"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return _job_key([str(o) for o in task]) if isinstance(task, list) else None


def earlier_sweep_folder(dir_pattern: str, task_overrides: list[str], cwd: Path) -> Path | None:
    """The newest sweep folder under the pattern's fixed root whose ``multirun.yaml`` asked for these overrides.

    None when the pattern is a fixed folder (Hydra reuses it anyway) or no earlier launch matches.
    """
    if "${" not in dir_pattern:
        return None
    root = cwd / fixed_root(dir_pattern)
    if not root.is_dir():
        return None
    wanted = _job_key(task_overrides)
    found = []
    for depth in range(1, MAX_DEPTH + 1):
        for marker in root.glob("/".join(["*"] * depth) + "/multirun.yaml"):
            if _sweep_overrides(marker.parent) == wanted:
                found.append(marker)
    return max(found, key=lambda m: m.stat().st_mtime).parent.resolve() if found else None
