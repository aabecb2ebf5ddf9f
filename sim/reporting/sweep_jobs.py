"""Jobs a sweep asked for that its folder does not hold.

Hydra writes ``multirun.yaml`` into the sweep folder before any job starts: the command's overrides
(and ``hydra.sweeper.params``) there give the jobs the basic sweeper launches, in its own order (Hydra's
``BasicSweeper.split_arguments`` computes them here too). A job is present when its folder has a
summary.json (completed, failed or interrupted alike: those are reported as skipped); it is recognised
by its ``.hydra/overrides.yaml``, or by its number when the job folders are ``${hydra.job.num}``. An
interrupted sweep that was never resumed, or one resumed into another folder, leaves jobs out, and the
report names them rather than averaging over fewer seeds without a word. Optuna sweeps are counted
against ``n_trials`` (which trials would have run is not known in advance). ``resume`` overrides are
ignored: they do not change what a job computes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

IGNORED_KEYS = frozenset({"resume"})


@dataclass(frozen=True)
class MissingJobs:
    sweep: Path
    expected: int
    found: int
    missing: list[str]  # each missing job's swept overrides, "k=v k=v"; empty when they cannot be named

    def message(self) -> str:
        head = f"sweep {self.sweep} asked for {self.expected} job(s) in its multirun.yaml but holds {self.found}"
        if not self.missing:
            return head + "."
        return head + "; missing: " + "; ".join(self.missing) + "."


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _job(overrides: list[str]) -> tuple[str, ...]:
    return tuple(sorted(o for o in overrides if _key(o) not in IGNORED_KEYS))


def _load(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _expected_jobs(hydra: dict) -> list[tuple[str, ...]] | int | None:
    """Each job's overrides (basic sweeper), the number of trials (Optuna), or None when not known."""
    sweeper = hydra.get("sweeper") or {}
    target = str(sweeper.get("_target_", ""))
    if "optuna" in target.lower():
        n = sweeper.get("n_trials")
        return n if isinstance(n, int) and not isinstance(n, bool) else None
    if not target.endswith("BasicSweeper"):
        return None
    task = ((hydra.get("overrides") or {}).get("task")) or []
    params = sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(t) for t in task]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    except HydraException:  # glob() needs Hydra's config loader, for instance
        return None
    return [_job(job) for batch in batches for job in batch]


def _found_jobs(sweep: Path, hydra: dict) -> tuple[int, list[tuple[str, ...]], set[int]]:
    """(jobs present, their overrides where recorded, job numbers of those without recorded overrides)."""
    numbered = str((hydra.get("sweep") or {}).get("subdir", "")) == "${hydra.job.num}"
    count, recorded, numbers = 0, [], set()
    for summary in sweep.rglob("summary.json"):
        job_dir = summary.parent
        count += 1
        overrides = _load(job_dir / ".hydra" / "overrides.yaml")
        if isinstance(overrides, list):
            recorded.append(_job([str(o) for o in overrides]))
        elif numbered and job_dir.parent == sweep and job_dir.name.isdigit():
            numbers.add(int(job_dir.name))
    return count, recorded, numbers


def check_sweep(sweep: Path) -> MissingJobs | None:
    """What ``sweep`` (a folder holding multirun.yaml) lacks; None when complete or not checkable."""
    config = _load(sweep / "multirun.yaml")
    hydra = config.get("hydra") if isinstance(config, dict) else None
    if not isinstance(hydra, dict):
        return None
    expected = _expected_jobs(hydra)
    if expected is None:
        return None
    found, recorded, numbers = _found_jobs(sweep, hydra)
    total = expected if isinstance(expected, int) else len(expected)
    if found >= total:
        return None
    if isinstance(expected, int):
        return MissingJobs(sweep, expected, found, [])
    swept = {_key(o) for o in {o for job in expected for o in job} if sum(o in job for job in expected) < total}
    left = Counter(expected)
    left.subtract(Counter(recorded))
    missing = []
    for number, job in enumerate(expected):
        if left[job] > 0 and number not in numbers:
            left[job] -= 1
            missing.append(" ".join(o for o in job if _key(o) in swept or not swept))
    # jobs whose recorded overrides match none expected (written differently): count them, name none
    return MissingJobs(sweep, total, found, missing if len(missing) == total - found else [])


def missing_jobs(dirs: list[Path]) -> list[MissingJobs]:
    """Every sweep under ``dirs`` (recursively) that holds fewer jobs than it asked for."""
    sweeps = sorted({p.parent.resolve() for d in dirs for p in d.rglob("multirun.yaml")})
    return [m for s in sweeps if (m := check_sweep(s)) is not None]
