"""The system model's numbers against hand computations and hand transcriptions of FedScale's source."""

from __future__ import annotations

import json
import math
import pickle

import networkx as nx
import numpy as np
import pytest

from sim.errors import ConfigError
from sim.seeding import numpy_rng
from sim.system import SystemModel, build_system
from sim.system.availability import Availability, ClientTrace
from sim.system.convert import convert
from sim.system.fl_round import fl_round_timing

CONSTANT = {
    "name": "constant",
    "compute_s": 0.002,
    "bandwidth_up": 1.25e6,
    "bandwidth_down": 2.5e6,
    "latency_s": 0.05,
    "server_bandwidth": None,
    "deadline_s": None,
    "over_selection": None,
    "availability": None,
    "client_map": "id",
    "links": {"bandwidth": None, "latency_s": None, "path": None},
}


def system(n=4, seed=0, **over) -> SystemModel:
    return build_system({"seed": seed, "system": {**CONSTANT, **over}}, n)


def test_unit_clock_of_system_none():
    s = build_system({"seed": 0, "system": {"name": "none"}}, 3)
    assert not s.enabled and s.server_bandwidth is None
    assert s.task_time(1, 1e9, 1e9, 1e6) == 1.0 and s.compute_time(0, 5) == 1.0
    assert s.download_time(0, 1e9) == 0.0 and s.upload_time(0, 1e9) == 0.0 and s.link_time(0, 2, 1e9) == 0.0
    assert s.available(2, 1e9) and s.available_through(0, 0, 1e9) and s.next_available(0, 7.5) == 7.5


def test_task_time_is_download_plus_compute_plus_upload_by_hand():
    s = system()
    # 0.05 + 1e6 / 2.5e6 = 0.45 down; 300 samples * 0.002 = 0.6 compute; 0.05 + 5e5 / 1.25e6 = 0.45 up
    assert s.task_time(2, 1e6, 5e5, 300) == pytest.approx(1.5, rel=1e-12)
    assert s.download_time(2, 1e6) == pytest.approx(0.45) and s.upload_time(2, 5e5) == pytest.approx(0.45)
    # a peer link: the slower of sender's up and receiver's down, both access latencies
    assert s.link_time(0, 1, 1.25e6) == pytest.approx(0.05 + 0.05 + 1.0)
    # four transfers share a 2e6 bytes/s server link: 5e5 bytes/s each, below the client's own 2.5e6
    shared = system(server_bandwidth=2e6)
    assert shared.download_time(0, 1e6, share=4) == pytest.approx(0.05 + 2.0)
    assert shared.upload_time(0, 1e6, share=1) == pytest.approx(0.05 + 0.8)  # own link is the slower one


def fedscale_completion_time(batch_size, local_steps, upload_size, download_size, compute_speed, bandwidth):
    """Hand transcription of FedScale's ``ClientMetadata.get_completion_time`` (fedscale/cloud/internal/
    client_metadata.py, augmentation_factor=3.0). Units differ from ours: compute_speed is ms per sample,
    bandwidth kbit/s, and the sizes kbit as FedScale's aggregator computes them (``bytes / 1024.0 * 8.``)."""
    augmentation_factor = 3.0
    return {
        "computation": augmentation_factor * batch_size * local_steps * float(compute_speed) / 1000.0,
        "communication": (upload_size + download_size) / float(bandwidth),
    }


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_trace_completion_time_equals_fedscale_on_its_units(tmp_path, fmt):
    capacity = {"0": (162.0, 5648.109619499134), "1": (3.0, 1e6), "2": (1e4, 13.5)}  # values 1e6 apart
    path = tmp_path / f"dev.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps({k: {"computation": c, "communication": b} for k, (c, b) in capacity.items()}))
    elif fmt == "csv":
        path.write_text(
            "client,computation,communication\n" + "".join(f"{k},{c},{b}\n" for k, (c, b) in capacity.items())
        )
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = list(capacity.items())
        pq.write_table(
            pa.table(
                {
                    "client": [int(k) for k, _ in rows],
                    "computation": [v[0] for _, v in rows],
                    "communication": [v[1] for _, v in rows],
                }
            ),
            path,
        )
    s = build_system({"seed": 0, "system": {"name": "trace", "device_file": str(path), "format": "auto"}}, 3)
    model_bytes, batch, steps = 412_345, 20, 7
    for k, (compute_speed, bandwidth) in capacity.items():
        kbit = model_bytes / 1024.0 * 8.0
        ref = fedscale_completion_time(batch, steps, kbit, kbit, compute_speed, bandwidth)
        ours = s.task_time(int(k), model_bytes, model_bytes, batch * steps)
        assert ours == pytest.approx(ref["computation"] + ref["communication"], rel=1e-12)


def test_lognormal_draws_are_median_times_exp_sigma_z_from_one_stream_per_quantity():
    cfg = {
        **CONSTANT,
        "name": "lognormal",
        "compute_s": {"median": 0.002, "sigma": 1.0},
        "bandwidth_up": {"median": 1e6, "sigma": 0.5},
        "bandwidth_down": {"median": 2e6, "sigma": 0.0},
        "latency_s": {"median": 0.05, "sigma": 0.3},
    }
    s = build_system({"seed": 7, "system": cfg}, 5)
    z = numpy_rng(7, "system", "compute_s").standard_normal(5)
    np.testing.assert_allclose(s.compute_s, 0.002 * np.exp(z), rtol=1e-15)
    np.testing.assert_allclose(s.bandwidth_down, 2e6)
    other = build_system({"seed": 7, "system": {**cfg, "bandwidth_up": {"median": 5.0, "sigma": 2.0}}}, 5)
    np.testing.assert_array_equal(other.compute_s, s.compute_s)  # a changed quantity shifts no other draw
    uni = build_system(
        {
            "seed": 7,
            "system": {
                **CONSTANT,
                "name": "uniform",
                "compute_s": {"low": 1, "high": 3},
                "bandwidth_up": {"low": 2, "high": 2},
                "bandwidth_down": {"low": 1, "high": 9},
                "latency_s": {"low": 0, "high": 0},
            },
        },
        4,
    )
    u = numpy_rng(7, "system", "compute_s").random(4)
    np.testing.assert_allclose(uni.compute_s, 1 + 2 * u)


class FedScaleClient:
    """Hand transcription of FedScale's ``ClientMetadata.is_active`` (fedscale/cloud/internal/client_metadata.py):
    a cursor that moves one interval per call, so it is right for queries in increasing time."""

    def __init__(self, traces):
        self.traces, self.behavior_index = traces, 0

    def is_active(self, cur_time):
        norm_time = cur_time % self.traces["finish_time"]
        if norm_time > self.traces["inactive"][self.behavior_index]:
            self.behavior_index += 1
        self.behavior_index %= len(self.traces["active"])
        return self.traces["active"][self.behavior_index] <= norm_time <= self.traces["inactive"][self.behavior_index]


def test_availability_matches_fedscale_is_active_over_several_periods():
    raw = {"active": [2.0, 10.0, 30.0], "inactive": [5.0, 20.0, 31.0], "finish_time": 40.0}
    ours = ClientTrace(np.array(raw["active"]), np.array(raw["inactive"]), raw["finish_time"])
    ref = FedScaleClient(raw)
    for t in np.arange(0.0, 40.0, 0.5):  # small steps: FedScale's cursor then never skips an interval
        assert ours.available(float(t)) == ref.is_active(float(t)), t
    # FedScale's cursor does not return to the first interval when the period restarts (at 42 it still points at
    # [30, 31]); here the trace repeats: 42 is 2 into the second period, inside [2, 5]
    assert ours.available(42.0) and not ref.is_active(42.0)
    assert [ours.available(t) for t in (41.0, 45.0, 45.5, 50.0, 70.5, 71.5)] == [False, True, False, True, True, False]
    avail = Availability([ours])
    assert avail.available_through(0, 42.0, 45.0) and not avail.available_through(0, 42.0, 45.5)
    assert avail.next_available(0, 6.0) == 10.0 and avail.next_available(0, 35.0) == 42.0
    assert avail.next_available(0, 12.0) == 12.0
    # an interval ending at finish_time joins the next period's interval starting at 0
    wrap = ClientTrace(np.array([0.0, 8.0]), np.array([3.0, 10.0]), 10.0)
    assert wrap.online_until(9.0) == 13.0 and Availability([wrap]).available_through(0, 9.0, 12.5)
    always = ClientTrace(np.array([0.0]), np.array([5.0]), 5.0)
    assert always.online_until(123.4) == math.inf


def timing_system(compute_s, availability=None, deadline=None):
    n = len(compute_s)
    return SystemModel(
        True,
        np.array(compute_s, float),
        np.full(n, 1e9),
        np.full(n, 1e9),
        np.zeros(n),
        deadline_s=deadline,
        availability=availability,
    )


def test_round_keeps_the_first_k_ties_by_id_and_lasts_until_the_kth():
    s = timing_system([0.3, 0.1, 0.2, 0.1, 0.5])
    ids = np.arange(5)
    samples = np.full(5, 10.0)  # task times 3, 1, 2, 1, 5 (transfers of 0 bytes take 0 s)
    t = fl_round_timing(s, 0.0, ids, samples, 0.0, np.zeros(5), target=3)
    assert t.keep.tolist() == [False, True, True, True, False] and t.duration == pytest.approx(2.0)
    assert (t.dropped, t.failed) == (2, 0)
    t = fl_round_timing(s, 0.0, ids, samples, 0.0, np.zeros(5), target=1)  # a tie at 1.0: client 1 before 3
    assert t.keep.tolist() == [False, True, False, False, False]
    t = fl_round_timing(s, 0.0, ids, samples, 0.0, np.zeros(5))  # wait for all: the slowest
    assert t.keep.all() and t.duration == pytest.approx(5.0)


def test_deadline_drops_late_clients_and_offline_clients_fail():
    online = ClientTrace(np.array([0.0]), np.array([100.0]), 1000.0)
    leaves = ClientTrace(np.array([0.0]), np.array([10.5]), 1000.0)  # goes offline mid-task
    avail = Availability([online, leaves, online, online])
    s = timing_system([0.3, 0.1, 0.2, 0.5], avail, deadline=4.0)
    t = fl_round_timing(s, 10.0, np.arange(4), np.full(4, 10.0), 0.0, np.zeros(4))
    # times 3, 1, 2, 5: client 1 is online until 10.5 < 11 (failed), client 3 misses the deadline (dropped)
    assert t.keep.tolist() == [True, False, True, False] and (t.dropped, t.failed) == (1, 1)
    assert t.duration == 4.0  # someone did not deliver: the server waits out the deadline
    fast = fl_round_timing(
        timing_system([0.1, 0.2], deadline=4.0), 0.0, np.arange(2), np.full(2, 10.0), 0.0, np.zeros(2)
    )
    assert fast.duration == pytest.approx(2.0) and fast.keep.all()


def test_gossip_links_from_graph_attributes_a_file_and_seeded_draws(tmp_path):
    g = nx.Graph()
    g.add_edge(0, 1, bandwidth=1000.0, latency=0.5)
    g.add_edge(1, 2)
    s = build_system({"seed": 0, "system": CONSTANT}, 3, graph=g)
    assert s.link_time(1, 0, 2000.0) == pytest.approx(2.5)  # either direction of the edge
    assert s.link_time(1, 2, 1.25e6) == pytest.approx(1.1)  # no attributes: the access links
    edges = tmp_path / "g.txt"
    edges.write_text("# u v bandwidth latency\n10 11 500 0.25\n11 12\n")
    s = system(3, links={"bandwidth": None, "latency_s": None, "path": str(edges)})
    assert s.link_time(0, 1, 1000.0) == pytest.approx(2.25)
    drawn = {"bandwidth": {"median": 1e6, "sigma": 1.0}, "latency_s": None, "path": None}
    lognormal = {
        **CONSTANT,
        "name": "lognormal",
        "links": drawn,
        **{k: {"median": 1.0, "sigma": 0.0} for k in ("compute_s", "bandwidth_up", "bandwidth_down", "latency_s")},
    }
    a = build_system({"seed": 3, "system": lognormal}, 4)
    b = build_system({"seed": 3, "system": lognormal}, 4)
    first = [a.link_time(0, 1, 1e6), a.link_time(2, 3, 1e6)]
    assert [b.link_time(3, 2, 1e6), b.link_time(1, 0, 1e6)] == first[::-1]  # order of asking changes nothing
    z = numpy_rng(3, "system", "link", "bandwidth", 0, 1).standard_normal(1)[0]
    assert first[0] == pytest.approx(2.0 + 1e6 / (1e6 * math.exp(z)))


def test_converter_writes_fedscale_pickle_as_json_only_when_allowed(tmp_path):
    src, out = tmp_path / "cap.pkl", tmp_path / "cap.json"
    src.write_bytes(pickle.dumps({7: {"computation": np.float64(162.0), "communication": 5648.1}}))
    with pytest.raises(ConfigError, match="allow-pickle"):
        convert(str(src), str(out), allow_pickle=False)
    assert not out.exists()
    assert convert(str(src), str(out), allow_pickle=True) == 1
    assert json.loads(out.read_text()) == {"7": {"computation": 162.0, "communication": 5648.1}}


def test_vectorized_task_times_equal_the_scalar_ones_bit_for_bit():
    s = build_system(
        {
            "seed": 1,
            "system": {
                **CONSTANT,
                "name": "lognormal",
                "server_bandwidth": 1.2,  # a cap of 0.4 per transfer: some clients below it, some above
                **{
                    k: {"median": 0.7, "sigma": 1.5}
                    for k in ("compute_s", "bandwidth_up", "bandwidth_down", "latency_s")
                },
            },
        },
        6,
    )
    ids, up, samples = np.array([5, 0, 3]), np.array([10.0, 1e6, 3e3]), np.array([7.0, 0.0, 1e5])
    scalar = [s.task_time(int(c), 4e5, float(u), float(n), share=3) for c, u, n in zip(ids, up, samples, strict=True)]
    assert s.task_times(ids, 4e5, up, samples, 3).tolist() == scalar


def test_deadline_is_inclusive_and_over_selection_closes_before_it():
    s = timing_system([0.5, 0.1, 0.2, 0.7], deadline=4.0)  # task times 4.0 (exactly the deadline), 0.8, 1.6, 5.6
    t = fl_round_timing(s, 0.0, np.arange(4), np.full(4, 8.0), 0.0, np.zeros(4))
    assert t.keep.tolist() == [True, True, True, False] and t.dropped == 1 and t.duration == 4.0
    # K = 2 reached at 1.6 s: the server closes the round then, not at the deadline
    t = fl_round_timing(s, 0.0, np.arange(4), np.full(4, 8.0), 0.0, np.zeros(4), target=2)
    assert t.keep.tolist() == [False, True, True, False] and t.dropped == 2 and t.duration == pytest.approx(1.6)
    # K = 4 not reached within the deadline: the round lasts the deadline, three kept
    t = fl_round_timing(s, 0.0, np.arange(4), np.full(4, 8.0), 0.0, np.zeros(4), target=4)
    assert t.keep.sum() == 3 and t.duration == 4.0


def test_offline_gap_mid_task_fails_and_rounds_nobody_delivers():
    gap = ClientTrace(np.array([0.0, 10.8]), np.array([10.5, 100.0]), 1000.0)  # offline in (10.5, 10.8) only
    online = ClientTrace(np.array([0.0]), np.array([1000.0]), 1000.0)
    avail = Availability([online, gap])
    assert avail.available(1, 11.0) and not avail.available_through(1, 10.0, 11.0)
    s = timing_system([0.1, 0.1], avail, deadline=5.0)
    t = fl_round_timing(s, 10.0, np.arange(2), np.full(2, 10.0), 0.0, np.zeros(2))  # both take 1 s
    assert t.keep.tolist() == [True, False] and (t.dropped, t.failed) == (0, 1)
    assert t.duration == 5.0  # a client failed and the server cannot know: it waits out the deadline
    # nobody delivers and there is no deadline: the round lasts as long as its slowest task
    nobody = timing_system([0.1, 0.3], Availability([gap, gap]))
    t = fl_round_timing(nobody, 10.0, np.arange(2), np.full(2, 10.0), 0.0, np.zeros(2))
    assert not t.keep.any() and t.failed == 2 and t.duration == pytest.approx(3.0)


def test_compute_from_model_flops_over_a_drawn_device_speed():
    cfg = {
        **CONSTANT,
        "name": "lognormal",
        "flops_per_s": {"median": 2e9, "sigma": 0.5},
        "model_flops": 3e6,
        **{k: {"median": 1.0, "sigma": 0.0} for k in ("compute_s", "bandwidth_up", "bandwidth_down", "latency_s")},
    }
    s = build_system({"seed": 4, "system": cfg}, 5)
    speed = 2e9 * np.exp(0.5 * numpy_rng(4, "system", "flops_per_s").standard_normal(5))
    np.testing.assert_allclose(s.compute_s, 3e6 / speed, rtol=1e-15)
    assert s.compute_time(3, 100) == pytest.approx(100 * 3e6 / speed[3], rel=1e-12)
    with pytest.raises(ConfigError, match="system.model_flops"):
        build_system({"seed": 4, "system": {**cfg, "model_flops": None}}, 5)


def test_a_gossip_runs_topology_file_fixes_its_links(tmp_path):
    graphml = tmp_path / "g.graphml"
    g = nx.Graph()
    g.add_edge("n2", "n10", bandwidth=100.0, latency=0.5)  # natural order: n2 is node 0, n10 node 1
    g.add_edge("n10", "n11")
    nx.write_graphml(g, graphml)
    cfg = {"seed": 0, "mode": "gossip", "topology": {"name": "file", "path": str(graphml)}, "system": CONSTANT}
    s = build_system(cfg, 3)
    assert s.link_time(0, 1, 50.0) == pytest.approx(1.0) and s.link_time(1, 2, 0.0) == pytest.approx(0.1)
    bad = tmp_path / "bad.txt"
    bad.write_text("0 1 -3 0.1\n1 2\n")
    with pytest.raises(ConfigError, match=r"topology.path.*line 1"):
        build_system({**cfg, "topology": {"name": "file", "path": str(bad)}}, 3)


def test_a_deadline_just_below_the_fastest_task_is_refused():
    import torch

    from sim.system.deadline import check_deadline
    from sim.training import TrainConfig

    train, sizes = TrainConfig(epochs=1, batch_size=10), torch.tensor([25, 5])  # 3 and 1 steps: 30 and 10 samples
    fastest = 0.05 + 1000 / 2.5e6 + 10 * 0.002 + 0.05 + 1000 / 1.25e6  # client 1 by hand: 0.1212 s

    def cfg(deadline):
        return {"mode": "federated", "seed": 0, "system": {**CONSTANT, "deadline_s": deadline}}

    check_deadline(cfg(fastest * 1.001), sizes, train, 1000)
    with pytest.raises(ConfigError, match="system.deadline_s.*0.1212"):
        check_deadline(cfg(fastest * 0.999), sizes, train, 1000)


def test_a_lognormal_draw_that_overflows_to_inf_is_refused_naming_the_client():
    cfg = {
        **CONSTANT,
        "name": "lognormal",
        "bandwidth_up": {"median": 1e307, "sigma": 50.0},
        **{k: {"median": 1.0, "sigma": 0.0} for k in ("compute_s", "bandwidth_down", "latency_s")},
    }
    z = numpy_rng(0, "system", "bandwidth_up").standard_normal(20)
    with np.errstate(over="ignore"):
        first = int(np.flatnonzero(~np.isfinite(1e307 * np.exp(50.0 * z)))[0])  # no draw underflows to 0 here
    with pytest.raises(ConfigError, match=rf"system.bandwidth_up=inf .* Client {first} drew"):
        build_system({"seed": 0, "system": cfg}, 20)
