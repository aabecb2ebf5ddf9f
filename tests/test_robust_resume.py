"""Centered clipping's memory (the last aggregate update) is strategy state: a checkpoint carries it."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_resume import _run, assert_same_run  # noqa: E402  # the resume tests' run helpers

ARGS = (
    "num_clients=8",
    "participation.clients_per_round=8",
    "model.hidden=[8]",
    "save_model=true",
    "progress=false",
    "train.epochs=1",
    "strategy=centered_clipping",
    "strategy.tau=0.05",
    "attack=sign_flip",
    "attack.f=2",
    "checkpoint.every=1",
)


@pytest.mark.slow
def test_a_resumed_centered_clipping_run_equals_the_uninterrupted_one(tmp_path):
    assert _run(tmp_path, *ARGS, "rounds=4", "hydra.run.dir=long").returncode == 0
    assert _run(tmp_path, *ARGS, "rounds=2", "hydra.run.dir=short").returncode == 0
    extended = _run(tmp_path, "resume=short", "rounds=4")
    assert extended.returncode == 0, extended.stderr[-2000:]
    assert_same_run(tmp_path / "short", tmp_path / "long")
    # (a resume that lost the last update would clip round 3 around the global model and differ)
