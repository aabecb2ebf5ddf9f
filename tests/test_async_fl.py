"""Asynchronous FL (sim/async_fl): FedAsync and FedBuff against hand transcriptions of the papers' server loops.

The transcriptions below are written from the papers' pseudo-code, not from sim/async_fl: every client
always busy (concurrency = num_clients, so no random client choice), each task lasting the system
model's task_time (system=uniform: unequal speeds and latencies; digits' Dirichlet split: unequal
client sizes, so unequal steps), arrivals taken in time order, each client trained with the project's
local training on its own stream ("train", n, client) for its n-th task. Slow clients arrive several
server updates late, so the staleness functions act on staleness 0 to 4 and more.
"""

from __future__ import annotations

import heapq
import math

import pandas as pd
import pytest
import torch

from sim.async_fl import run_async_fl
from sim.async_fl.config import staleness_weight
from sim.errors import ConfigError
from sim.experiment import build_experiment, validate_config
from sim.results import MetricsLog
from sim.seeding import torch_generator
from sim.system import build_system
from sim.training import local_train, steps_per_client

BASE = (
    "num_clients=4",
    "model=logreg",
    "backend=sequential",
    "progress=false",
    "train.local_steps=3",
    "federated.schedule=async",
)
ALL_BUSY = (*BASE, "system=uniform", "async_fl.concurrency=4")


def run_engine(cfg, tmp_path):
    exp = build_experiment(cfg)
    exp.backend.setup(exp.setup)
    log = MetricsLog(tmp_path / "metrics.csv")
    try:
        params = run_async_fl(exp, log, lambda row: None)
    finally:
        exp.backend.close()
    return exp, params, log.rows


def s_of(kind: str, staleness: int, a: float, b: float) -> float:
    """Xie et al. section 5.2: constant 1; polynomial (t - tau + 1)^-a; hinge 1 if t - tau <= b, else
    1/(a(t - tau - b) + 1)."""
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return (staleness + 1) ** -a
    return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1)


def arrivals(exp, cfg):
    """Every client busy from time 0: yields (client, its task count) in order of arrival at the server."""
    system = build_system(cfg, exp.data.num_clients)
    nbytes = exp.layout.size * 4
    samples = steps_per_client(exp.data.client_sizes, exp.train) * exp.train.batch_size  # equal: train.local_steps
    heap = []
    for k in range(exp.data.num_clients):
        heapq.heappush(heap, (system.task_time(k, nbytes, nbytes, int(samples[k])), k, 0))
    while True:
        t, k, n = heapq.heappop(heap)
        yield k, n
        heapq.heappush(heap, (t + system.task_time(k, nbytes, nbytes, int(samples[k])), k, n + 1))


def client_train(exp, k: int, n: int, start: torch.Tensor) -> torch.Tensor:
    x, y = exp.data.client(k)
    gen = torch_generator(int(exp.cfg.seed), "train", n, k)
    return local_train(exp.model, exp.layout, start, x, y, exp.train, gen).params


def fedasync_reference(exp, cfg, updates: int, alpha: float, kind: str, a: float, b: float):
    """Xie et al. 2019, Algorithm 1. Worker: receive (x_t, t), tau <- t, train, push (x_new, tau).
    Updater: alpha_t <- alpha * s(t - tau); x_t <- (1 - alpha_t) x_{t-1} + alpha_t x_new.
    (t - tau counts the updates applied since the worker's download: 0 for a fresh model.)"""
    x, t = exp.initial_params.clone(), 0
    held = {k: (x, 0) for k in range(exp.data.num_clients)}  # each worker's (model, tau)
    stalenesses = []
    for k, n in arrivals(exp, cfg):
        start, tau = held[k]
        x_new = client_train(exp, k, n, start)
        alpha_t = alpha * s_of(kind, t - tau, a, b)
        stalenesses.append(t - tau)
        x = (1 - alpha_t) * x + alpha_t * x_new
        t += 1
        held[k] = (x, t)  # the scheduler triggers the worker again with the new model
        if t == updates:
            return x, stalenesses


def fedbuff_reference(exp, cfg, updates: int, K: int, eta_g: float, kind: str, a: float, rule: str):
    """Nguyen et al. 2022, Algorithm 1 (server). On a client's Delta_i = y_0 - y_Q with staleness tau_i:
    Delta_bar <- Delta_bar + s(tau_i) Delta_i, k <- k + 1; if k == K: w <- w - eta_g Delta_bar / K, reset, t <- t + 1.
    rule="median": the coordinate-wise median of the buffered models w - s(tau_i) Delta_i replaces w - Delta_bar / K."""
    w, t = exp.initial_params.clone(), 0
    held = {k: (w, 0) for k in range(exp.data.num_clients)}
    buffer = []
    stalenesses = []
    for k, n in arrivals(exp, cfg):
        y0, tau = held[k]
        delta = y0 - client_train(exp, k, n, y0)
        buffer.append(s_of(kind, t - tau, a, 0) * delta)
        stalenesses.append(t - tau)
        if len(buffer) == K:
            if rule == "mean":
                w = w - eta_g * torch.stack(buffer).sum(0) / K
            else:
                w = w + eta_g * (torch.stack([w - d for d in buffer]).median(0).values - w)
            buffer, t = [], t + 1
        held[k] = (w, t)  # the client downloads the model as it is after its update was taken
        if t == updates:
            return w, stalenesses


@pytest.mark.parametrize(
    "kind, a, b, alpha",
    [("polynomial", 0.5, 4, 0.6), ("hinge", 2.0, 1, 0.8), ("constant", 0.5, 4, 0.5)],
)
def test_fedasync_equals_the_papers_updater(make_cfg, tmp_path, kind, a, b, alpha):
    # Prepare
    cfg = make_cfg(
        *ALL_BUSY,
        "rounds=12",
        "eval_every=4",
        "async_fl.algorithm=fedasync",
        f"async_fl.alpha={alpha}",
        f"async_fl.staleness={kind}",
        f"async_fl.staleness_a={a}",
        f"async_fl.staleness_b={b}",
    )
    # Execute
    exp, params, rows = run_engine(cfg, tmp_path)
    expected, stalenesses = fedasync_reference(exp, cfg, 12, alpha, kind, a, b)
    # Assert
    assert max(stalenesses) >= 3  # slow clients arrive several updates late
    torch.testing.assert_close(params, expected, atol=1e-6, rtol=1e-5)
    assert [r["staleness_max"] for r in rows[1:]] == [max(stalenesses[i : i + 4]) for i in (0, 4, 8)]


@pytest.mark.parametrize(
    "K, eta_g, kind, a, rule",
    [(2, 0.7, "polynomial", 0.5, "mean"), (2, 1.0, "constant", 0.5, "mean"), (3, 0.5, "polynomial", 1.0, "median")],
)
def test_fedbuff_equals_the_papers_server(make_cfg, tmp_path, K, eta_g, kind, a, rule):
    # Prepare: fedavg weighting=uniform is the paper's Delta_bar / K
    strategy = ("strategy=fedavg", "strategy.weighting=uniform") if rule == "mean" else ("strategy=median",)
    cfg = make_cfg(
        *ALL_BUSY,
        *strategy,
        "rounds=5",
        "async_fl.algorithm=fedbuff",
        f"async_fl.buffer_size={K}",
        f"async_fl.server_lr={eta_g}",
        f"async_fl.staleness={kind}",
        f"async_fl.staleness_a={a}",
    )
    # Execute
    exp, params, rows = run_engine(cfg, tmp_path)
    expected, stalenesses = fedbuff_reference(exp, cfg, 5, K, eta_g, kind, a, rule)
    # Assert
    assert max(stalenesses) >= (2 if K == 2 else 1)  # staleness counts server updates: K arrivals each
    torch.testing.assert_close(params, expected, atol=1e-6, rtol=1e-5)
    assert [r["num_participants"] for r in rows[1:]] == [K] * 5
    assert sum(r["staleness_mean"] * K for r in rows[1:]) == pytest.approx(sum(stalenesses))


def test_samples_weighting_averages_the_buffer_by_client_rows(make_cfg, tmp_path):
    # FedBuff's buffer through fedavg weighting=samples differs from the paper's mean (unequal client sizes)
    common = (*ALL_BUSY, "rounds=3", "async_fl.buffer_size=3", "async_fl.staleness=constant")
    _, by_rows, _ = run_engine(make_cfg(*common, "strategy.weighting=samples"), tmp_path)
    _, uniform, _ = run_engine(make_cfg(*common, "strategy.weighting=uniform"), tmp_path)
    assert (by_rows - uniform).abs().max() > 1e-4


def test_unit_clock_rows_by_hand(make_cfg, tmp_path):
    # system=none: every task lasts 1.0 s. C=4, K=2: at t=1 the four first tasks (tau 0) arrive: updates with
    # staleness (0, 0) then (1, 1); their replacements (tau 0, 1, 1, 2) arrive at t=2: staleness (2, 1), (2, 1).
    cfg = make_cfg(*BASE, "num_clients=6", "rounds=4", "async_fl.concurrency=4", "async_fl.buffer_size=2")
    exp, _, rows = run_engine(cfg, tmp_path)
    frame = pd.DataFrame(rows)
    B = exp.layout.size * 4
    assert frame["round"].tolist() == [0, 1, 2, 3, 4]
    assert frame["time_s"].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]
    assert frame["num_participants"].tolist() == [0, 2, 2, 2, 2]
    assert frame["staleness_mean"].tolist()[1:] == [0.0, 1.0, 1.5, 1.5]
    assert frame["staleness_max"].tolist()[1:] == [0, 1, 2, 2]
    assert frame["bytes_up"].tolist()[1:] == [2 * B] * 4
    assert frame["bytes_down"].tolist()[1:] == [6 * B, 2 * B, 2 * B, 2 * B]  # the first four downloads go in row 1
    assert frame["failed"].tolist()[1:] == [0] * 4
    assert frame["test_accuracy"].notna().all()


def test_fedasync_unit_clock_staleness(make_cfg, tmp_path):
    # C=3, one update per arrival: at t=1 staleness 0, 1, 2; from t=2 on every arrival is 2 updates late... and
    # its replacements too: (t=2) tau 1, 2, 3 against versions 3, 4, 5.
    cfg = make_cfg(*BASE, "num_clients=5", "rounds=6", "async_fl.concurrency=3", "async_fl.algorithm=fedasync")
    _, _, rows = run_engine(cfg, tmp_path)
    assert [r["staleness_max"] for r in rows[1:]] == [0, 1, 2, 2, 2, 2]
    assert [r["time_s"] for r in rows[1:]] == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]


def test_staleness_functions():
    assert staleness_weight("constant", 7, 0.5, 4) == 1.0
    assert staleness_weight("polynomial", 3, 0.5, 4) == pytest.approx(0.5)  # FedBuff's 1/sqrt(1 + 3)
    assert staleness_weight("polynomial", 0, 0.5, 4) == 1.0
    assert staleness_weight("hinge", 4, 10.0, 4) == 1.0
    assert staleness_weight("hinge", 6, 10.0, 4) == pytest.approx(1 / 21)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (("async_fl.concurrency=5",), "async_fl.concurrency"),
        (("async_fl.algorithm=fedbuf",), "async_fl.algorithm"),
        (("async_fl.alpha=0",), "async_fl.alpha"),
        (("async_fl.server_lr=-1",), "async_fl.server_lr"),
        (("async_fl.staleness=linear",), "async_fl.staleness"),
        (("async_fl.buffer_size=0",), "async_fl.buffer_size"),
        (("async_fl.algorithm=fedasync", "strategy=fedadam"), "strategy"),
        (("strategy=fedprox",), "federated.schedule"),
        (("attack=sign_flip",), "attack.name"),
        (("dp=central_fixed",), "dp.name"),
        (("system.deadline_s=5",), "system.deadline_s"),
        (("strategy=known_probability",), "strategy"),
        (("strategy=krum", "async_fl.buffer_size=2"), "strategy.f"),
    ],
)
def test_bad_async_settings_are_refused_naming_the_field(make_cfg, overrides, field):
    cfg = make_cfg(*BASE, *overrides) if "async_fl.concurrency=5" in overrides else make_cfg(*ALL_BUSY, *overrides)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert err.value.field.startswith(field), str(err.value)


def test_a_bad_schedule_is_refused_in_gossip_runs_too(make_cfg):
    with pytest.raises(ConfigError, match="federated.schedule"):
        validate_config(make_cfg("mode=gossip", "federated.schedule=asnyc"))


def test_sync_runs_check_the_async_block_but_not_its_bound(make_cfg):
    validate_config(make_cfg("num_clients=4", "participation.clients_per_round=2", "async_fl.concurrency=100"))
    with pytest.raises(ConfigError, match="async_fl.alpha"):
        validate_config(make_cfg("num_clients=4", "participation.clients_per_round=2", "async_fl.alpha=2"))


def test_losses_and_time_columns_are_finite(make_cfg, tmp_path):
    cfg = make_cfg(*BASE, "num_clients=6", "system=lognormal", "rounds=4", "async_fl.concurrency=3")
    _, _, rows = run_engine(cfg, tmp_path)
    times = [r["time_s"] for r in rows]
    assert times == sorted(times) and times[-1] > 0
    assert all(math.isfinite(r["train_loss"]) for r in rows[1:])


def test_offline_clients_fail_their_task_and_free_slots_wait_for_the_next_available_client(make_cfg, tmp_path):
    # Prepare: 3 clients, 2 slots, FedAsync, every task 1.0 s (unit clock) under an availability trace (period 100 s):
    # client 0 always online; client 1 online [0, 0.5] then from 3 (its task started at 0 fails); client 2 from 1.5.
    import numpy as np

    from sim.async_fl import AsyncFL, AsyncFLConfig
    from sim.system import SystemModel
    from sim.system.availability import Availability, ClientTrace

    cfg = make_cfg(*BASE, "num_clients=3", "rounds=4", "async_fl.concurrency=2", "async_fl.algorithm=fedasync")
    exp = build_experiment(cfg)
    exp.backend.setup(exp.setup)
    system = SystemModel.unit(3)
    system.availability = Availability(
        [
            ClientTrace(np.array([0.0]), np.array([100.0]), 100.0),
            ClientTrace(np.array([0.0, 3.0]), np.array([0.5, 100.0]), 100.0),
            ClientTrace(np.array([1.5]), np.array([100.0]), 100.0),
        ]
    )
    log = MetricsLog(tmp_path / "metrics.csv")
    # Execute
    AsyncFL(exp, AsyncFLConfig.from_config(cfg.async_fl, 3), system).run(log, lambda row: None)
    # Assert: t=1 client 0's update, client 1's failure, nobody available until client 2 at 1.5 (a retry), then
    # client 0 again at 2.0, client 2 at 2.5, client 0 at 3.0
    assert [r["time_s"] for r in log.rows] == [0.0, 1.0, 2.0, 2.5, 3.0]
    assert sum(r.get("failed", 0) for r in log.rows) == 1
    assert sum(r["num_participants"] for r in log.rows) == 4
