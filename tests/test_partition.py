"""Graph partitioning for partitioned gossip on Ray: sim/gossip/partition.py (no Ray needed)."""

import importlib.util
import sys

import networkx as nx
import numpy as np
import pytest

from sim.errors import ConfigError
from sim.gossip.partition import PARTITIONERS, cut_summary, partition_edges, partition_nodes
from topologies import build_topology
from topologies.builders import from_networkx

needs_metis = pytest.mark.skipif(importlib.util.find_spec("pymetis") is None, reason="pymetis not installed")


def ring(n):
    i = np.arange(n)
    return np.stack([i, (i + 1) % n], axis=1)


def random_regular(n, degree, seed=0):
    return from_networkx(nx.random_regular_graph(degree, n, seed=seed))


def edge_set(edges):
    return {tuple(e) for e in np.asarray(edges).tolist()}


# ----------------------------------------------------------------------------- partition_nodes: shape and rules
@needs_metis
@pytest.mark.parametrize("method", PARTITIONERS)
@pytest.mark.parametrize("n, k", [(100, 4), (37, 5), (9, 9), (10, 9), (3, 2)])
def test_every_part_is_nonempty_and_ids_in_range(method, n, k):
    # Prepare: a path (a tiny path into ~n parts is where raw METIS leaves parts empty)
    path = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)

    # Execute
    parts = partition_nodes(n, path, k, method, seed=0)

    # Assert
    assert parts.dtype == np.int64 and parts.shape == (n,)
    assert sorted(set(parts.tolist())) == list(range(k))


@needs_metis
def test_tiny_graphs_where_metis_leaves_parts_empty_still_get_every_part():
    # Prepare: star and path of 10 nodes into 10 and 9 parts (raw METIS returns empty parts here)
    star = np.stack([np.zeros(9, dtype=np.int64), np.arange(1, 10)], axis=1)
    path = np.stack([np.arange(9), np.arange(1, 10)], axis=1)

    for edges in (star, path):
        for k in (9, 10):
            # Execute
            parts = partition_nodes(10, edges, k, "metis", seed=0)

            # Assert
            assert np.bincount(parts, minlength=k).min() >= 1
    assert sorted(partition_nodes(10, path, 10, "metis").tolist()) == list(range(10))


@pytest.mark.parametrize(
    "edges, expected",
    [
        ([[0, 1], [1, 2], [2, 3], [3, 4], [1, 4]], [1, 0, 0, 0, 0]),  # node 0: 1 neighbour inside, others 2-3
        ([[0, 1], [0, 2], [1, 2], [2, 3], [3, 4]], [0, 0, 0, 0, 1]),  # node 4: 1 neighbour inside, others 2-3
        ([[0, 1], [1, 2], [2, 3], [3, 4]], [1, 0, 0, 0, 0]),  # nodes 0 and 4 tie: the lower id moves
    ],
)
def test_an_empty_part_takes_the_node_with_fewest_neighbours_inside_the_largest_part(edges, expected):
    # Prepare: all 5 nodes in part 0, part 1 empty (the repair of METIS's output, called directly)
    from sim.gossip.partition import _csr, _fill_empty_parts

    indptr, indices = _csr(np.array(edges), 5)

    # Execute
    parts = _fill_empty_parts(np.zeros(5, dtype=np.int64), 2, indptr, indices)

    # Assert
    assert parts.tolist() == expected


@needs_metis
def test_metis_is_deterministic_for_a_seed():
    # Prepare
    edges = random_regular(500, 6)

    # Execute
    first = partition_nodes(500, edges, 4, "metis", seed=3)
    second = partition_nodes(500, edges.copy(), 4, "metis", seed=3)

    # Assert
    np.testing.assert_array_equal(first, second)


@needs_metis
def test_edge_directions_duplicates_and_self_loops_do_not_change_the_partition():
    # Prepare: the same graph given once as u < v pairs, once reversed, duplicated and with self-loops
    edges = random_regular(200, 4)
    noisy = np.concatenate([edges[:, ::-1], edges, np.stack([np.arange(200), np.arange(200)], axis=1)])

    # Execute / Assert
    np.testing.assert_array_equal(partition_nodes(200, edges, 4), partition_nodes(200, noisy, 4))


def test_one_part_is_all_zeros_without_metis(monkeypatch):
    # Prepare: pymetis unimportable, so a METIS call would raise
    monkeypatch.setitem(sys.modules, "pymetis", None)

    # Execute
    parts = partition_nodes(50, ring(50), 1, "metis")

    # Assert
    np.testing.assert_array_equal(parts, np.zeros(50, dtype=np.int64))


# ----------------------------------------------------------------------------- partition_nodes: quality
@needs_metis
def test_metis_cuts_a_ring_of_100_into_4_arcs_with_4_cut_edges():
    # Prepare
    edges = ring(100)

    # Execute
    parts = partition_nodes(100, edges, 4, "metis", seed=0)
    summary = cut_summary(parts, edges, 4)

    # Assert: the optimum (four arcs of 25 nodes)
    assert summary["cut_edges"] == 4
    assert summary["part_sizes"] == [25, 25, 25, 25]
    assert summary["boundary_nodes"] == [2, 2, 2, 2]


@needs_metis
def test_metis_cut_of_a_20x20_torus_is_far_below_a_random_assignment():
    # Prepare
    edges = np.asarray(build_topology({"name": "torus", "rows": 20, "cols": 20}, 400, 0).edges(0))
    random_parts = np.random.default_rng(0).integers(0, 4, size=400)
    random_cut = cut_summary(random_parts, edges, 4)["cut_edges"]  # about 3/4 of the 800 edges

    # Execute
    metis_cut = cut_summary(partition_nodes(400, edges, 4, "metis"), edges, 4)["cut_edges"]

    # Assert: the optimum is 80 (four 5-row strips or 10x10 blocks); a random assignment cuts ~600
    assert metis_cut < random_cut / 5
    assert metis_cut <= 100


@needs_metis
def test_metis_beats_contiguous_on_a_random_regular_graph():
    # Prepare: ids carry no locality in a random graph, so consecutive blocks cut ~3/4 of the edges
    edges = random_regular(1000, 6)

    # Execute
    metis = cut_summary(partition_nodes(1000, edges, 4, "metis"), edges, 4)["cut_fraction"]
    contiguous = cut_summary(partition_nodes(1000, edges, 4, "contiguous"), edges, 4)["cut_fraction"]

    # Assert (measured: metis 0.37, contiguous 0.76)
    assert metis < 0.8 * contiguous


@needs_metis
@pytest.mark.parametrize("method", PARTITIONERS)
def test_node_weights_balance_the_parts_weights(method):
    # Prepare: a ring whose first half weighs 10 (SGD steps): equal node counts would give one part
    # 10/5.5 = 1.8x the mean weight
    n, k = 1000, 4
    weights = np.ones(n, dtype=np.int64)
    weights[: n // 2] = 10

    # Execute
    weighted = partition_nodes(n, ring(n), k, method, weights)
    unweighted = partition_nodes(n, ring(n), k, method)

    # Assert (measured: 1.004 weighted, 1.82 unweighted)
    part_weights = np.bincount(weighted, weights=weights, minlength=k)
    assert part_weights.max() / part_weights.mean() < 1.05
    unweighted_part_weights = np.bincount(unweighted, weights=weights, minlength=k)
    assert unweighted_part_weights.max() / unweighted_part_weights.mean() > 1.5


@needs_metis
def test_fractional_node_weights_balance_like_their_integer_multiples_and_zero_weights_like_none():
    # Prepare: METIS takes integer weights, fractional ones are scaled (0.1 and 1.0 -> 10^5 and 10^6)
    n, k = 1000, 4
    fractional = np.where(np.arange(n) < n // 2, 1.0, 0.1)

    # Execute
    parts = partition_nodes(n, ring(n), k, "metis", fractional)
    zero = partition_nodes(n, ring(n), k, "metis", np.zeros(n))

    # Assert
    part_weights = np.bincount(parts, weights=fractional, minlength=k)
    assert part_weights.max() / part_weights.mean() < 1.05
    np.testing.assert_array_equal(zero, partition_nodes(n, ring(n), k, "metis"))


@needs_metis
def test_disconnected_graph_with_isolated_nodes_is_cut_along_its_components():
    # Prepare: two rings of 50 (nodes 0..49 and 50..99) and 10 isolated nodes 100..109
    edges = np.concatenate([ring(50), ring(50) + 50])

    # Execute
    parts = partition_nodes(110, edges, 2, "metis")
    summary = cut_summary(parts, edges, 2)

    # Assert: each ring whole in one part, the isolated nodes fill both parts to 55
    assert summary["cut_edges"] == 0
    assert summary["part_sizes"] == [55, 55]


@needs_metis
@pytest.mark.parametrize("method", PARTITIONERS)
def test_a_graph_without_edges_is_split_into_nonempty_parts(method):
    # Execute
    parts = partition_nodes(7, np.zeros((0, 2), dtype=np.int64), 3, method)

    # Assert
    assert sorted(np.bincount(parts, minlength=3).tolist()) == [2, 2, 3]


# ----------------------------------------------------------------------------- contiguous
def test_contiguous_blocks_of_consecutive_ids_balanced_by_count():
    # Execute
    parts = partition_nodes(10, ring(10), 3, "contiguous")

    # Assert: part j starts at the first id whose midpoint i + 1/2 reaches j * 10/3
    assert parts.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]


def test_contiguous_balances_cumulative_weight():
    # Prepare: weights 9, 1 x 9; total 18, target 6 per part
    weights = np.array([9] + [1] * 9)

    # Execute
    parts = partition_nodes(10, ring(10), 3, "contiguous", weights)

    # Assert: boundaries where the weight midpoints pass 6 and 12 (node 1 at 9.5, node 4 at 12.5)
    assert parts.tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize(
    "weights, expected",
    [([100, 1, 1, 1], [0, 1, 2, 2]), ([1, 1, 1, 100], [0, 0, 1, 2]), ([1, 100, 1, 1], [0, 1, 2, 2])],
)
def test_contiguous_keeps_every_part_nonempty_when_one_node_outweighs_the_rest(weights, expected):
    # Execute
    parts = partition_nodes(4, ring(4), 3, "contiguous", np.array(weights))

    # Assert: the heavy node alone in a part, the light ones share the others
    assert parts.tolist() == expected


# ----------------------------------------------------------------------------- partition_edges
def test_partition_edges_of_one_peer_is_the_union_of_one_period():
    # Prepare: the union of one period of the one-peer schedule is the static exponential graph
    one_peer = build_topology({"name": "exponential", "one_peer": True}, 20, 0)
    static = build_topology({"name": "exponential"}, 20, 0)

    # Execute
    edges = partition_edges(one_peer, rounds=100)

    # Assert: tau = 5 shifts (1, 2, 4, 8, 16) -> i +- 2^j for j < 5
    assert one_peer.period == 5
    assert edge_set(edges) == edge_set(static.edges(0))
    assert edges.dtype == np.int64 and bool(np.all(edges[:, 0] < edges[:, 1]))


def test_partition_edges_of_a_static_graph_is_its_graph():
    # Prepare
    topology = build_topology({"name": "random_regular", "degree": 4}, 30, 1)

    # Execute / Assert
    assert edge_set(partition_edges(topology, rounds=10)) == edge_set(topology.edges(0))


@pytest.mark.parametrize("rounds, union_of", [(10, (1, 2, 3)), (2, (1, 2)), (1, (1,)), (0, (1,))])
def test_partition_edges_of_a_resampled_graph_is_the_union_of_its_first_rounds(rounds, union_of):
    # Prepare
    topology = build_topology({"name": "random_regular", "degree": 4, "time_varying": True}, 30, 1)
    expected = set().union(*(edge_set(topology.edges(r)) for r in union_of))

    # Execute
    edges = partition_edges(topology, rounds)

    # Assert
    assert edge_set(edges) == expected
    assert len(edges) == len(expected)


# ----------------------------------------------------------------------------- cut_summary
def test_cut_summary_by_hand_on_two_triangles():
    # Prepare: triangles 0-1-2 and 3-4-5 joined by 2-3, plus a reversed duplicate and a self-loop
    edges = np.array([[0, 1], [1, 2], [2, 0], [3, 4], [4, 5], [5, 3], [2, 3], [1, 0], [4, 4]])
    parts = np.array([0, 0, 1, 1, 1, 2])

    # Execute
    summary = cut_summary(parts, edges, 3)

    # Assert: cut edges 0-2, 1-2, 3-5, 4-5 of 7; each of the 6 nodes has a neighbour in another part
    assert summary == {
        "cut_edges": 4,
        "edges": 7,
        "cut_fraction": pytest.approx(4 / 7),
        "part_sizes": [2, 3, 1],
        "boundary_nodes": [2, 3, 1],
    }


def test_cut_summary_counts_an_inner_node_and_an_empty_edge_list():
    # Prepare: path 0-1-2-3 cut between 2 and 3: only nodes 2 and 3 are on the boundary
    path = np.array([[0, 1], [1, 2], [2, 3]])

    # Execute
    summary = cut_summary(np.array([0, 0, 0, 1]), path, 2)
    empty = cut_summary(np.array([0, 1]), np.zeros((0, 2), dtype=np.int64), 2)

    # Assert
    assert (summary["cut_edges"], summary["boundary_nodes"], summary["part_sizes"]) == (1, [1, 1], [3, 1])
    assert summary["cut_fraction"] == pytest.approx(1 / 3)
    assert (empty["cut_edges"], empty["edges"], empty["cut_fraction"]) == (0, 0, 0.0)


# ----------------------------------------------------------------------------- errors
def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        partition_nodes(10, ring(10), 2, "louvain")
    assert (error.value.field, error.value.value) == ("backend.partition", "louvain")


@pytest.mark.parametrize("method", PARTITIONERS)
def test_more_parts_than_nodes_is_a_config_error(method):
    with pytest.raises(ConfigError) as error:
        partition_nodes(4, ring(4), 5, method)
    assert (error.value.field, error.value.value) == ("backend.num_actors", 5)
    assert "(4)" in str(error.value)


def test_missing_pymetis_names_the_extra_and_the_alternative(monkeypatch):
    # Prepare
    monkeypatch.setitem(sys.modules, "pymetis", None)

    # Execute
    with pytest.raises(ConfigError) as error:
        partition_nodes(10, ring(10), 2, "metis")

    # Assert
    assert (error.value.field, error.value.value) == ("backend.partition", "metis")
    assert 'pip install "gossipsoup[ray]"' in str(error.value) and "backend.partition=contiguous" in str(error.value)
    assert partition_nodes(10, ring(10), 2, "contiguous").tolist() == [0] * 5 + [1] * 5
