"""Topologies: builders, mixing weights, time-varying schedules, summaries and config errors."""

import itertools
import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

import topologies.summary as summary_module
from sim.errors import ConfigError
from topologies import MIXING_RULES, TOPOLOGIES, build_topology, validate_topology_config
from topologies.config import SPECS, most_square

N = 20


def build(name, n=N, seed=0, **params):
    return build_topology({"name": name, **params}, n, seed)


def dense(topology, round_=0):
    w = topology.mixing_matrix(round_)
    assert w.layout == torch.sparse_coo and w.is_coalesced() and w.dtype == torch.float32
    assert tuple(w.shape) == (topology.num_nodes, topology.num_nodes)
    return w.to_dense().double()


def degrees(topology, round_=0):
    return np.array([len(topology.neighbors(i, round_)) for i in range(topology.num_nodes)])


def edge_set(topology, round_=0):
    return {tuple(e) for e in topology.edges(round_).tolist()}


# ----------------------------------------------------------------------------- builders


@pytest.mark.parametrize(
    "name, params, expected",
    [
        ("ring", {}, 2),
        ("torus", {}, 4),
        ("random_regular", {"degree": 4}, 4),
        ("random_regular", {"degree": 3}, 3),
        ("complete", {}, N - 1),
    ],
)
def test_regular_builders_have_the_stated_degree(name, params, expected):
    topology = build(name, **params)
    assert nx.is_connected(topology.graph())
    assert set(degrees(topology)) == {expected}
    assert topology.graph().number_of_nodes() == N


def test_star_hub_is_node_zero():
    topology = build("star")
    d = degrees(topology)
    assert d[0] == N - 1 and set(d[1:]) == {1}
    assert topology.neighbors(5) == [0]


@pytest.mark.parametrize("n, expected", [(16, 7), (8, 5), (20, 8), (2, 1)])
def test_exponential_degree_is_about_two_log2_n(n, expected):
    topology = build("exponential", n=n)
    d = degrees(topology)
    assert set(d) == {expected}
    assert d[0] <= 2 * math.ceil(math.log2(n))
    assert topology.neighbors(0, 0) == sorted(
        {(s * (1 << j)) % n for j in range(max((n - 1).bit_length(), 1)) for s in (1, -1)}
    )


@pytest.mark.parametrize(
    "name, params",
    [
        ("erdos_renyi", {"mean_degree": 6}),
        ("erdos_renyi", {"p": 0.3}),
        ("small_world", {"k": 4, "p": 0.2}),
        ("scale_free", {"m": 2}),
    ],
)
def test_random_builders_are_connected(name, params):
    topology = build(name, **params)
    assert nx.is_connected(topology.graph())
    if name == "small_world":
        assert topology.graph().number_of_edges() == N * params["k"] // 2
    if name == "scale_free":
        assert topology.graph().number_of_edges() == (N - params["m"]) * params["m"]


def test_torus_shape_defaults_to_most_square_and_accepts_one_side():
    assert most_square(20) == (4, 5) and most_square(36) == (6, 6) and most_square(7) == (1, 7)
    torus = build("torus", n=12, rows=3)
    assert torus.params["cols"] == 4 and set(degrees(torus)) == {4}
    assert torus.neighbors(0) == [1, 3, 4, 8]


def test_neighbors_are_sorted_and_match_the_graph():
    topology = build("small_world", k=4, p=0.5)
    for i in range(N):
        assert topology.neighbors(i) == sorted(topology.graph().neighbors(i))


def test_single_node_complete_and_star():
    for name in ("complete", "star"):
        topology = build(name, n=1)
        assert torch.equal(dense(topology), torch.ones(1, 1, dtype=torch.float64))
        assert topology.summary()["connected"] is True


# ----------------------------------------------------------------------------- mixing weights

MIXING_CASES = [
    ("ring", {}),
    ("star", {}),
    ("torus", {}),
    ("scale_free", {}),
    ("erdos_renyi", {}),
    ("exponential", {}),
    ("complete", {}),
]


@pytest.mark.parametrize("name, params", MIXING_CASES)
@pytest.mark.parametrize("rule", MIXING_RULES)
def test_mixing_matrix_properties(name, params, rule):
    topology = build(name, mixing=rule, **params)
    w = dense(topology)
    ones = torch.ones(N, dtype=torch.float64)
    assert (w >= 0).all()
    assert torch.allclose(w.sum(1), ones, atol=1e-6)
    adjacency = torch.from_numpy(nx.to_numpy_array(topology.graph(), nodelist=range(N))) + torch.eye(N)
    assert torch.equal(w > 0, adjacency > 0)  # weights exactly on edges and the diagonal
    if rule in ("metropolis_hastings", "max_degree"):
        assert torch.allclose(w, w.T, atol=1e-7)
        assert torch.allclose(w.sum(0), ones, atol=1e-6)
    else:
        d = torch.tensor(degrees(topology), dtype=torch.float64)
        assert torch.allclose(w[adjacency > 0], (1 / (d + 1))[:, None].expand(N, N)[adjacency > 0], atol=1e-7)


def test_mixing_weights_by_hand_on_a_star_of_three():
    # hub degree 2, leaves degree 1
    mh = dense(build("star", n=3))
    assert torch.allclose(
        mh, torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1 / 3, 2 / 3, 0], [1 / 3, 0, 2 / 3]], dtype=torch.float64), atol=1e-7
    )
    uniform = dense(build("star", n=3, mixing="uniform"))
    assert torch.allclose(
        uniform,
        torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 1 / 2, 0], [1 / 2, 0, 1 / 2]], dtype=torch.float64),
        atol=1e-7,
    )
    max_degree = dense(build("star", n=3, mixing="max_degree"))
    assert torch.allclose(max_degree, mh, atol=1e-7)  # d_max = 2 gives the same weights here


def test_gossip_step_is_a_sparse_product():
    topology = build("ring", n=6)
    x = torch.arange(6, dtype=torch.float32)[:, None]
    mixed = torch.sparse.mm(topology.mixing_matrix(), x)
    assert torch.allclose(mixed[:, 0], torch.tensor([2.0, 1.0, 2.0, 3.0, 4.0, 3.0]))  # (5+0+1)/3, ...


# ----------------------------------------------------------------------------- seeds and rounds


def test_same_seed_same_graph_different_seed_different_graph():
    a, b, c = (build("random_regular", seed=s) for s in (7, 7, 8))
    assert edge_set(a) == edge_set(b)
    assert edge_set(a) != edge_set(c)
    assert torch.equal(a.mixing_matrix().to_dense(), b.mixing_matrix().to_dense())
    assert edge_set(build("erdos_renyi", seed=3)) == edge_set(build("erdos_renyi", seed=3))


def test_static_random_graph_is_the_same_every_round():
    topology = build("random_regular")
    assert not topology.time_varying
    assert topology.graph(5) is topology.graph(0)


def test_time_varying_random_regular_changes_but_is_reproducible():
    first = build("random_regular", time_varying=True, seed=1)
    assert first.time_varying
    rounds = [edge_set(first, r) for r in range(4)]
    assert all(rounds[r] != rounds[r + 1] for r in range(3))
    for r in range(4):
        assert set(degrees(first, r)) == {4} and nx.is_connected(first.graph(r))
    second = build("random_regular", time_varying=True, seed=1)
    assert edge_set(second, 3) == rounds[3]  # asked out of order: same graph for the same (seed, round)
    assert edge_set(second, 1) == rounds[1]
    assert edge_set(first, 0) == edge_set(build("random_regular", seed=1))  # round 0 is the static draw


def test_one_peer_exponential_schedule():
    n = 16
    topology = build("exponential", n=n, one_peer=True)
    assert topology.time_varying and topology.directed and topology.period == 4
    union = set()
    for t in range(2 * topology.period):
        shift = 1 << (t % 4)
        for i in range(n):
            assert topology.neighbors(i, t) == [(i + shift) % n]  # exactly one out-peer
        w = dense(topology, t)
        assert torch.allclose(w.sum(0), torch.ones(n, dtype=torch.float64))
        assert torch.allclose(w.sum(1), torch.ones(n, dtype=torch.float64))
        assert torch.allclose(w.diagonal(), torch.full((n,), 0.5, dtype=torch.float64))
        assert edge_set(topology, t) == edge_set(topology, t + topology.period)  # cycles
        union |= {tuple(sorted(e)) for e in edge_set(topology, t)}
    assert union == edge_set(build("exponential", n=n))
    assert isinstance(topology.graph(1), nx.DiGraph) and topology.graph(1).out_degree(3) == 1
    # round 0 is W = (I + P) / 2 with P the shift by one: |lambda_2| = cos(pi / n)
    assert topology.summary()["spectral_gap"] == pytest.approx(1 - math.cos(math.pi / n), abs=1e-9)


# ----------------------------------------------------------------------------- graph files


def test_edge_list_file(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("# a path 10-20-30 plus 40 hanging off 20\n10 20\n20 30  1.5\n\n40 20 # weight ignored\n30 20\n")
    topology = build("file", n=4, path=str(path))
    assert edge_set(topology) == {(0, 1), (1, 2), (1, 3)}
    assert topology.summary()["diameter"] == 2


def test_graphml_file(tmp_path):
    graph = nx.Graph([(f"n{i}", f"n{(i + 1) % 12}") for i in range(12)])  # a ring with string ids
    path = tmp_path / "g.graphml"
    nx.write_graphml(graph, path)
    topology = build("file", n=12, path=str(path))
    assert edge_set(topology) == edge_set(build("ring", n=12))  # natural order: n2 before n10


def test_disconnected_file_needs_allow_disconnected(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text("0 1\n1 2\n3 4\n")
    with pytest.raises(ConfigError, match="2 connected components") as err:
        build("file", n=5, path=str(path))
    assert err.value.field == "topology.path"
    topology = build("file", n=5, path=str(path), allow_disconnected=True)
    summary = topology.summary()
    assert summary["connected"] is False and summary["components"] == 2
    assert summary["diameter"] is None and summary["spectral_gap"] == 0.0
    assert torch.allclose(dense(topology).sum(1), torch.ones(5, dtype=torch.float64))


def test_file_node_count_must_match(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("0 1\n1 2\n")
    with pytest.raises(ConfigError, match="num_clients=5") as err:
        build("file", n=5, path=str(path))
    assert "3 nodes" in str(err.value)


def test_bad_file_contents(tmp_path):
    bad_list, bad_xml = tmp_path / "bad.txt", tmp_path / "bad.graphml"
    bad_list.write_text("0 1\na b\n")
    bad_xml.write_text("<graphml><oops")
    for path in (bad_list, bad_xml):
        validate_topology_config({"name": "file", "path": str(path)}, 2)  # cheap checks do not read it
        with pytest.raises(ConfigError) as err:
            build("file", n=2, path=str(path))
        assert err.value.field == "topology.path"


# ----------------------------------------------------------------------------- summary


def test_summary_is_json_and_complete():
    summary = build("ring").summary()
    assert json.loads(json.dumps(summary)) == summary
    for key in (
        "name",
        "num_nodes",
        "num_edges",
        "degree_min",
        "degree_max",
        "degree_mean",
        "diameter",
        "connected",
        "spectral_gap",
        "time_varying",
    ):
        assert key in summary
    assert summary["num_edges"] == N and summary["diameter"] == N // 2 and summary["degree_mean"] == 2.0
    assert build("star").summary()["diameter"] == 2 and build("complete").summary()["diameter"] == 1


def test_spectral_gap_complete_is_one_and_ring_gap_shrinks_with_n():
    for rule in MIXING_RULES:
        assert build("complete", mixing=rule).summary()["spectral_gap"] == pytest.approx(1.0, abs=1e-9)
    gaps = [build("ring", n=n).summary()["spectral_gap"] for n in (10, 20, 40, 80)]
    assert all(a > b for a, b in itertools.pairwise(gaps)) and gaps[-1] < 0.01
    for n, gap in zip((10, 20, 40, 80), gaps, strict=True):  # MH ring: eigenvalues (1 + 2 cos(2 pi k / n)) / 3
        assert gap == pytest.approx(2 / 3 * (1 - math.cos(2 * math.pi / n)), abs=1e-9)


def test_uniform_gap_matches_the_nonsymmetric_eigenvalues():
    topology = build("scale_free", mixing="uniform")
    moduli = np.sort(np.abs(np.linalg.eigvals(dense(topology).numpy())))[::-1]
    assert topology.summary()["spectral_gap"] == pytest.approx(1 - moduli[1], abs=1e-6)


def test_estimates_above_the_exact_limit(monkeypatch):
    exact = {name: build(name, n=40).summary() for name in ("ring", "random_regular")}
    exact_one_peer = build("exponential", n=40, one_peer=True).summary()
    monkeypatch.setattr(summary_module, "EXACT_LIMIT", 10)
    for name in ("ring", "random_regular"):
        estimate = build(name, n=40).summary()
        assert estimate["diameter_estimated"] and estimate["spectral_gap_estimated"]
        assert estimate["diameter"] <= exact[name]["diameter"]
        assert estimate["spectral_gap"] == pytest.approx(exact[name]["spectral_gap"], rel=0.05)
    assert build("ring", n=40).summary()["diameter"] == 20  # a double sweep is exact on a ring
    one_peer = build("exponential", n=40, one_peer=True).summary()
    assert one_peer["spectral_gap"] == pytest.approx(exact_one_peer["spectral_gap"], rel=0.05)


# ----------------------------------------------------------------------------- configs and errors


ERROR_CASES = [
    ({"name": "hypercube"}, N, "topology.name"),
    ({"name": "random_regular", "degree": N}, N, "topology.degree"),
    ({"name": "random_regular", "degree": 0}, N, "topology.degree"),
    ({"name": "random_regular", "degree": 3}, 21, "topology.degree"),  # 21 * 3 is odd
    ({"name": "random_regular", "degree": 2.5}, N, "topology.degree"),
    ({"name": "random_regular", "degree": 1}, N, "topology.degree"),  # a perfect matching
    ({"name": "erdos_renyi", "p": 1.5}, N, "topology.p"),
    ({"name": "erdos_renyi", "p": -0.1}, N, "topology.p"),
    ({"name": "erdos_renyi", "mean_degree": N}, N, "topology.mean_degree"),
    ({"name": "small_world", "p": 2}, N, "topology.p"),
    ({"name": "small_world", "k": 1}, N, "topology.k"),
    ({"name": "small_world", "k": N}, N, "topology.k"),
    ({"name": "small_world", "k": 3}, N, "topology.k"),
    ({"name": "scale_free", "m": 0}, N, "topology.m"),
    ({"name": "scale_free", "m": N}, N, "topology.m"),
    ({"name": "ring", "mixing": "laplacian"}, N, "topology.mixing"),
    ({"name": "torus", "rows": 3, "cols": 5}, N, "topology.rows"),
    ({"name": "torus", "rows": 3}, N, "topology.rows"),
    ({"name": "ring"}, 1, "num_clients"),
    ({"name": "exponential"}, 1, "num_clients"),
    ({"name": "file", "path": "/nonexistent/graph.txt"}, N, "topology.path"),
    ({"name": "file", "path": "???"}, N, "topology.path"),
    ({"name": "ring", "degree": 4}, N, "topology.degree"),  # not a key the ring takes
    ({"name": "ring", "allow_disconnected": "yes"}, N, "topology.allow_disconnected"),
    ({"name": "exponential", "one_peer": 1}, N, "topology.one_peer"),
    ({"name": "random_regular", "time_varying": "sometimes"}, N, "topology.time_varying"),
]


@pytest.mark.parametrize("cfg, n, field", ERROR_CASES)
def test_config_errors_name_the_field(cfg, n, field):
    with pytest.raises(ConfigError) as err:
        validate_topology_config(cfg, n)
    assert err.value.field == field and field in str(err.value)
    with pytest.raises(ConfigError):
        build_topology(cfg, n, 0)


def test_unknown_name_lists_the_allowed():
    with pytest.raises(ConfigError) as err:
        validate_topology_config({"name": "hypercube"}, N)
    assert all(name in str(err.value) for name in TOPOLOGIES)


def test_random_graphs_that_stay_disconnected_are_an_error():
    with pytest.raises(ConfigError, match="erdos_renyi.*components") as err:
        build("erdos_renyi", p=0.0, max_tries=3)
    assert err.value.field == "topology.p"
    with pytest.raises(ConfigError) as err:
        build("erdos_renyi", mean_degree=0.5, max_tries=3)
    assert err.value.field == "topology.mean_degree"
    matching = build("random_regular", degree=1, allow_disconnected=True)
    assert set(degrees(matching)) == {1} and matching.summary()["components"] == N // 2
    failures = 0
    for seed in range(10):  # k=2, p=1 on 3,000 nodes is disconnected in most draws
        try:
            assert nx.is_connected(build("small_world", n=3000, k=2, p=1.0, max_tries=1, seed=seed).graph())
        except ConfigError as exc:
            assert exc.field == "topology.k" and "allow_disconnected" in str(exc)
            failures += 1
    assert failures > 0
    loose = build("erdos_renyi", p=0.0, allow_disconnected=True)
    assert loose.summary()["components"] == N and torch.equal(dense(loose), torch.eye(N, dtype=torch.float64))


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "topology"


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_every_yaml_composes_and_documents_every_key(make_cfg, name, tmp_path):
    assert (CONFIG_DIR / f"{name}.yaml").is_file()
    overrides = [f"topology={name}"]
    if name == "file":
        path = tmp_path / "ring.txt"
        path.write_text("".join(f"{i} {(i + 1) % N}\n" for i in range(N)))
        overrides.append(f"topology.path={path}")
    cfg = make_cfg(*overrides)
    assert set(cfg.topology) == {"name", "mixing", "allow_disconnected", *SPECS[name]}
    assert cfg.topology.mixing == "metropolis_hastings" and cfg.topology.allow_disconnected is False
    validate_topology_config(cfg.topology, N)
    topology = build_topology(cfg.topology, N, int(cfg.seed))
    assert topology.name == name and topology.summary()["connected"]
