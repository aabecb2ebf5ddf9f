"""Gossip in simulated time (issue 25): ``time_s`` of sync rounds and async events, by hand on 3 nodes.

The hand cases use one real :class:`sim.system.SystemModel` with constant per-sample compute costs and a link
table of unequal bandwidths (a message is a logistic regression on digits: 650 float32 = 2600 bytes):

- node compute per training (2 steps x batch 10 = 20 samples): c = [0.5, 0.2, 0.1] s per training;
- links: 0-1 2600 B/s + 0.1 s (1.1 s a message), 1-2 1300 B/s (2.0 s), 0-2 26000 B/s + 0.5 s (0.6 s).
"""

from __future__ import annotations

import functools
import heapq
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from sim.experiment import build_experiment
from sim.gossip import AsyncGossip, SyncGossip, async_state
from sim.gossip.events import EVALUATE, WAKE
from sim.gossip.timing import RoundClock
from sim.results import MetricsLog
from sim.system import SystemModel
from sim.system.availability import Availability, ClientTrace
from sim.system.links import Links

TINY = (
    "progress=false",
    "mode=gossip",
    "num_clients=3",
    "model=logreg",
    "partition=iid",
    "train.local_steps=2",
    "train.batch_size=10",
    "backend=sequential",
)
LINKS = {(0, 1): (2600.0, 0.1), (1, 2): (1300.0, 0.0), (0, 2): (26000.0, 0.5)}


@functools.cache
def _built(overrides: tuple[str, ...]):
    """One experiment per config for the whole module (the loops read it; only ``system`` and ``rounds`` vary)."""
    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY, *overrides])
    exp = build_experiment(cfg)
    exp.backend.setup(exp.setup)
    return exp, int(cfg.rounds)


def _exp(*overrides: str, system: SystemModel | None = None):
    """The experiment of ``overrides``; ``system`` replaces the one the config builds (None: the config's)."""
    exp, rounds = _built(overrides)
    exp.system = system
    exp.cfg.rounds = rounds
    return exp


def _hand_system(per_training: list[float], availability: Availability | None = None) -> SystemModel:
    """Constant speeds (seconds per training of 20 samples) and the link table above."""
    ones = np.ones(3)
    return SystemModel(
        True, np.asarray(per_training) / 20, ones, ones, np.zeros(3), availability=availability, links=Links(LINKS)
    )


def _sync_rows(exp, rounds: int = 3) -> list[dict]:
    exp.cfg.rounds = rounds
    log = MetricsLog(Path("unused.csv"))
    SyncGossip(exp, exp.topology, exp.gossip).run(log, lambda row: None)
    return log.rows


def test_message_is_2600_bytes():
    exp = _exp("topology=ring")
    assert exp.layout.size * exp.initial_params.element_size() == 2600  # the hand cases' message size


def test_sync_round_ends_when_the_last_message_is_through():
    # Prepare: update_merge on a triangle; c = [1.0, 0.4, 0.2] per round (one training of 20 samples each)
    exp = _exp("topology=ring", system=_hand_system([1.0, 0.4, 0.2]))
    # Execute
    rows = _sync_rows(exp)
    # Assert: max over sent j -> i of c_j + L_ji: 0->1 2.1, 1->0 1.5, 1->2 2.4, 2->1 2.2, 0->2 1.6, 2->0 0.8 => 2.4
    assert [r["time_s"] for r in rows] == pytest.approx([0.0, 2.4, 4.8, 7.2], rel=1e-12)


def test_a_system_model_changes_no_model_number_of_sync_gossip_and_none_gives_round_numbers():
    timed = _sync_rows(_exp("topology=ring", system=_hand_system([1.0, 0.4, 0.2])))
    unit = _sync_rows(_exp("topology=ring", system=SystemModel.unit(3)))
    assert [r["time_s"] for r in unit] == [0.0, 1.0, 2.0, 3.0]
    for a, b in zip(timed, unit, strict=True):
        assert {k: v for k, v in a.items() if k not in ("time_s", "wall_s")} == {
            k: v for k, v in b.items() if k not in ("time_s", "wall_s")
        }


def _triangle(lost_entries: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A coalesced 3-node mixing matrix (receiver row, sender column) and its lost entries."""
    entries = [(i, j) for i in range(3) for j in range(3)]
    w = torch.sparse_coo_tensor(
        torch.tensor(entries).T, torch.full((9,), 1 / 3), (3, 3), check_invariants=True
    ).coalesce()
    rows, cols = w.indices()
    lost = torch.zeros(9, dtype=torch.bool)
    for receiver, sender in lost_entries:
        lost |= (rows == receiver) & (cols == sender)
    return w, lost


@pytest.mark.parametrize(
    ("order", "compute", "lost", "expected"),
    [
        # update_merge: the lost 1->2 message still occupies its link: c_1 + L_12 = 0.4 + 2.0
        ("update_merge", [1.0, 0.4, 0.2], [(2, 1)], 2.4),
        # merge_update without loss: node 1 waits max(L_01, L_21) = 2.0, then trains 0.4
        ("merge_update", [1.0, 0.4, 0.2], [], 2.4),
        # merge_update, 2->1 lost: node 1 waits 1.1 (+0.4 = 1.5); node 2 waits 2.0 (+0.2 = 2.2); node 0 1.1 + 1.0
        ("merge_update", [1.0, 0.4, 0.2], [(1, 2)], 2.2),
        # merge_update, both 1-2 messages lost: nodes end by 1.1 + 0.1, but the lost messages hold their link 2.0 s
        ("merge_update", [0.1, 0.1, 0.1], [(1, 2), (2, 1)], 2.0),
    ],
)
def test_round_time_rule_by_hand(order, compute, lost, expected):
    clock = RoundClock(_exp("topology=ring", system=_hand_system(compute)), order)
    assert clock.round_time(1, *_triangle(lost), 2600) == pytest.approx(expected, rel=1e-12)
    unit = RoundClock(_exp("topology=ring", system=SystemModel.unit(3)), order)
    assert unit.round_time(1, *_triangle(lost), 2600) == 1.0


def _star_async(system: SystemModel):
    """Star (hub 0); only nodes 1 (t=0.5) and 2 (t=0.7) wake, each pushing to the hub; evaluations every 0.5 s."""
    exp = _exp(
        "topology=star",
        "gossip.schedule=async",
        "gossip.clock=periodic",
        "gossip.wake_interval=10",
        "gossip.eval_interval=0.5",
        "gossip.delay_value=0.05",  # the option a system model replaces
        "rounds=1",
        system=system,
    )
    loop = AsyncGossip(exp, exp.topology, exp.gossip)
    log = MetricsLog(Path("unused.csv"))
    loop.start_events(log)
    loop.queue = [e for e in loop.queue if e[2] == EVALUATE]
    heapq.heapify(loop.queue)
    loop.push(0.5, WAKE, 1)
    loop.push(0.7, WAKE, 2)
    hub: list[torch.Tensor] = []
    state = async_state.capture(loop, 0.0, 0)
    loop.run(
        log,
        lambda row: None,
        resume=SimpleNamespace(params=loop.params, state=state),
        eval_end=lambda k, params, carried: hub.append(params[0].clone()),
    )
    changed = [0.5 * (k + 1) for k in range(1, len(hub)) if not torch.equal(hub[k], hub[k - 1])]
    return log.rows, changed, loop


def test_async_trainings_take_compute_time_and_messages_link_time():
    # Prepare: the hub trains twice per delivery (update_merge) at 0.5 s each; the others never receive
    rows, changed, loop = _star_async(_hand_system([0.5, 0.2, 0.1]))
    # Assert: 2's model arrives at 0.7 + 0.6 = 1.3, the hub trains until 2.3; 1's arrives at 0.5 + 1.1 = 1.6,
    # waits for the hub, trains 2.3 -> 3.3. The hub's model changes between the evaluations 2.0/2.5 and 3.0/3.5.
    assert changed == [2.5, 3.5]
    assert int(loop.trained[0]) == 4 and int(loop.trained[1]) == int(loop.trained[2]) == 0
    assert [r["time_s"] for r in rows] == [r["time"] for r in rows] == [0.5 * k for k in range(21)]
    assert sum(r["messages_lost"] for r in rows) == 0


@pytest.mark.parametrize(
    ("hub_online", "node2_online", "changed_at", "lost"),
    [
        # hub online in [0, 3.0]: the second training (2.3 -> 3.3) would end offline: lost, never started
        ((0.0, 3.0), (0.0, 100.0), [2.5], 1),
        # hub online from 1.5: 2's model arrives offline at 1.3 (lost); 1's at 1.6 trains until 2.6
        ((1.5, 100.0), (0.0, 100.0), [3.0], 1),
        # node 2 offline when it wakes at 0.7: it sends nothing; 1's model trains 1.6 -> 2.6
        ((0.0, 100.0), (1.0, 100.0), [3.0], 0),
    ],
)
def test_async_availability_loses_deliveries(hub_online, node2_online, changed_at, lost):
    # Prepare: online intervals within every 100 s; node 1 always online
    def trace(online):
        return ClientTrace(np.array([online[0]]), np.array([online[1]]), 100.0)

    traces = [trace(hub_online), trace((0.0, 100.0)), trace(node2_online)]
    rows, changed, loop = _star_async(_hand_system([0.5, 0.2, 0.1], Availability(traces)))
    # Assert
    assert changed == changed_at
    assert int(loop.trained[0]) == 2
    assert sum(r["messages_lost"] for r in rows) == lost


def test_async_without_system_keeps_its_delay_options_and_time_s_is_time():
    rows, changed, _ = _star_async(SystemModel.unit(3))
    # delay 0.05, trainings instantaneous: the hub changes at 0.55 and 0.75, both before the first evaluation at 1.0
    assert changed == [1.0]
    assert [r["time_s"] for r in rows] == [r["time"] for r in rows]


def test_sync_resume_continues_time_s():
    # Prepare: the uninterrupted run, and its state after round 2
    system = _hand_system([1.0, 0.4, 0.2])
    exp = _exp("topology=ring", "gossip.drop_prob=0.3", "gossip.order=merge_update", system=system)
    exp.cfg.rounds = 4
    full, saved = MetricsLog(Path("unused.csv")), {}

    def keep(round_, params, carried):
        if round_ == 2:
            saved.update(params=params.clone(), state=carried, rows=[dict(r) for r in full.rows])

    SyncGossip(exp, exp.topology, exp.gossip).run(full, lambda row: None, round_end=keep)
    # Execute
    log = MetricsLog(Path("unused.csv"))
    log.rows = saved["rows"]
    resume = SimpleNamespace(round=2, params=saved["params"], state=saved["state"])
    SyncGossip(exp, exp.topology, exp.gossip).run(log, lambda row: None, resume=resume)
    # Assert
    assert [r["time_s"] for r in log.rows] == [r["time_s"] for r in full.rows]
    assert len({round(b["time_s"] - a["time_s"], 9) for a, b in zip(full.rows, full.rows[1:], strict=False)}) > 1


@pytest.mark.parametrize("order", ["update_merge", "merge_update"])
def test_async_resume_with_trainings_running_equals_the_uninterrupted_run(order):
    # Prepare: lognormal speeds and links from the config, 6 nodes; states kept at every evaluation
    args = ("num_clients=6", "topology=ring", "gossip.schedule=async", "system=lognormal", f"gossip.order={order}")
    args += ("gossip.wake_interval=0.2", "gossip.eval_interval=0.2", "rounds=6", "gossip.protocol=push_pull")
    exp = _exp(*args)
    full, saved = MetricsLog(Path("unused.csv")), {}

    def keep(k, params, carried):
        state = carried()
        if state["staged_nodes"].size and not saved:  # a checkpoint while trainings run
            saved.update(k=k, params=params.clone(), state=state, rows=[dict(r) for r in full.rows])

    final = AsyncGossip(exp, exp.topology, exp.gossip).run(full, lambda row: None, eval_end=keep)
    assert saved, "no evaluation found a training running"
    # Execute
    log = MetricsLog(Path("unused.csv"))
    log.rows = saved["rows"]
    resumed = AsyncGossip(exp, exp.topology, exp.gossip).run(
        log, lambda row: None, resume=SimpleNamespace(params=saved["params"], state=saved["state"])
    )
    # Assert
    assert torch.equal(resumed, final)
    drop = ("wall_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in log.rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in full.rows
    ]


def test_sequential_equals_vectorized_with_a_system_model():
    args = ("num_clients=6", "topology=ring", "system=lognormal", "gossip.drop_prob=0.3")
    for schedule in ("sync", "async"):
        runs = []
        for backend in ("sequential", "vectorized"):
            exp = _exp(*args, f"gossip.schedule={schedule}", f"backend={backend}", "rounds=3")
            log = MetricsLog(Path("unused.csv"))
            loop = (SyncGossip if schedule == "sync" else AsyncGossip)(exp, exp.topology, exp.gossip)
            runs.append((loop.run(log, lambda row: None), log.rows))
        (p_seq, seq), (p_vec, vec) = runs
        assert [r["time_s"] for r in seq] == [r["time_s"] for r in vec]
        assert [r["num_participants"] for r in seq] == [r["num_participants"] for r in vec]
        assert schedule == "async" or seq[-1]["time_s"] != 3.0  # sync: seconds of the system model, not rounds
        assert torch.allclose(p_seq, p_vec, atol=1e-5)
