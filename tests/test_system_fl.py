"""Synchronous FL in simulated time: time_s, dropped and failed per round, the same on every backend."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from sim.backends import ClientBatch
from sim.data import load_federated_data
from sim.participation import UniformParticipation
from sim.run import run_experiment
from sim.system.fl_clock import subset_batch, upload_bytes

SMALL = (
    "num_clients=8",
    "participation.clients_per_round=4",
    "model.hidden=[8]",
    "rounds=2",
    "eval_every=2",
    "partition=dirichlet",
    "partition.alpha=0.3",
)
TIMED = ("system=lognormal", "system.over_selection=1.5", "participation.clients_per_round=3")


def metrics(make_cfg, out, *overrides: str) -> pd.DataFrame:
    if "backend=sequential" in overrides:
        overrides = (*overrides, "backend.num_threads=1")
    run_experiment(make_cfg(*SMALL, *overrides), out)
    return pd.read_csv(out / "metrics.csv")


@pytest.fixture(scope="module")
def timed_runs(tmp_path_factory):
    """The lognormal over-selection run on the sequential and vectorized backends (shared by several tests)."""
    from hydra import compose, initialize_config_module

    def make(*overrides):
        with initialize_config_module(config_module="configs", version_base="1.3"):
            return compose(config_name="config", overrides=["progress=false", *overrides])

    root = tmp_path_factory.mktemp("timed")
    return {b: metrics(make, root / b, *TIMED, f"backend={b}") for b in ("sequential", "vectorized")}


def test_system_none_is_a_unit_clock(make_cfg, tmp_path):
    m = metrics(make_cfg, tmp_path, "backend=vectorized")
    assert m["time_s"].tolist() == [0.0, 1.0, 2.0] and m["round"].tolist() == [0, 1, 2]
    assert m["dropped"].tolist() == [0, 0, 0] and m["failed"].tolist() == [0, 0, 0]


def test_over_selection_keeps_the_first_k_and_the_round_lasts_until_the_kth(make_cfg, timed_runs):
    m = timed_runs["vectorized"]
    cfg = make_cfg(*SMALL, *TIMED)
    from sim.system import build_system

    system = build_system(cfg, 8)
    data = load_federated_data(cfg.dataset, cfg.partition, 8, 0)
    # the model's bytes: 64 inputs -> 8 hidden -> 10 classes, float32
    model_bytes = (64 * 8 + 8 + 8 * 10 + 10) * 4
    clock = 0.0
    for r in (1, 2):
        ids = UniformParticipation(8, 0, math.ceil(1.5 * 3)).sample(r).tolist()  # 5 of 8 from the same stream
        steps = [cfg.train.epochs * math.ceil(int(data.client_sizes[k]) / 10) for k in ids]  # batch_size 10
        times = sorted(
            system.latency_s[k] * 2
            + model_bytes / system.bandwidth_down[k]
            + model_bytes / system.bandwidth_up[k]
            + s * 10 * system.compute_s[k]
            for k, s in zip(ids, steps, strict=True)
        )
        clock += times[2]  # the third (K-th) to finish closes the round
        assert m["time_s"][r] == pytest.approx(clock, rel=1e-9)
        assert m["num_participants"][r] == 5 and m["dropped"][r] == 2 and m["failed"][r] == 0
        assert m["bytes_up"][r] == 3 * model_bytes and m["bytes_down"][r] == 5 * model_bytes


def test_sequential_and_vectorized_agree(timed_runs):
    a, b = timed_runs["sequential"], timed_runs["vectorized"]
    for col in ("time_s", "dropped", "failed", "num_participants", "bytes_up"):
        assert a[col].tolist() == b[col].tolist(), col
    np.testing.assert_allclose(a["test_accuracy"], b["test_accuracy"], atol=1e-6)
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], atol=1e-5, equal_nan=True)


@pytest.mark.slow
def test_ray_agrees_with_sequential(make_cfg, tmp_path, timed_runs, ray_session):
    r = metrics(make_cfg, tmp_path, *TIMED, "backend=ray")
    a = timed_runs["sequential"]
    for col in ("time_s", "dropped", "failed", "bytes_up"):
        assert a[col].tolist() == r[col].tolist(), col
    np.testing.assert_allclose(a["test_accuracy"], r["test_accuracy"], atol=1e-5)


def test_subset_batch_keeps_the_rows_of_the_kept_clients_in_every_field():
    batch = ClientBatch(
        client_ids=torch.tensor([4, 1, 7]),
        params=torch.arange(6.0).reshape(3, 2),
        num_samples=torch.tensor([10, 20, 30]),
        train_loss=torch.tensor([0.1, 0.2, 0.3]),
        extras={"start_loss": torch.tensor([1.0, 2.0, 3.0]), "fisher": torch.ones(3, 2)},
        stats={"retries": 0.0},
        num_steps=torch.tensor([1, 2, 3]),
    )
    assert upload_bytes(batch, 100).tolist() == [100 + 4 + 8] * 3
    sub = subset_batch(batch, np.array([True, False, True]))
    assert sub.client_ids.tolist() == [4, 7] and sub.params.tolist() == [[0.0, 1.0], [4.0, 5.0]]
    assert sub.num_samples.tolist() == [10, 30] and sub.num_steps.tolist() == [1, 3]
    assert sub.extras["start_loss"].tolist() == [1.0, 3.0] and sub.extras["fisher"].shape == (2, 2)
    assert sub.train_loss.tolist() == pytest.approx([0.1, 0.3]) and sub.stats == {"retries": 0.0}
    assert subset_batch(batch, np.ones(3, dtype=bool)) is batch


def test_an_extended_run_continues_the_clock(make_cfg, tmp_path, timed_runs):
    from sim.resume import read_checkpoint

    one = make_cfg(*SMALL, *TIMED, "rounds=1", "backend=vectorized")
    run_experiment(one, tmp_path)
    run_experiment(make_cfg(*SMALL, *TIMED, "backend=vectorized"), tmp_path, resume_state=read_checkpoint(tmp_path))
    resumed, straight = pd.read_csv(tmp_path / "metrics.csv"), timed_runs["vectorized"]
    for col in ("time_s", "dropped", "num_participants", "bytes_up"):
        assert resumed[col].tolist() == straight[col].tolist(), col
