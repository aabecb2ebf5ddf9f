"""Asynchronous FL across a checkpoint and across backends.

A resume from a row's checkpoint must give the files of the uninterrupted run byte for byte (times
aside): the checkpoint holds the tasks in flight (trained ones with their models, untrained ones with
their start models), the event queue, the client-draw generator, task counts and the strategy's
state (sim/async_fl/state.py). The runs have unequal client speeds (system=uniform), fewer slots than
clients (random client draws) and FedAdam's moments.

Backends: the sequential, vectorized and Ray backends train each collected batch of tasks; all must
give the same rows and model (float tolerance).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from forked_cli import run_module

from sim.checkpoint import load_checkpoint
from sim.resume import read_checkpoint
from sim.run import run_experiment
from sim.run_state import load_state
from tests.test_resume import assert_same_run, interrupt_with_sigint

BASE = (
    "num_clients=6",
    "model=logreg",
    "train.local_steps=2",
    "progress=false",
    "save_model=true",
    "system=uniform",
    "federated.schedule=async",
    "async_fl.concurrency=3",
)
RUNS = {
    "fedbuff_fedadam": ("strategy=fedadam", "async_fl.buffer_size=2", "rounds=6", "backend=sequential"),
    "fedasync_hinge": (
        "async_fl.algorithm=fedasync",
        "async_fl.staleness=hinge",
        "async_fl.staleness_b=1",
        "rounds=8",
        "eval_every=2",
        "backend=vectorized",
    ),
}


def _resume_copy(full: Path, to: Path, kept: str) -> Path:
    """``full``'s folder as a run killed right after the kept checkpoint ``kept``."""
    shutil.copytree(full, to)
    shutil.copyfile(full / kept, to / "checkpoint.safetensors")
    for name in ("summary.json", "model.safetensors", "accuracy.png"):
        (to / name).unlink()
    return to


@pytest.mark.parametrize("name, resume_at", [("fedbuff_fedadam", (1, 3)), ("fedasync_hinge", (2,))])
def test_a_resume_from_a_row_equals_the_uninterrupted_run(make_cfg, tmp_path, name, resume_at):
    # Prepare: one run keeping a checkpoint at every row
    cfg = make_cfg(*BASE, *RUNS[name], "checkpoint.every=1", "checkpoint.keep_every=1")
    run_experiment(cfg, tmp_path / "full")
    tasks = [load_state(tmp_path / "full" / f"checkpoint_eval{k}.safetensors")["strategy"]["tasks"] for k in resume_at]
    assert any(t["trained"].any() and (~t["trained"]).any() for t in tasks)  # trained and untrained tasks in flight
    for k in resume_at:
        # Execute
        part = _resume_copy(tmp_path / "full", tmp_path / f"part{k}", f"checkpoint_eval{k}.safetensors")
        run_experiment(cfg, part, resume_state=read_checkpoint(part))
        # Assert
        assert_same_run(part, tmp_path / "full")


def test_an_extended_run_equals_the_longer_run(make_cfg, tmp_path):
    short = make_cfg(*BASE, *RUNS["fedbuff_fedadam"])
    long = make_cfg(*BASE, *RUNS["fedbuff_fedadam"][:-2], "rounds=9", "backend=sequential")
    run_experiment(long, tmp_path / "long")
    run_experiment(short, tmp_path / "short")
    run_experiment(long, tmp_path / "short", resume_state=read_checkpoint(tmp_path / "short"))
    assert_same_run(tmp_path / "short", tmp_path / "long")


def _rows_and_model(out: Path) -> tuple[pd.DataFrame, torch.Tensor]:
    rows = pd.read_csv(out / "metrics.csv").drop(columns=["wall_s"])
    return rows, load_checkpoint(out / "model.safetensors")[1]


def _compare(a: Path, b: Path) -> None:
    rows_a, model_a = _rows_and_model(a)
    rows_b, model_b = _rows_and_model(b)
    keep = [c for c in rows_a.columns if c != "retries"]
    pd.testing.assert_frame_equal(rows_a[keep], rows_b[keep], check_exact=False, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model_a, model_b, atol=1e-5, rtol=1e-4)


SAME = (*BASE, "async_fl.buffer_size=2", "rounds=4")


def test_sequential_and_vectorized_give_the_same_run(make_cfg, tmp_path):
    run_experiment(make_cfg(*SAME, "backend=sequential"), tmp_path / "seq")
    run_experiment(make_cfg(*SAME, "backend=vectorized"), tmp_path / "vec")
    _compare(tmp_path / "seq", tmp_path / "vec")


def test_ray_gives_the_same_run(make_cfg, tmp_path, ray_session):
    run_experiment(make_cfg(*SAME, "backend=sequential"), tmp_path / "seq")
    run_experiment(
        make_cfg(*SAME, "backend=ray", "backend.num_actors=2", "backend.driver_max_clients=0"), tmp_path / "ray"
    )
    _compare(tmp_path / "seq", tmp_path / "ray")


@pytest.mark.slow
def test_sigint_saves_the_run_at_the_next_row_and_the_command_line_resume_is_exact(tmp_path):
    # Prepare: no periodic checkpoints, so the signal writes the only one (real processes: the signal path)
    args = (*BASE, *RUNS["fedbuff_fedadam"][:-2], "rounds=60", "checkpoint.every=null")
    # Execute: SIGINT once the first rows are written; Assert: exit 130 and the resume command (in the helper)
    interrupt_with_sigint(tmp_path, args)
    state = read_checkpoint(tmp_path / "part")
    assert 0 < state["round"] < 60 and len(state["rows"]) == state["evaluation"] + 1
    resumed = run_module("sim", ["resume=part"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(tmp_path / "part", tmp_path / "full")
