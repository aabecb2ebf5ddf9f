"""backend.* options: torch's thread count (sim/threads.py) and the checks of every backend key."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sim import threads
from sim.errors import ConfigError
from sim.experiment import validate_config
from sim.run import run_experiment
from sim.threads import (
    WORK_PER_THREAD,
    auto_threads,
    check_num_threads,
    choose_threads,
    configure_threads,
)

TINY = ("num_clients=4", "rounds=1", "participation.clients_per_round=2", "model.hidden=[8]")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---- the automatic rule ------------------------------------------------------------------------


def test_small_models_get_one_thread_whatever_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert auto_threads(4810, 10, cores=64) == 1  # the default MLP on digits
    assert auto_threads(WORK_PER_THREAD - 1, 1, cores=64) == 1


def test_large_models_get_a_thread_per_share_of_work_up_to_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert auto_threads(WORK_PER_THREAD, 1, cores=8) == 1
    assert auto_threads(WORK_PER_THREAD // 4, 12, cores=8) == 3  # parameters x batch is the work
    assert auto_threads(WORK_PER_THREAD, 100, cores=8) == 8
    assert auto_threads(WORK_PER_THREAD, 100, cores=1) == 1


def test_omp_num_threads_caps_the_automatic_count(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert auto_threads(WORK_PER_THREAD, 100, cores=8) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")  # ignored, as torch ignores it
    assert auto_threads(WORK_PER_THREAD, 100, cores=8) == 8


def test_usable_cores_are_the_affinity_mask_not_the_host():
    import os

    assert 1 <= threads.usable_cores() <= len(os.sched_getaffinity(0))


def test_an_explicit_count_wins_over_the_rule(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(3, 10, 10) == (3, "backend.num_threads")
    n, why = choose_threads(None, 10, 10)
    assert n == 1 and why.startswith("auto")


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "2", math.inf])
def test_bad_thread_counts_are_config_errors(value):
    with pytest.raises(ConfigError) as info:
        check_num_threads(value)
    assert info.value.field == "backend.num_threads"


def test_configure_threads_applies_the_count(restore_threads):
    choice = configure_threads(2, 10, 10)
    assert torch.get_num_threads() == 2 and choice.threads == 2
    assert configure_threads(None, 4810, 10).threads == 1 == torch.get_num_threads()
    assert torch.get_num_interop_threads() == 1 or choice.interop_threads == torch.get_num_interop_threads()


# ---- applied at the start of a run and recorded ------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "sequential", "vectorized"])
def test_a_run_applies_and_records_its_thread_count(make_cfg, tmp_path, restore_threads, backend):
    torch.set_num_threads(2)  # torch's default on a 2-core machine
    run_experiment(make_cfg(*TINY, f"backend={backend}"), tmp_path / "auto")
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["threads"]["torch"] == 1 == torch.get_num_threads()
    assert summary["threads"]["rule"].startswith("auto")
    run_experiment(make_cfg(*TINY, f"backend={backend}", "backend.num_threads=2"), tmp_path / "set")
    summary = json.loads((tmp_path / "set" / "summary.json").read_text())
    assert summary["threads"] == {"torch": 2, "interop": torch.get_num_interop_threads(), "rule": "backend.num_threads"}


# ---- every backend key is checked --------------------------------------------------------------

BAD = [  # (backend, override, field)
    *[(b, "backend.num_threads=-2", "backend.num_threads") for b in ("auto", "sequential", "vectorized", "ray")],
    *[(b, "backend.num_threads=0", "backend.num_threads") for b in ("auto", "sequential", "vectorized", "ray")],
    *[(b, "backend.num_threads=1.5", "backend.num_threads") for b in ("auto", "vectorized", "ray")],
    *[(b, "backend.num_threads=true", "backend.num_threads") for b in ("sequential", "ray")],
    *[(b, "backend.chunk_size=0", "backend.chunk_size") for b in ("auto", "vectorized")],
    *[(b, "backend.chunk_size=2.5", "backend.chunk_size") for b in ("auto", "vectorized")],
    *[(b, "backend.chunk_size=true", "backend.chunk_size") for b in ("auto", "vectorized")],
    *[(b, "backend.kernel=fast", "backend.kernel") for b in ("auto", "vectorized")],
    ("ray", "backend.num_cpus=inf", "backend.num_cpus"),
    ("ray", "backend.num_cpus=nan", "backend.num_cpus"),
    ("ray", "backend.num_cpus=-1", "backend.num_cpus"),
    ("ray", "backend.num_cpus=true", "backend.num_cpus"),
    ("ray", "backend.num_gpus=inf", "backend.num_gpus"),
    ("ray", "backend.num_gpus=nan", "backend.num_gpus"),
    ("ray", "backend.aggregator_num_gpus=-0.5", "backend.aggregator_num_gpus"),
    ("ray", "backend.aggregator_num_gpus=inf", "backend.aggregator_num_gpus"),
    ("ray", "backend.num_actors=2.5", "backend.num_actors"),
    ("ray", "backend.num_actors=-3", "backend.num_actors"),
    ("ray", "backend.max_retries=1.5", "backend.max_retries"),
    ("ray", "backend.driver_max_clients=-1", "backend.driver_max_clients"),
    ("ray", "backend.start_timeout_s=inf", "backend.start_timeout_s"),
    ("ray", "backend.start_timeout_s=0", "backend.start_timeout_s"),
    ("ray", "backend.noop_train=1", "backend.noop_train"),
    ("ray", "backend.noop_train=yes", "backend.noop_train"),
    ("ray", "backend.inner=ray", "backend.inner"),
    ("ray", "backend.device=tpu", "backend.device"),
    ("ray", "backend.aggregate_on=gpu", "backend.aggregate_on"),
    ("ray", "backend.runtime_env=[1,2]", "backend.runtime_env"),
    ("ray", "backend.address=''", "backend.address"),
    ("ray", "backend.address=nohost", "backend.address"),
    *[(b, "+backend.colour=red", "backend.colour") for b in ("auto", "sequential", "vectorized", "ray")],
]


@pytest.mark.parametrize("backend, override, field", BAD, ids=[f"{b}:{o}" for b, o, _ in BAD])
def test_every_bad_backend_value_names_its_key(make_cfg, backend, override, field):
    if backend == "ray":
        pytest.importorskip("ray")
    with pytest.raises(ConfigError) as info:
        validate_config(make_cfg(f"backend={backend}", override))
    assert info.value.field == field


@pytest.mark.parametrize("backend", ["auto", "sequential", "vectorized", "ray"])
def test_the_shipped_backend_configs_are_valid(make_cfg, backend):
    if backend == "ray":
        pytest.importorskip("ray")
    validate_config(make_cfg(f"backend={backend}"))


# ---- Ray: honest figures and connection errors -------------------------------------------------


def test_the_no_gpu_error_gives_this_machines_real_cpu_count(monkeypatch):
    ray = pytest.importorskip("ray")
    from sim.backends.ray_backend import RayBackend

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the backend would start Ray here
    with pytest.raises(ConfigError) as info:
        RayBackend(num_gpus=1)
    assert info.value.field == "backend.num_gpus"
    assert f"This machine has {threads.usable_cores()} CPU(s) and no GPU" in str(info.value)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["ray://", ""])
def test_a_refused_connection_says_what_failed_and_what_to_check(make_cfg, scheme):
    pytest.importorskip("ray")
    port = _free_port()  # nobody listens there
    with pytest.raises(ConfigError) as info:
        validate_config(make_cfg("backend=ray", f"backend.address={scheme}127.0.0.1:{port}"))
    message = str(info.value)
    assert info.value.field == "backend.address"
    assert f"connection refused at 127.0.0.1:{port}" in message
    assert "ray start --head" in message and "is not allowed" not in message


#: Ray Client's connection retries (environment variables of ray.util.client.worker), 1 s each instead of 5, 10, 15 s
SHORT_RAY_CLIENT_RETRIES = {"RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1", "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "1"}


@pytest.mark.slow
def test_a_port_that_is_not_a_ray_head_says_what_ray_init_said(tmp_path):
    """Something accepts TCP there but speaks no Ray Client: Ray gives up after its retries (5 + 10 + 15 s by default;
    Ray's own environment variables shorten them to 1 s each here, the message is the same)."""
    pytest.importorskip("ray")
    import os
    import socket
    import subprocess
    import sys
    import threading
    from pathlib import Path

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def close_every_connection():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=close_every_connection, daemon=True).start()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sim",
                *TINY,
                "backend=ray",
                f"backend.address=ray://127.0.0.1:{port}",
                f"hydra.run.dir={tmp_path / 'run'}",
            ],
            cwd=Path(__file__).resolve().parent.parent,
            env={
                **os.environ,
                "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1",
                "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "1",
            },
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        server.close()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the port answers, but ray.init failed: ConnectionError" in result.stderr
    assert "is not allowed" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # no result files
