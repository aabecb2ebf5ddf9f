"""The ray backend: same numbers as the sequential reference, balanced chunks, faults, clusters, bad input.

Every test that starts actors uses the one local Ray of the ``ray_session`` fixture (2 CPUs); the
backend must use it as it is and never shut it down; the cluster tests' "existing cluster" is that Ray too, joined
by its GCS address (a ``ray start`` head of their own cost 10-15 s each).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("ray")

from sim.backends import SequentialBackend, build_backend
from sim.backends.ray_backend import RayBackend
from sim.backends.ray_chunks import balanced_chunks, client_costs
from sim.backends.ray_cluster import pool_size
from sim.errors import ConfigError, RunError
from sim.experiment import build_experiment, validate_config
from sim.run import run_experiment
from sim.threads import usable_cores
from sim.training import TrainConfig, batch_schedule

REPO = Path(__file__).resolve().parent.parent
SMALL = ("num_clients=8", "model.hidden=[16]", "rounds=3", "partition=dirichlet", "partition.alpha=0.3")
COLUMNS = ("test_accuracy", "test_loss", "train_loss")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_metrics(make_cfg, out: Path, *overrides: str) -> pd.DataFrame:
    if "backend=sequential" in overrides:  # one torch thread: two spin-waiting threads crawl on a busy 2-core box
        overrides = (*overrides, "backend.num_threads=1")
    run_experiment(make_cfg(*overrides), out)
    return pd.read_csv(out / "metrics.csv")


def assert_same_metrics(a: pd.DataFrame, b: pd.DataFrame, columns=COLUMNS) -> None:
    assert len(a) == len(b)
    for col in columns:
        assert np.allclose(a[col], b[col], atol=1e-5, equal_nan=True), (col, a[col].tolist(), b[col].tolist())


# ---- chunks and pool sizing (no Ray needed) ---------------------------------------------------


def test_balanced_chunks_cover_every_client_once_with_near_equal_work():
    rng = np.random.default_rng(0)
    costs = rng.integers(1, 40, size=53).tolist()
    for bins in (1, 2, 3, 7):
        chunks = balanced_chunks(costs, bins)
        assert sorted(p for c in chunks for p in c) == list(range(53))
        assert all(c == sorted(c) for c in chunks)
        loads = [sum(costs[p] for p in c) for c in chunks]
        assert max(loads) - min(loads) <= max(costs)  # longest-processing-time bound
        assert chunks == balanced_chunks(costs, bins)  # deterministic
    # one big client and many small ones: counts differ, work does not
    costs = [30] + [1] * 30
    chunks = balanced_chunks(costs, 2)
    assert sorted(map(len, chunks)) == [1, 30] and [sum(costs[p] for p in c) for c in chunks] == [30, 30]
    assert balanced_chunks([5, 5], 4) == [[0], [1]]  # fewer clients than actors: no empty chunks
    assert balanced_chunks([], 3) == []


@pytest.mark.parametrize("cfg", [TrainConfig(epochs=2, batch_size=7), TrainConfig(local_steps=5, batch_size=3)])
def test_client_costs_are_the_steps_batch_schedule_takes(cfg):
    sizes = torch.tensor([0, 1, 6, 7, 8, 50])
    expected = [len(batch_schedule(int(n), cfg, torch.Generator().manual_seed(0))) + 1 for n in sizes]
    assert client_costs(sizes, cfg) == expected


def test_pool_size_follows_cpus_and_gpus_per_actor():
    assert pool_size(None, 1, 0, {"CPU": 2.0}) == 2
    assert pool_size(None, 2, 0, {"CPU": 2.0}) == 1
    assert pool_size(None, 0.5, 0, {"CPU": 2.0}) == 4
    assert pool_size(None, 1, 0.25, {"CPU": 16.0, "GPU": 1.0}) == 4
    assert pool_size(None, 1, 0.25, {"CPU": 16.0, "GPU": 1.0}, reserved_gpus=0.1) == 3
    assert pool_size(3, 1, 0, {"CPU": 4.0}) == 3
    with pytest.raises(ConfigError) as info:
        pool_size(3, 1, 0, {"CPU": 2.0})
    assert info.value.field == "backend.num_actors"
    with pytest.raises(ConfigError) as info:
        pool_size(None, 4, 0, {"CPU": 2.0})
    assert info.value.field == "backend.num_cpus"


# ---- equivalence with the sequential reference -------------------------------------------------


@pytest.fixture(scope="class")
def pool(ray_session):
    """One 2-actor backend for the tests of a class, released when the class is done (the session's
    2 CPUs hold one pool at a time)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["progress=false", *SMALL, "participation.clients_per_round=8", "strategy=fisher_merge"],
        )
    exp = build_experiment(cfg)
    setup = dataclasses.replace(exp.setup, train=TrainConfig(epochs=2, batch_size=7, lr=0.05, momentum=0.9))
    backend = RayBackend()
    backend.setup(setup)
    yield exp, setup, backend
    backend.close()
    assert ray_session.is_initialized()  # a Ray the backend did not start stays up


class TestOnePool:
    """Tests that call ``train`` directly share one 2-actor backend (the ``pool`` fixture)."""

    def test_ray_batches_equal_sequential_per_client(self, pool):
        exp, setup, ray_backend = pool
        seq = SequentialBackend(num_threads=1)
        seq.setup(setup)
        assert len(ray_backend.actors) == 2  # null: as many actors as the session's 2 CPUs hold at 1 each
        ids = torch.tensor([5, 0, 3, 6, 1, 2, 4])
        torch.manual_seed(1)
        per_node = exp.initial_params + 0.01 * torch.randn(7, setup.layout.size)
        calls = [
            (exp.initial_params, 3, frozenset()),  # FL: one shared start
            (per_node, 2, frozenset()),  # sync gossip: one start per node
            (per_node, torch.tensor([1, 4, 2, 2, 7, 3, 1]), frozenset()),  # a start and a round per node
            (exp.initial_params, 1, frozenset({"fisher"})),
        ]
        for start, round_, needs in calls:
            a, b = seq.train(ids, start, round_, needs), ray_backend.train(ids, start, round_, needs)
            assert b.client_ids.tolist() == ids.tolist()
            assert torch.allclose(a.params, b.params, atol=1e-5)
            assert torch.allclose(a.train_loss, b.train_loss, atol=1e-5, equal_nan=True)
            assert a.num_samples.tolist() == b.num_samples.tolist()
            assert a.extras.keys() == b.extras.keys()
            for k in a.extras:
                assert torch.allclose(a.extras[k], b.extras[k], atol=1e-5)
            assert b.stats == {"retries": 0.0}
        single = ray_backend.train(ids[:1], exp.initial_params, 1)  # at most driver_max_clients: in the driver
        assert torch.allclose(single.params, seq.train(ids[:1], exp.initial_params, 1).params)

    def test_actors_take_the_runs_thread_rule(self, pool, ray_session):
        _, _, backend = pool
        assert backend.actor_threads == 1  # a small model, 1 CPU per actor: one thread
        assert [i["threads"] for i in ray_session.get([a.ready.remote() for a in backend.actors])] == [1, 1]

    def test_retries_are_bounded(self, pool, ray_session, monkeypatch):
        exp, _, backend = pool
        monkeypatch.setattr(backend, "max_retries", 0)
        monkeypatch.setattr(RayBackend, "after_submit", lambda b, r: ray_session.kill(b.actors[0], no_restart=True))
        with pytest.raises(RunError, match="max_retries=0"):
            backend.train(torch.arange(8), exp.initial_params, 1)


RUNS = {  # name: (overrides of both runs, overrides of the ray run)
    "fedavg": (("participation.clients_per_round=5",), ()),
    "sync_gossip": (("mode=gossip", "topology=ring", "strategy=gossip_avg"), ()),
    # the driver-side loop: every round's start models go to the training actors and back
    "sync_gossip_driver": (("mode=gossip", "topology=ring", "strategy=gossip_avg"), ("backend.gossip=driver",)),
    "async_gossip": (("mode=gossip", "topology=ring", "strategy=gossip_avg", "gossip.schedule=async", "rounds=1"), ()),
    # per-client Fisher extras from vmapped chunks, reassembled, sent to the aggregator actor with the models
    "fisher_vectorized_worker": (
        ("strategy=fisher_merge", "participation.clients_per_round=5"),
        ("backend.inner=vectorized", "backend.aggregate_on=worker"),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_whole_run_matches_sequential(make_cfg, tmp_path, ray_session, name):
    both, ray_only = RUNS[name]
    seq = run_metrics(make_cfg, tmp_path / "seq", *SMALL, *both, "backend=sequential")
    ray_ = run_metrics(make_cfg, tmp_path / "ray", *SMALL, *both, "backend=ray", *ray_only)
    assert_same_metrics(seq, ray_)
    if name != "async_gossip":
        assert ray_["retries"].iloc[1:].tolist() == [0.0] * (len(ray_) - 1)  # the column exists on every round


@pytest.mark.slow
def test_aggregation_on_a_worker_falls_back_to_the_cpu_and_equals_the_driver(make_cfg, tmp_path, ray_session):
    run = (*SMALL, "strategy=fedadam", "participation.clients_per_round=5")  # a rule with server state
    driver = run_metrics(make_cfg, tmp_path / "driver", *run, "backend=sequential")
    exp = build_experiment(
        make_cfg(
            *run,
            "backend=ray",
            "backend.aggregate_on=worker",
            "backend.device=auto",
            "backend.num_cpus=2",
            "backend.num_threads=2",
        )
    )
    assert isinstance(exp.backend, RayBackend)
    exp.backend.setup(exp.setup)
    try:
        assert len(exp.backend.actors) == 1  # 2 CPUs per actor on a 2-CPU Ray
        aggregator = ray_session.get(exp.backend.aggregator.ready.remote())
        assert aggregator["device"] == "cpu"  # no GPU here
        # backend.num_threads reaches every actor (their environment says OMP_NUM_THREADS=1)
        assert ray_session.get(exp.backend.actors[0].ready.remote())["threads"] == 2 == aggregator["threads"]
        from sim.federated import run_federated
        from sim.results import MetricsLog

        log = MetricsLog(tmp_path / "worker" / "metrics.csv")
        run_federated(exp, log)
        log.flush()
    finally:
        exp.backend.close()
    assert_same_metrics(driver, pd.read_csv(tmp_path / "worker" / "metrics.csv"))


# ---- faults ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_actor_killed_mid_round_is_retried_and_the_result_is_unchanged(
    make_cfg, tmp_path, ray_session, monkeypatch, caplog
):
    # enough local work (400 steps, ~0.2 s per chunk) that the kill lands while the actor trains
    run = (*SMALL, "participation.clients_per_round=8", "train.local_steps=100")
    seq = run_metrics(make_cfg, tmp_path / "seq", *run, "backend=sequential")
    killed = []

    def kill_in_round_two(backend, round_):
        if round_ == 2:
            victim = backend.actors[0]
            ray_session.kill(victim, no_restart=True)  # a real kill of a live actor process
            killed.append(victim)

    monkeypatch.setattr(RayBackend, "after_submit", kill_in_round_two)
    caplog.set_level(logging.WARNING, logger="sim.backends.ray")
    ray_ = run_metrics(make_cfg, tmp_path / "ray", *run, "backend=ray")
    assert killed
    assert_same_metrics(seq, ray_)
    assert ray_["retries"].tolist()[1:] == [0.0, 1.0, 0.0]  # round 3 runs on the replacement
    assert any("died in round 2" in r.getMessage() and "re-running" in r.getMessage() for r in caplog.records)


# ---- an existing cluster -----------------------------------------------------------------------


def _processes_of(group: int, marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            pgid = os.getpgid(int(pid))
        except OSError:
            continue
        if pgid == group or marker in cmd:
            found.append(f"{pid} {cmd[:80]}")
    return found


@contextlib.contextmanager
def ray_root(cluster: str):
    """A temp root whose ``ray/ray_current_cluster`` names ``cluster``, as ``ray start`` writes it: a process with
    ``RAY_TMPDIR=ROOT`` finds it as a plain ``ray.init()`` finds that of a ``ray start`` in /tmp/ray. Afterwards
    kills whatever still runs under the root (never `ray stop`, which would stop every Ray of this user)."""
    root = tempfile.mkdtemp(prefix="gsray", dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        (Path(root) / "ray").mkdir()
        (Path(root) / "ray" / "ray_current_cluster").write_text(cluster)
        yield root
    finally:
        left = _processes_of(-1, root)
        for line in left:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
    assert not left, left


def _gcs_address(ray) -> str:
    """HOST:PORT of the running Ray's GCS, as another driver joins it."""
    return ray.get_runtime_context().gcs_address


def _jobs() -> int:
    """How many drivers have joined this process's Ray (itself included), from its GCS job table."""
    from ray._private import state

    return len(state.jobs())


def run_cli(out: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sim", "progress=false", *overrides, f"hydra.run.dir={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.slow
def test_runs_on_an_existing_cluster_by_address(make_cfg, tmp_path, ray_session):
    # the existing cluster is the tests' shared Ray (a head of its own cost ~10 s more); a job of another driver
    # appears in its job table only if the run joined it
    run = ("num_clients=6", "model.hidden=[8]", "rounds=2", "participation.clients_per_round=4")
    jobs_before = _jobs()
    result = run_cli(tmp_path / "cluster", *run, "backend=ray", f"backend.address={_gcs_address(ray_session)}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _jobs() == jobs_before + 1
    seq = run_metrics(make_cfg, tmp_path / "seq", *run, "backend=sequential")
    assert_same_metrics(seq, pd.read_csv(tmp_path / "cluster" / "metrics.csv"))


NULL_RUN = ("num_clients=6", "model.hidden=[8]", "rounds=2", "participation.clients_per_round=4", "backend=ray")


def _assert_own_local_ray(result: subprocess.CompletedProcess, out: Path) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    cores = usable_cores()
    if cores > 1:  # the head has 1 CPU, so its pool would be one actor; a Ray of our own has one per core
        assert f"ray backend: {cores} training actor(s)" in result.stdout, result.stdout[-3000:]


@pytest.mark.slow
def test_address_null_starts_its_own_ray_while_another_runs(tmp_path, ray_session):
    # the other Ray is the tests' shared one (a `ray start` head of its own cost ~15 s more), named by the root's
    # cluster file: a plain ray.init() with RAY_TMPDIR=root would join it and add a job to its table
    with ray_root(_gcs_address(ray_session)) as root:
        jobs_before = _jobs()
        result = run_cli(tmp_path / "run", *NULL_RUN, env={"RAY_TMPDIR": root})
        _assert_own_local_ray(result, tmp_path / "run")
        assert _jobs() == jobs_before


@pytest.mark.slow
@pytest.mark.xdist_group("own_ray")  # its run's small Ray of its own may run beside the group "ray" (conftest.py)
def test_address_null_ignores_a_stale_session_file(tmp_path):
    with ray_root(f"127.0.0.1:{free_port()}") as root:  # a head long gone
        result = run_cli(tmp_path / "run", *NULL_RUN, env={"RAY_TMPDIR": root})
        _assert_own_local_ray(result, tmp_path / "run")


# ---- bad input ---------------------------------------------------------------------------------


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(ConfigError) as info:
        build_backend({"name": "ray"})
    assert info.value.field == "backend.name" and 'pip install "gossipsoup[ray]"' in str(info.value)


def test_importing_the_backends_does_not_import_ray():
    code = "import sys, sim.backends, sim.experiment; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.mark.parametrize("address", ["ray://127.0.0.1:{port}", "127.0.0.1:{port}", "nohost"])
def test_an_unreachable_address_is_a_config_error_at_once(make_cfg, address):
    address = address.format(port=free_port())  # nothing listens there
    # the refusal is the config check's (a ConfigError naming the field), raised before ray.init could retry
    with pytest.raises(ConfigError) as info:
        validate_config(make_cfg("backend=ray", f"backend.address={address}"))
    assert info.value.field == "backend.address"


@pytest.mark.slow
def test_an_unreachable_address_exits_2_from_the_port_check_not_ray_clients_retries():
    # "connection refused at HOST:PORT" comes from the socket check made before ray.init, so the run never enters
    # Ray Client's 5 + 10 + 15 s retries; timeout=60 only guards against a hang (no timed assert: CI may be loaded)
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "sim", "backend=ray", f"backend.address=ray://127.0.0.1:{port}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "backend.address" in result.stderr and "Traceback" not in result.stderr
    assert f"connection refused at 127.0.0.1:{port}" in result.stderr and "is not allowed" not in result.stderr


def test_gpus_asked_where_there_are_none(make_cfg, ray_session, monkeypatch):
    if ray_session.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this machine has GPUs")
    # a Ray the backend would start on this GPU-less machine: refused while the config is validated
    monkeypatch.setattr(ray_session, "is_initialized", lambda: False)
    with pytest.raises(ConfigError) as info:
        validate_config(make_cfg("backend=ray", "backend.num_gpus=1"))
    assert info.value.field == "backend.num_gpus"
    monkeypatch.undo()
    # a running Ray without GPUs: refused at setup, before any actor starts
    exp = build_experiment(
        make_cfg("num_clients=4", "participation.clients_per_round=2", "backend=ray", "backend.num_gpus=0.5")
    )
    with pytest.raises(ConfigError) as info:
        exp.backend.setup(exp.setup)
    exp.backend.close()
    assert info.value.field == "backend.num_gpus" and "no GPU" in str(info.value)
    with pytest.raises(ConfigError) as info:
        validate_config(make_cfg("backend=ray", "backend.device=cuda"))
    assert info.value.field == "backend.device"


@pytest.mark.parametrize(
    "override, field",
    [
        ("backend.num_actors=0", "backend.num_actors"),
        ("backend.num_cpus=0", "backend.num_cpus"),
        ("backend.num_gpus=-1", "backend.num_gpus"),
        ("backend.aggregate_on=gpu", "backend.aggregate_on"),
        ("backend.device=tpu", "backend.device"),
        ("backend.max_retries=-1", "backend.max_retries"),
        ("backend.inner=ray", "backend.inner"),
        ("+backend.colour=red", "backend.colour"),
    ],
)
def test_bad_options_name_their_field(make_cfg, override, field):
    with pytest.raises(ConfigError) as info:
        validate_config(make_cfg("backend=ray", override))
    assert info.value.field == field
