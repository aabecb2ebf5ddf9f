"""Crash-safe federated runs: SIGKILL at a seeded random moment, resume, and the files equal an uninterrupted run's.

Every run is a real ``python -m sim`` process, forked from a server that imported torch once (tests/forked_cli.py:
own pid, cwd, exit code and signals, without 2-3 CPU s of imports each). "Equal" means byte for byte:
``metrics.csv`` without its wall-time column, ``summary.json`` without its times, and ``model.safetensors`` whole.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from forked_cli import ForkedProcess, run_module, start_module

pytestmark = pytest.mark.slow

COMMON = ("num_clients=12", "model.hidden=[16]", "save_model=true", "progress=false", "train.epochs=1")
RUNS = {
    "fedadam_markov": ("strategy=fedadam", "participation=markov"),
    "mifa": ("strategy=mifa", "participation=bernoulli"),
    "sync_gossip_vc": (
        "mode=gossip",
        "topology=ring",
        "strategy=variance_corrected",
        "gossip.drop_prob=0.3",
        "gossip.shared_init=false",
    ),
}
#: (run, seed of the kill moment, rounds): enough rounds that the kill lands mid-run. The kill comes at most 0.4 s
#: after the first checkpoint; measured CPU time a round (one core, 2026-12): fedadam_markov 20 ms, mifa 9 ms,
#: sync_gossip_vc 21 ms, so each run lasts about 2 s past its first checkpoint on an idle core (5x the latest kill).
KILLS = [("fedadam_markov", 0, 100), ("fedadam_markov", 1, 100), ("mifa", 0, 200), ("sync_gossip_vc", 0, 100)]
TIMES = ("wall_s", "setup_s", "loop_s")


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "sim", *args]


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m sim ARGS`` as a real process forked from a server that imported torch once (tests/forked_cli.py):
    the subject is what the run writes and its exit code, not how the interpreter starts."""
    return run_module("sim", list(args), cwd, timeout=300)


def _metrics_bytes(run: Path) -> bytes:
    return pd.read_csv(run / "metrics.csv").drop(columns="wall_s").to_csv(index=False).encode()


def _summary(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in TIMES}


def assert_same_run(a: Path, b: Path) -> None:
    assert _metrics_bytes(a) == _metrics_bytes(b)
    assert _summary(a) == _summary(b)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def _wait_for(path: Path, proc: ForkedProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.02)


def kill_then_resume(cwd: Path, args: tuple, seed: int, spread: float = 0.4, new_session: bool = False) -> None:
    """The issue's crash test: ``args`` uninterrupted in ``full/``; the same in ``part/``, SIGKILLed at a seeded
    moment after its first checkpoint (some moments fall inside a write), then resumed; the files must be equal.

    ``new_session``: the run gets its own process group, so that whatever it started (Ray's processes) is
    stopped with it after the driver alone was killed.
    """
    full = _run(cwd, *args, "hydra.run.dir=full")
    assert full.returncode == 0, full.stderr[-2000:]
    proc = start_module("sim", [*args, "hydra.run.dir=part"], cwd, new_session=new_session)
    try:
        _wait_for(cwd / "part" / "checkpoint.safetensors", proc, timeout=240)
        time.sleep(random.Random(seed).uniform(0.0, spread))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()  # a no-op once it ended; a failed wait must not leave the run (the worker's one fork) going
        proc.wait(timeout=60)
        if new_session:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not (cwd / "part" / "summary.json").exists()  # killed mid-run: it never finished
    resumed = _run(cwd, "resume=part")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(cwd / "part", cwd / "full")


@pytest.mark.parametrize("name,seed,rounds", KILLS, ids=[f"{n}-{s}" for n, s, _ in KILLS])
def test_sigkill_at_a_random_moment_then_resume_equals_the_uninterrupted_run(tmp_path, name, seed, rounds):
    kill_then_resume(tmp_path, (*COMMON, *RUNS[name], f"rounds={rounds}", "checkpoint.every=1"), seed)


def interrupt_with_sigint(cwd: Path, args: tuple) -> str:
    """Run ``args`` to the end in ``full``, then again in ``part`` with a SIGINT once its first rows are
    written; asserts exit 130 and a last line naming the resume command, and returns that line."""
    assert _run(cwd, *args, "hydra.run.dir=full").returncode == 0
    proc = start_module("sim", [*args, "hydra.run.dir=part"], cwd)
    try:
        _wait_for(cwd / "part" / "metrics.csv", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # a no-op once it ended
        proc.wait(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGINT after round ") and f"resume={cwd / 'part'}" in last
    return last


def test_sigint_saves_the_run_says_how_to_resume_and_the_resume_is_exact(tmp_path):
    # Prepare: no periodic checkpoints, so the signal writes the only one
    args = (*COMMON, *RUNS["fedadam_markov"], "rounds=150")
    # Execute: SIGINT once the loop runs; Assert: exit 130, one line with the command (in the helper)
    interrupt_with_sigint(tmp_path, args)
    # Assert: a resumable folder that says "interrupted", and an exact resume
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["status"] == "interrupted"
    resumed = _run(tmp_path, "resume=part")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(tmp_path / "part", tmp_path / "full")


def test_a_finished_run_extended_with_more_rounds_equals_the_longer_run(tmp_path):
    args = (*COMMON, *RUNS["mifa"], "checkpoint.every=5")
    assert _run(tmp_path, *args, "rounds=20", "hydra.run.dir=long").returncode == 0
    assert _run(tmp_path, *args, "rounds=10", "hydra.run.dir=short").returncode == 0
    extended = _run(tmp_path, "resume=short", "rounds=20")
    assert extended.returncode == 0, extended.stderr[-2000:]
    assert_same_run(tmp_path / "short", tmp_path / "long")


def test_resume_refuses_other_changes_and_folders_without_a_checkpoint(tmp_path):
    args = (*COMMON, *RUNS["mifa"], "rounds=4", "checkpoint.every=2")
    assert _run(tmp_path, *args, "hydra.run.dir=run").returncode == 0
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    # another strategy, another lr, fewer rounds than done: each named, nothing written
    for extra, named in (
        (("strategy=fedavg",), "strategy"),
        (("train.lr=0.5",), "train.lr"),
        (("rounds=2",), "rounds"),
    ):
        proc = _run(tmp_path, "resume=run", *extra)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and named in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    # a folder with no checkpoint, and one that does not exist
    (tmp_path / "empty").mkdir()
    for folder, says in (("empty", "no checkpoint.safetensors"), ("nowhere", "No such folder")):
        proc = _run(tmp_path, f"resume={folder}")
        assert proc.returncode == 2 and "resume=" in proc.stderr and says in proc.stderr, proc.stderr


def test_a_damaged_latest_checkpoint_falls_back_to_a_kept_one(tmp_path):
    # Prepare: checkpoints every round, rounds 3 and 6 kept; the latest (round 8) then truncated
    args = (*COMMON, *RUNS["fedadam_markov"], "rounds=8", "checkpoint.every=1", "checkpoint.keep_every=3")
    assert _run(tmp_path, *args, "hydra.run.dir=full").returncode == 0
    assert _run(tmp_path, *args, "hydra.run.dir=part").returncode == 0
    latest = tmp_path / "part" / "checkpoint.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])
    (tmp_path / "part" / "model.safetensors").unlink()
    # Execute: the resume starts from round 6 and redoes rounds 7 and 8
    resumed = _run(tmp_path, "resume=part")
    # Assert
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(tmp_path / "part", tmp_path / "full")
    # with every checkpoint damaged, a clear error
    for path in (tmp_path / "part").glob("checkpoint*.safetensors"):
        path.write_bytes(b"garbage")
    proc = _run(tmp_path, "resume=part")
    assert proc.returncode == 2 and "damaged or truncated" in proc.stderr, proc.stderr


SAVED = {
    "rounds": 4,
    "progress": True,
    "resume": None,
    "train": {"lr": 0.1},
    "backend": {"name": "ray", "num_threads": 1, "num_actors": 3, "noop_train": False},
    "logger": {"name": "none"},
    "checkpoint": {"every": 2, "keep_every": None},
}


def _given(**blocks) -> dict:
    return {**SAVED, "resume": "run", **blocks}


def test_a_resume_may_change_how_the_numbers_are_computed_but_not_the_numbers():
    from sim.errors import ConfigError
    from sim.resume import resumed_config

    sequential = {"name": "sequential", "num_threads": None}
    # another backend: its whole block; one backend option: that option of the saved backend only
    merged = resumed_config(SAVED, _given(backend=sequential), ["resume", "backend"], 2)
    assert merged["backend"] == sequential and merged["train"] == SAVED["train"]
    threads = {"name": "auto", "num_threads": 2}  # what the command line composes: the default backend
    merged = resumed_config(SAVED, _given(backend=threads), ["resume", "backend.num_threads"], 2)
    assert merged["backend"] == {**SAVED["backend"], "num_threads": 2}
    merged = resumed_config(
        SAVED,
        _given(rounds=6, progress=False, logger={"name": "mlflow"}, checkpoint={"every": 1, "keep_every": None}),
        ["resume", "rounds", "progress", "logger", "checkpoint.every"],
        2,
    )
    assert (merged["rounds"], merged["progress"], merged["logger"], merged["checkpoint"]["every"]) == (
        6,
        False,
        {"name": "mlflow"},
        1,
    )
    assert SAVED["backend"]["name"] == "ray" and SAVED["progress"] is True  # the saved config is not changed
    older = {k: v for k, v in SAVED.items() if k != "checkpoint"}  # a saved config without the block
    merged = resumed_config(older, _given(checkpoint={"every": 1}), ["checkpoint.every"], 2)
    assert merged["checkpoint"] == {"every": 1}
    # the numbers' settings are refused, each named: the learning rate, a benchmark backend that skips training
    for given, overridden, named in (
        (_given(train={"lr": 0.5}), ["resume", "train.lr"], "train.lr"),
        (_given(backend={**SAVED["backend"], "noop_train": True}), ["backend.noop_train"], "backend.noop_train"),
    ):
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            resumed_config(SAVED, given, overridden, 2)
