"""(c) A real Flower deployment on loopback runs the example app (experiments/flower_app).

The test starts one ``flower-superlink`` and two ``flower-supernode`` processes (insecure, free ports
on 127.0.0.1, a temporary FLWR_HOME holding the SuperLink connection), submits the app with
``flwr run ... --stream``, and reads the per-round test accuracy the ServerApp writes to
``result-path``. One round: each round costs two ClientApp processes (one per message) and Flower's
3 s polls; state across rounds is the simulation test's and the adapter tests' job. Every process it
starts gets its own process group (the SuperLink and SuperNodes spawn ServerApp / ClientApp children)
and the whole group is stopped in the fixture's teardown, whatever happened; nothing is stopped by name.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("flwr")

APP = Path(__file__).resolve().parents[1] / "experiments" / "flower_app"
ROUNDS = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Pids of ``pid``'s children, grandchildren, ... (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def signal_quietly(kill, target: int, sig: int) -> None:
    try:
        kill(target, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(procs: list[subprocess.Popen]) -> None:
    """Stop processes we started and everything they started, then reap them.

    SIGTERM to each one's process group (``start_new_session=True`` made the group id its pid), all at
    once so that their shutdowns overlap, up to 10 s in all to exit, then SIGKILL to each group and, by
    pid, to descendants that left the group (the SuperLink starts its SuperExec in a new session; the
    SuperExec also exits on its own when its parent does).
    """
    spawned = {proc.pid: descendants(proc.pid) for proc in procs}
    for proc in procs:
        signal_quietly(os.killpg, proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        signal_quietly(os.killpg, proc.pid, signal.SIGKILL)
        for pid in spawned[proc.pid] + descendants(proc.pid):
            signal_quietly(os.kill, pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"flower-superlink exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"flower-superlink not healthy on port {port} after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def deployment(tmp_path):
    """A SuperLink and two SuperNodes on loopback; yields (env, connection name, logs dir)."""
    for tool in ("flower-superlink", "flower-supernode", "flwr"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH")
    home = tmp_path / "flwr_home"
    home.mkdir()
    link = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test-deployment"\n\n'
        f'[superlink.test-deployment]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    started: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w")
        proc = subprocess.Popen(
            args, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        started.append(proc)
        return proc

    try:
        superlink = start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(link),
            "--disable-runtime-dependency-installation",
        )
        wait_healthy(link, superlink, tmp_path / "superlink.log")
        for i in range(2):
            start(
                f"supernode{i}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link}",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--node-config",
                f"partition-id={i} num-partitions=2",
            )
        yield env, "test-deployment", tmp_path
    finally:
        stop(started[::-1])


@pytest.mark.slow
def test_example_app_runs_on_a_real_superlink_and_supernodes(deployment):
    env, connection, logs = deployment
    result = logs / "result.json"
    app = logs / "flower_app"  # a copy: `flwr run` must not touch the repository's files
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))

    proc = subprocess.run(
        [
            "flwr",
            "run",
            str(app),
            connection,
            "--stream",
            "--run-config",
            f'num-server-rounds={ROUNDS} result-path="{result}"',
        ],
        env=env,
        cwd=logs,
        capture_output=True,
        text=True,
        timeout=300,
    )

    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("*.log")))
    assert proc.returncode == 0, f"flwr run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{tails}"
    assert result.is_file(), f"the ServerApp wrote no result:\n{proc.stdout[-3000:]}\n{tails}"
    report = json.loads(result.read_text())
    assert report["status"] == "completed" and report["strategy"] == "fedau"
    accuracy = [row["test_accuracy"] for row in report["rounds"]]
    assert len(accuracy) == ROUNDS + 1
    assert accuracy[-1] > accuracy[0] + 0.3, accuracy  # digits, seed 0: 0.13 at init, 0.64 after one round
    assert report["nodes"] == 2 and report["rejected_replies"] == 0 and report["failed_replies"] == 0
