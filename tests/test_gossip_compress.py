"""Compressed gossip messages: CHOCO on every backend, resumed runs, naive compressed gossip (sync and async) against
a by-hand transcription, the encoded bytes in the bytes columns and in the system model's link times."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module

from sim.experiment import build_experiment
from sim.gossip import AsyncGossip, SyncGossip
from sim.gossip.timing import enabled_system
from sim.results import MetricsLog
from sim.run import run_experiment
from sim.run_state import load_state
from tests import choco_ref

ROUNDS = 3
SMALL = ("mode=gossip", "num_clients=5", "model.hidden=[8]", f"rounds={ROUNDS}", "eval_every=3", "topology=ring")
P = 64 * 8 + 8 + 8 * 10 + 10  # the digits MLP with one hidden layer of 8
CHOCO_QSGD = ("strategy=choco", "strategy.gamma=0.5", "compress=qsgd", "compress.levels=4")


def engine(make_cfg, *overrides: str, schedule=SyncGossip):
    exp = build_experiment(make_cfg(*SMALL, *overrides))
    exp.backend.setup(exp.setup)
    log = MetricsLog(Path("/dev/null"))
    final = schedule(exp, exp.topology, exp.gossip).run(log, lambda row: None)
    return final, log.rows, exp


@pytest.fixture(scope="module")
def sequential_choco():
    """The sequential backend's CHOCO run, which the vectorized and the Ray runs are compared with."""
    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["progress=false", *SMALL, *CHOCO_QSGD, "backend=sequential"])
    return engine(lambda *_: cfg)


def test_choco_gives_the_same_numbers_on_the_sequential_and_vectorized_backends(make_cfg, sequential_choco):
    seq, seq_rows, _ = sequential_choco
    vec, vec_rows, _ = engine(make_cfg, *CHOCO_QSGD, "backend=vectorized")
    torch.testing.assert_close(vec, seq, rtol=0, atol=1e-5)
    assert [r["bytes_up"] for r in vec_rows] == [r["bytes_up"] for r in seq_rows]


def test_choco_gives_the_same_numbers_on_the_ray_backend(make_cfg, ray_session, sequential_choco):
    ray_over = ("backend=ray", "backend.num_actors=2", "backend.num_cpus=0.5")
    ray_run, _, exp = engine(make_cfg, *CHOCO_QSGD, *ray_over)
    exp.backend.close()
    torch.testing.assert_close(ray_run, sequential_choco[0], rtol=0, atol=1e-5)
    from sim.gossip import partitioned_reason

    assert "CHOCO" in str(partitioned_reason(exp))  # the copies stay in the driver; the actors train


def _resume_equals_uninterrupted(make_cfg, tmp_path: Path, args: tuple[str, ...], kept: str, key: str) -> None:
    """A run resumed from the checkpoint ``kept`` of an uninterrupted run (what an interrupted run would have left)
    ends with the uninterrupted run's rows and model, byte for byte; the checkpoint carries ``key``."""
    small = tuple(o for o in SMALL if not o.startswith(("rounds=", "eval_every=")))
    cfg = make_cfg(*small, *args, "rounds=4", "checkpoint.every=1", "checkpoint.keep_every=1", "save_model=true")
    run_experiment(cfg, tmp_path / "full")
    state = load_state(tmp_path / "full" / kept)
    assert float(state["strategy"][key].abs().sum()) > 0  # the copies (residuals) the later rounds need
    run_experiment(cfg, tmp_path / "part", resume_state=state)
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv").drop(columns="wall_s") for d in ("full", "part"))
    assert len(a) == 5 if "checkpoint_round" in kept else len(a) > 3
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert (tmp_path / "full/model.safetensors").read_bytes() == (tmp_path / "part/model.safetensors").read_bytes()


def test_a_resumed_choco_run_equals_the_uninterrupted_run(make_cfg, tmp_path):
    args = ("eval_every=1", "backend=vectorized", *CHOCO_QSGD)
    _resume_equals_uninterrupted(make_cfg, tmp_path, args, "checkpoint_round2.safetensors", "choco_hat")


def test_a_resumed_naive_async_run_with_residuals_equals_the_uninterrupted_run(make_cfg, tmp_path):
    over = ("gossip.schedule=async", "compress=qsgd", "compress.levels=2", "compress.error_feedback=true")
    args = ("backend=vectorized", *over)
    _resume_equals_uninterrupted(make_cfg, tmp_path, args, "checkpoint_eval2.safetensors", "compress_residuals")


@pytest.mark.parametrize("feedback", [False, True])
def test_naive_sync_gossip_merges_its_own_model_with_the_decoded_messages(make_cfg, feedback):
    over = ("compress=topk", "compress.fraction=0.1", f"compress.error_feedback={str(feedback).lower()}")
    final, rows, exp = engine(make_cfg, "backend=vectorized", *over)
    n, k = exp.data.num_clients, math.ceil(0.1 * P)
    w = exp.topology.mixing_matrix(1).to_dense()
    ids = torch.arange(n)
    x = exp.initial_params.unsqueeze(0).repeat(n, 1)
    e = torch.zeros_like(x)
    q = choco_ref.top_k(0.1)
    for round_ in range(1, ROUNDS + 1):
        x = exp.backend.train(ids, x, round_, frozenset()).params
        u = x + e if feedback else x
        sent = torch.stack([q(u[j], j, round_) for j in range(n)])
        if feedback:
            e = u - sent
        off = w - torch.diag(torch.diagonal(w))
        x = torch.diagonal(w).unsqueeze(1) * x + off @ sent
    torch.testing.assert_close(final, x, rtol=0, atol=1e-5)
    assert [r["bytes_up"] for r in rows] == [0] + [2 * n * 8 * k] * ROUNDS


def test_naive_async_gossip_sends_compressed_models_and_counts_their_bytes(make_cfg):
    over = ("backend=vectorized", "gossip.schedule=async", "gossip.protocol=push")
    plain, plain_rows, _ = engine(make_cfg, *over, schedule=AsyncGossip)
    signed, rows, _ = engine(make_cfg, *over, "compress=sign", schedule=AsyncGossip)
    assert [r["messages_sent"] for r in rows] == [r["messages_sent"] for r in plain_rows]  # the same events
    assert sum(r["bytes_up"] for r in rows) == sum(r["messages_sent"] for r in rows) * (4 + math.ceil(P / 8))
    assert sum(r["bytes_up"] for r in plain_rows) == sum(r["messages_sent"] for r in rows) * 4 * P
    assert not torch.allclose(signed, plain, atol=1e-3)


def test_sync_link_times_use_the_encoded_bytes(make_cfg):
    over = ("backend=vectorized", "system=constant", "train.local_steps=2")  # every node the same compute time
    _, exact_rows, exp = engine(make_cfg, *over, "strategy=gossip_avg")
    _, choco_rows, _ = engine(make_cfg, *over, "strategy=choco", "compress=topk", "compress.fraction=0.05")
    link = enabled_system(exp).link_time
    saved = link(1, 0, 4 * P) - link(1, 0, 8 * math.ceil(0.05 * P))
    assert saved > 0
    for a, b in zip(exact_rows[1:], choco_rows[1:], strict=True):
        assert a["time_s"] - b["time_s"] == pytest.approx(saved * a["round"], rel=1e-9)
