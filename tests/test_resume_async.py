"""Crash-safe asynchronous gossip: a resume from any evaluation gives the files of the uninterrupted run.

An asynchronous run's checkpoint holds its event queue with the models in flight, the event stream's
generator, training counts, churn and per-node states (sim/gossip/async_state.py). The runs below
have all of them at work: uniform and exponential delays, message loss, session and probability
churn, push, pull and push_pull, batched and event-by-event exchanges, a stateful rule (FedAdam's
moments per node). "Equal" is byte for byte, as in tests/test_resume.py.
"""

import heapq
import shutil
from pathlib import Path

import pytest
import torch
from forked_cli import run_module

from sim.errors import ConfigError
from sim.experiment import build_experiment
from sim.gossip import AsyncGossip
from sim.gossip.async_state import capture, pack_queue, unpack_queue
from sim.gossip.events import DELIVER, EVALUATE, REQUEST, WAKE
from sim.resume import read_checkpoint
from sim.run import run_experiment
from sim.run_state import load_state, save_state
from tests.test_resume import assert_same_run, interrupt_with_sigint, kill_then_resume

BASE = (
    "num_clients=12",
    "model=logreg",
    "save_model=true",
    "progress=false",
    "train.epochs=1",
    "mode=gossip",
    "topology=ring",
    "gossip.schedule=async",
)
RUNS = {
    # gossip averaging, push_pull with uniform delays, losses and on/off sessions
    "push_pull_sessions": (
        "gossip.protocol=push_pull",
        "gossip.delay=uniform",
        "gossip.delay_low=0.1",
        "gossip.delay_value=0.8",
        "gossip.drop_prob=0.2",
        "gossip.churn=sessions",
        "gossip.mean_online=3",
        "gossip.mean_offline=1",
    ),
    # FedAdam's moments and step in every node, pulls, exponential delays, per-slot churn, merge_update
    "fedadam_pull_probability": (
        "strategy=fedadam",
        "gossip.protocol=pull",
        "gossip.order=merge_update",
        "gossip.clock=periodic",
        "gossip.delay=exponential",
        "gossip.delay_value=0.4",
        "gossip.drop_prob=0.1",
        "gossip.churn=probability",
        "gossip.online_prob=0.8",
        "gossip.eval_interval=0.75",
    ),
    # FedAU's per-node intervals, one exchange at a time, independent inits
    "fedau_unbatched": (
        "strategy=fedau",
        "gossip.batch_exchanges=false",
        "gossip.shared_init=false",
        "gossip.delay=constant",
        "gossip.delay_value=0.3",
        "gossip.drop_prob=0.2",
    ),
}


def _cfg(make_cfg, name: str, *extra: str):
    return make_cfg(*BASE, *RUNS[name], *extra)


# ---- the event queue as data ----------------------------------------------------------------------


def test_the_stored_queue_pops_the_same_events_and_stores_an_unchanged_model_once():
    # Prepare: a heap with a wake-up, a pull request, an evaluation and three messages, two of them
    # carrying equal models (a node that sent twice without changing in between)
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, -0.0])
    queue: list = []
    for entry in [
        (0.5, 7, WAKE, (3,)),
        (0.25, 9, DELIVER, (1, 2, a.clone())),
        (1.0, 4, EVALUATE, (1,)),
        (0.75, 11, REQUEST, (2, 5)),
        (0.6, 12, DELIVER, (4, 0, b.clone())),
        (0.3, 13, DELIVER, (1, 0, a.clone())),
    ]:
        heapq.heappush(queue, entry)
    # Execute: through pack, a file and unpack
    packed = pack_queue(queue, torch.zeros(12, 3))
    restored = unpack_queue(packed)
    # Assert: two payload rows (b differs from a in the sign of a zero), same list order, same pops
    assert packed["payloads"].shape == (2, 3)
    assert packed["payload"].tolist().count(-1) == 3
    assert [e[:3] for e in restored] == [e[:3] for e in queue]
    popped = [heapq.heappop(restored) for _ in range(len(restored))]
    expected = [heapq.heappop(queue) for _ in range(len(queue))]
    assert [(e[0], e[1], e[2], e[3][:2]) for e in popped] == [(e[0], e[1], e[2], e[3][:2]) for e in expected]
    for got, want in zip(popped, expected, strict=True):
        if want[2] == DELIVER:
            assert torch.equal(got[3][2], want[3][2]) and str(got[3][2][2].item()) == str(want[3][2][2].item())
    assert all(isinstance(e[0], float) and isinstance(e[1], int) for e in popped)


def test_an_empty_queue_round_trips(tmp_path):
    packed = pack_queue([], torch.zeros(4, 5))
    save_state(tmp_path / "q.safetensors", packed)
    assert packed["payloads"].shape == (0, 5)
    assert unpack_queue(load_state(tmp_path / "q.safetensors")) == []


def test_no_checkpoint_while_deliveries_wait_to_be_trained(make_cfg):
    exp = build_experiment(_cfg(make_cfg, "push_pull_sessions", "rounds=2"))
    runner = AsyncGossip(exp, exp.topology, exp.gossip)
    runner.params = exp.initial_params.expand(12, -1).clone()
    runner.pending = {3: (2, runner.params[2].clone())}
    with pytest.raises(RuntimeError, match="collected deliveries"):
        capture(runner, 1.0, 1)


# ---- in process: resume from each evaluation --------------------------------------------------------


def _resume_copy(full: Path, to: Path, kept: str) -> Path:
    """``full``'s folder as a run killed right after the kept checkpoint ``kept`` (results of later work gone)."""
    shutil.copytree(full, to)
    shutil.copyfile(full / kept, to / "checkpoint.safetensors")
    for name in ("summary.json", "model.safetensors", "accuracy.png"):
        (to / name).unlink()
    return to


@pytest.mark.parametrize("name", list(RUNS))
def test_a_resume_from_any_evaluation_equals_the_uninterrupted_run(make_cfg, tmp_path, name):
    # Prepare: one run keeping a checkpoint at every evaluation
    cfg = _cfg(make_cfg, name, "rounds=4", "checkpoint.every=1", "checkpoint.keep_every=1")
    run_experiment(cfg, tmp_path / "full")
    kept = sorted(p.name for p in (tmp_path / "full").glob("checkpoint_eval*.safetensors"))
    assert len(kept) >= 4
    for name_ in kept:
        # Execute: continue from that evaluation in a copy of the folder
        part = _resume_copy(tmp_path / "full", tmp_path / name_.removesuffix(".safetensors"), name_)
        state = read_checkpoint(part)
        run_experiment(cfg, part, resume_state=state)
        # Assert
        assert_same_run(part, tmp_path / "full")
    queues = [load_state(tmp_path / "full" / k)["strategy"]["queue"] for k in kept]
    assert any(((q["kinds"] == DELIVER) | (q["kinds"] == REQUEST)).any() for q in queues)  # messages in flight


def test_a_resume_with_fewer_rounds_than_the_saved_time_is_refused(make_cfg, tmp_path):
    # Prepare: evaluations every 0.75: the 3rd at time 2.25, that is round 2.25
    cfg = _cfg(make_cfg, "fedadam_pull_probability", "rounds=3", "checkpoint.every=3", "checkpoint.keep_every=3")
    run_experiment(cfg, tmp_path / "run")
    state = load_state(tmp_path / "run" / "checkpoint_eval3.safetensors")
    assert state["round"] == 2.25 and state["evaluation"] == 3
    shorter = _cfg(make_cfg, "fedadam_pull_probability", "rounds=2", "checkpoint.every=3", "checkpoint.keep_every=3")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    # Execute / Assert: rounds=2 ends before the saved moment; refused, nothing written
    with pytest.raises(ConfigError, match="at least 2.25"):
        run_experiment(shorter, tmp_path / "run", resume_state=state)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before


def test_an_extended_run_equals_the_longer_run_in_process(make_cfg, tmp_path):
    # Prepare: 3 rounds (evaluations at 0.75 .. 2.25, then events up to time 3) and 6 rounds
    short = _cfg(make_cfg, "fedadam_pull_probability", "rounds=3", "checkpoint.every=2")
    long = _cfg(make_cfg, "fedadam_pull_probability", "rounds=6", "checkpoint.every=2")
    run_experiment(long, tmp_path / "long")
    run_experiment(short, tmp_path / "short")
    # Execute: continue the finished short run to 6 rounds
    run_experiment(long, tmp_path / "short", resume_state=read_checkpoint(tmp_path / "short"))
    # Assert
    assert_same_run(tmp_path / "short", tmp_path / "long")


# ---- real processes: SIGKILL, SIGINT, extension on the command line -------------------------------


def _run(cwd: Path, *args: str):
    """``python -m sim ARGS`` in a process of its own, forked from a server that imported torch once."""
    return run_module("sim", list(args), cwd)


KILLS = [("push_pull_sessions", 0), ("push_pull_sessions", 1), ("fedadam_pull_probability", 0), ("fedau_unbatched", 0)]


@pytest.mark.slow
@pytest.mark.parametrize("name,seed", KILLS, ids=[f"{n}-{s}" for n, s in KILLS])
def test_sigkill_at_a_random_moment_then_resume_equals_the_uninterrupted_run(tmp_path, name, seed):
    # a checkpoint at every evaluation; the kill lands up to 1 s after the first one
    kill_then_resume(tmp_path, (*BASE, *RUNS[name], "rounds=60", "checkpoint.every=1"), seed, spread=1.0)


@pytest.mark.slow
def test_sigint_saves_the_run_at_the_next_evaluation_and_the_resume_is_exact(tmp_path):
    # Prepare: no periodic checkpoints, so the signal writes the only one
    args = (*BASE, *RUNS["push_pull_sessions"], "rounds=60")
    # Execute: SIGINT once the loop runs; Assert: exit 130, one line with the command (in the helper)
    last = interrupt_with_sigint(tmp_path, args)
    # Assert: a checkpoint at an evaluation, an exact resume
    state = read_checkpoint(tmp_path / "part")
    assert last.split("after round ")[1].split(";")[0] == f"{state['round']:g}"
    assert state["rows"][-1]["time"] == state["strategy"]["time"] and len(state["rows"]) == state["evaluation"] + 1
    resumed = _run(tmp_path, "resume=part")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(tmp_path / "part", tmp_path / "full")


@pytest.mark.slow
def test_a_finished_run_extended_on_the_command_line_equals_the_longer_run(tmp_path):
    args = (*BASE, *RUNS["push_pull_sessions"], "checkpoint.every=5")
    assert _run(tmp_path, *args, "rounds=20", "hydra.run.dir=long").returncode == 0
    assert _run(tmp_path, *args, "rounds=10", "hydra.run.dir=short").returncode == 0
    extended = _run(tmp_path, "resume=short", "rounds=20")
    assert extended.returncode == 0, extended.stderr[-2000:]
    assert_same_run(tmp_path / "short", tmp_path / "long")
