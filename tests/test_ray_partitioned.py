"""Partitioned sync gossip on Ray: actors own parts of the graph, models cross only cut edges.

Everything runs on the shared test Ray (2 CPUs); three actors take half a CPU each. Each case is
compared with ``backend=sequential`` column by column (1e-5), the counts each actor reports are
checked against cut edges counted here from the graph and the partition, and a killed actor must
leave the result unchanged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from forked_cli import run_module

pytest.importorskip("ray")
pytest.importorskip("pymetis")

from sim.backends.ray_backend import RayBackend  # noqa: E402
from sim.experiment import build_experiment  # noqa: E402
from sim.gossip.partitioned import PartitionedSyncGossip, round_plan  # noqa: E402
from sim.gossip.sync import round_messages  # noqa: E402
from sim.results import MetricsLog  # noqa: E402
from sim.resume import read_checkpoint  # noqa: E402
from sim.run import run_experiment  # noqa: E402

SMALL = ("mode=gossip", "num_clients=12", "model.hidden=[16]", "rounds=3", "partition=dirichlet", "partition.alpha=0.5")
THREE = ("backend.num_actors=3", "backend.num_cpus=0.5")
EXTRA = {"retries", "models_between_actors", "bytes_between_actors", "driver_bytes", "wall_s"}

CASES = {
    # gossip averaging with message loss on a random graph, three actors (every actor receives from two)
    "gossip_avg_loss": ("topology=random_regular", "topology.degree=4", "strategy=gossip_avg", "gossip.drop_prob=0.3"),
    # variance correction from independent inits (aggregate_all on the actor's local matrix)
    "variance_corrected": (
        "topology=random_regular",
        "topology.degree=4",
        "strategy=variance_corrected",
        "gossip.shared_init=false",
        "gossip.drop_prob=0.2",
    ),
    # a stateful rule (per-node Adam moments, per-node calls) on a graph redrawn every round
    "fedadam_time_varying": (
        "topology=random_regular",
        "topology.degree=4",
        "topology.time_varying=true",
        "strategy=fedadam",
        "gossip.drop_prob=0.2",
        "system=lognormal",  # time_s from per-round link times, as the sequential loop counts them
    ),
    # the one-peer exponential graph (a directed permutation per round) with FedProx's client part
    "one_peer_fedprox": ("topology=exponential", "topology.one_peer=true", "strategy=fedprox"),
    # merge before training, with per-model extras that travel with the models (Fisher diagonals)
    "fisher_merge_update": ("topology=ring", "strategy=fisher_merge", "gossip.order=merge_update", "system=lognormal"),
}


def run_metrics(make_cfg, out: Path, *overrides: str) -> pd.DataFrame:
    run_experiment(make_cfg(*overrides, "backend.num_threads=1"), out)
    return pd.read_csv(out / "metrics.csv")


def assert_same_metrics(seq: pd.DataFrame, part: pd.DataFrame) -> None:
    assert len(seq) == len(part)
    assert set(part.columns) - set(seq.columns) <= EXTRA
    for col in seq.columns:
        if col in EXTRA:
            continue
        a, b = seq[col].to_numpy(float), part[col].to_numpy(float)
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True), (col, a.tolist(), b.tolist())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_partitioned_run_equals_sequential(make_cfg, tmp_path, ray_session, name):
    # Prepare
    overrides = (*SMALL, *CASES[name])
    seq = run_metrics(make_cfg, tmp_path / "seq", *overrides, "backend=sequential")
    # Execute
    part = run_metrics(make_cfg, tmp_path / "ray", *overrides, "backend=ray", *THREE)
    # Assert
    assert_same_metrics(seq, part)
    assert part["retries"].iloc[1:].tolist() == [0.0] * (len(part) - 1)
    assert (part["models_between_actors"].iloc[1:] > 0).all()


def _loop(make_cfg, *overrides: str) -> PartitionedSyncGossip:
    exp = build_experiment(make_cfg(*SMALL, "backend=ray", *THREE, "backend.num_threads=1", *overrides))
    exp.backend.defer_pool = True
    exp.backend.setup(exp.setup)
    return PartitionedSyncGossip(exp, exp.topology, exp.gossip)


def expected_counts(loop: PartitionedSyncGossip, round_: int) -> list[tuple[int, int]]:
    """Per actor, counted from the round's messages and the partition: (delivered messages whose sender
    lives on another actor, distinct such senders)."""
    w, lost = round_messages(loop.topology, round_, loop.cfg.drop_prob, int(loop.exp.cfg.seed))
    rows, cols = (t.numpy() for t in w.indices())
    delivered = (rows != cols) & ~lost.numpy()
    out = []
    for b in range(loop.k):
        cut = delivered & (loop.parts[rows] == b) & (loop.parts[cols] != b)
        out.append((int(cut.sum()), len(set(cols[cut].tolist()))))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [("topology=ring",), ("topology=random_regular", "gossip.drop_prob=0.3")])
def test_each_actor_receives_exactly_its_cut_edges(make_cfg, tmp_path, ray_session, overrides):
    # Prepare
    loop = _loop(make_cfg, "strategy=gossip_avg", "eval_every=2", *overrides)
    seen: list[list[dict[str, int]]] = []

    def checkpoint_after_round_one(round_, params, state):
        if round_ == 1:
            params(), state()  # what run.py's round_end does when a checkpoint is due: gather every part

    try:
        # Execute
        metrics = MetricsLog(tmp_path / "metrics.csv")
        loop.run(metrics, lambda row: seen.append(loop.received), round_end=checkpoint_after_round_one)
        # Assert
        assert np.bincount(loop.parts, minlength=3).min() > 0
        for round_, received in enumerate(seen, start=1):
            expected = expected_counts(loop, round_)
            assert [(r["messages_received"], r["models_received"]) for r in received] == expected
            p = loop.exp.layout.size * 4
            assert [r["bytes_received"] for r in received] == [models * p for _, models in expected]
        if overrides == ("topology=ring",):  # a ring of 12 cut into 3 arcs: 3 cut edges, 2 messages per arc
            assert expected_counts(loop, 1) == [(2, 2)] * 3
            assert loop.cut["cut_edges"] == 3
            # driver_bytes, rounds 1-3 (evaluations after rounds 2 and 3; every model gathered after rounds 1 and 3):
            # round 1 = plan + stats + gather, round 2 = stats + evaluation, round 3 = stats + evaluation + gather,
            # since a static graph without losses puts its plan once and later rounds pass references
            driver = [row["driver_bytes"] for row in metrics.rows[1:]]
            w, lost = round_messages(loop.topology, 1, 0.0, int(loop.exp.cfg.seed))
            rows, cols = w.indices()
            plan = round_plan(rows, cols, w.values(), lost, loop.parts, loop.local, loop.k).nbytes
            n, k, p = loop.n, loop.k, loop.exp.layout.size
            gather = driver[2] - driver[1]  # every node's model (float32) and its id
            assert n * p * 4 <= gather <= n * p * 4 + n * 8 + 100
            evaluation = driver[2] - driver[0] + plan  # per actor: [P] float64 sums in, the [P] float32 mean out
            assert k * p * 12 <= evaluation <= k * p * 12 + 1000
    finally:
        loop.exp.backend.close()


@pytest.mark.slow
def test_a_partition_actor_killed_mid_round_gives_the_fault_free_result(
    make_cfg, tmp_path, ray_session, monkeypatch, caplog
):
    # Prepare: enough local work that the kill lands while the round's calls are queued or running
    overrides = (*SMALL, *CASES["fedadam_time_varying"], "train.local_steps=30", "rounds=4")
    seq = run_metrics(make_cfg, tmp_path / "seq", *overrides, "backend=sequential")
    killed = []

    def kill_in_round_two(backend, round_):
        if round_ == 2:
            victim = backend.partition_actors[1]
            ray_session.kill(victim, no_restart=True)
            killed.append(victim)

    monkeypatch.setattr(RayBackend, "after_submit", kill_in_round_two)
    caplog.set_level(logging.WARNING, logger="sim.gossip")
    # Execute
    part = run_metrics(make_cfg, tmp_path / "ray", *overrides, "backend=ray", *THREE)
    # Assert
    assert killed
    assert_same_metrics(seq, part)
    assert part["retries"].tolist()[1:] == [0.0, 1.0, 0.0, 0.0]
    assert any("partition actor 1 died in round 2" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_checkpoints_are_interchangeable_with_the_sequential_loop(make_cfg, tmp_path, ray_session):
    # Prepare: a stateful rule, 2 rounds partitioned, then 2 more resumed on the sequential backend, and the reverse
    # (backend is a setting a resume may change: it changes how the numbers are computed, not the numbers)
    base = (*SMALL, *CASES["fedadam_time_varying"], "checkpoint.every=1")
    full = run_metrics(make_cfg, tmp_path / "full", *base, "rounds=4", "backend=sequential")
    run_metrics(make_cfg, tmp_path / "a", *base, "rounds=2", "backend=ray", *THREE)
    run_metrics(make_cfg, tmp_path / "b", *base, "rounds=2", "backend=sequential")
    # Execute: the Ray checkpoint resumed by the command line, as a user would (a python -m sim process forked from
    # the tests' server, tests/forked_cli.py); the other one through the API
    argv = [f"resume={tmp_path / 'a'}", "rounds=4", "backend=sequential", "backend.num_threads=1"]
    proc = run_module("sim", argv, tmp_path, timeout=300)
    cfg = make_cfg(*base, "rounds=4", "backend=ray", *THREE, "backend.num_threads=1")
    run_experiment(cfg, tmp_path / "b", None, read_checkpoint(tmp_path / "b"))
    # Assert
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (summary["status"], summary["backend"], summary["config"]["rounds"]) == ("completed", "sequential", 4)
    for name in ("a", "b"):
        assert_same_metrics(full, pd.read_csv(tmp_path / name / "metrics.csv"))
    params = read_checkpoint(tmp_path / "b")["params"]
    assert torch.allclose(params, read_checkpoint(tmp_path / "full")["params"], atol=1e-5)


def test_a_message_of_fedper_counts_its_shared_entries(make_cfg, ray_session):
    # the MLP with one hidden layer of 16: 64 * 16 + 16 shared floats; the last layer (16 * 10 + 10) stays home
    assert _loop(make_cfg, "topology=ring", "strategy=fedper").bytes_per_model == (64 * 16 + 16) * 4


def test_runs_the_driver_loop_where_partitions_cannot_hold_the_run(make_cfg):
    from sim.gossip import partitioned_reason

    exp = build_experiment(make_cfg(*SMALL, "topology=ring", "backend=ray", "gossip.schedule=async"))
    assert "event queue" in partitioned_reason(exp)
    exp = build_experiment(make_cfg(*SMALL, "topology=ring", "backend=ray", "backend.gossip=driver"))
    assert partitioned_reason(exp) == "the backend does not partition the graph"
    exp = build_experiment(make_cfg(*SMALL, "topology=ring", "backend=ray", "attack=sign_flip", "attack.f=1"))
    assert "Byzantine" in partitioned_reason(exp)
    exp = build_experiment(
        make_cfg(*SMALL, "topology=ring", "backend=ray", "eval.clients=all", "eval.local_test_fraction=0.2")
    )
    assert "per-client evaluation" in partitioned_reason(exp)  # docs/evaluation.md: scored in the driver
    exp = build_experiment(make_cfg(*SMALL, "topology=ring", "backend=ray"))
    assert partitioned_reason(exp) is None


def test_payload_bytes_counts_arrays_and_eight_bytes_per_number():
    from sim.backends.ray_partition import payload_bytes

    payload = {
        "acc": np.zeros(3, np.float32),  # 12
        "stats": [1, 2.5, True, None, "xy", np.float64(1.0)],  # 8 + 8 + 8 + 0 + 2 + 8
        "sum": torch.zeros(2, dtype=torch.float64),  # 16
        "nested": ({"ids": np.arange(4, dtype=np.int64)},),  # 32
    }
    assert payload_bytes(payload) == 12 + 34 + 16 + 32
