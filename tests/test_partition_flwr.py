"""partition=flwr: every row partitioner of flwr-datasets, built from the config, seeded by the run."""

import numpy as np
import pytest

pytest.importorskip("flwr_datasets")

from sim.data.flwr_partition import SUPPORTED, check_flwr_partition, flwr_assignment  # noqa: E402
from sim.errors import ConfigError  # noqa: E402

LABELS = np.arange(210) % 5
GROUPS = (np.arange(210) * 7 // 210).astype(np.int64)  # 7 natural clients of 30 consecutive rows
ARGS = {
    "IidPartitioner": None,
    "DirichletPartitioner": {"alpha": 0.5, "min_partition_size": 1},
    "ShardPartitioner": {"num_shards_per_partition": 2},
    "PathologicalPartitioner": {"num_classes_per_partition": 2},
    "LinearPartitioner": {},
    "SquarePartitioner": {},
    "ExponentialPartitioner": {},
    "SizePartitioner": {"partition_sizes": [10, 20, 30, 40, 50, 30, 30]},
    "InnerDirichletPartitioner": {"partition_sizes": [30] * 7, "alpha": 1.0},
    "DistributionPartitioner": {
        "distribution_array": np.ones((5, 5)).tolist(),
        "num_unique_labels_per_partition": 5,
        "preassigned_num_samples_per_label": 1,
    },
    "ContinuousPartitioner": {"strictness": 0.5},
    "NaturalIdPartitioner": {"partition_by": "group"},
    "GroupedNaturalIdPartitioner": {"partition_by": "group", "group_size": 1},
}
CLIENTS = {"DistributionPartitioner": 5, "ExponentialPartitioner": 4}


def _part(name, args):
    return {"name": "flwr", "partitioner": name, "args": args}


def test_every_supported_partitioner_is_exercised():
    assert set(ARGS) == set(SUPPORTED)


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_partitioner_gives_disjoint_pool_rows(name):
    part, clients = _part(name, ARGS[name]), CLIENTS.get(name, 7)
    check_flwr_partition(part)
    rows = flwr_assignment(LABELS, GROUPS, part, clients, seed=3)
    assert len(rows) == clients
    together = np.concatenate(rows)
    assert len(np.unique(together)) == len(together) and together.min() >= 0 and together.max() < len(LABELS)
    again = flwr_assignment(LABELS, GROUPS, part, clients, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(rows, again, strict=True))  # the run seed fixes it


def test_sizes_follow_the_named_partitioner():
    linear = flwr_assignment(LABELS, None, _part("LinearPartitioner", None), 7, seed=0)
    assert [len(r) for r in linear] == [7, 15, 22, 30, 37, 45, 54]  # sizes in proportion to 1..7 (flwr rounds)
    sized = flwr_assignment(LABELS, None, _part("SizePartitioner", ARGS["SizePartitioner"]), 7, seed=0)
    assert [len(r) for r in sized] == [10, 20, 30, 40, 50, 30, 30]
    patho = flwr_assignment(LABELS, None, _part("PathologicalPartitioner", ARGS["PathologicalPartitioner"]), 7, 0)
    assert all(len(np.unique(LABELS[r])) <= 2 for r in patho)


def test_natural_id_partitioner_keeps_each_group_whole():
    rows = flwr_assignment(LABELS, GROUPS, _part("NaturalIdPartitioner", {"partition_by": "group"}), 7, seed=0)
    for k, r in enumerate(rows):
        assert sorted(r.tolist()) == np.flatnonzero(GROUPS == k).tolist()


def test_rows_are_shuffled_by_the_seed_before_cutting():
    a = flwr_assignment(LABELS, None, _part("IidPartitioner", None), 7, seed=0)
    b = flwr_assignment(LABELS, None, _part("IidPartitioner", None), 7, seed=1)
    assert not np.array_equal(a[0], np.arange(30)) and not np.array_equal(a[0], b[0])


@pytest.mark.parametrize(
    "part,field,match",
    [
        (_part("DirichletPartitionr", None), "partition.partitioner", "Did you mean DirichletPartitioner"),
        (_part("IdToSizeFncPartitioner", None), "partition.partitioner", "Python function"),
        (_part("DirichletPartitioner", {"alpha": 0.5, "alpah": 1}), "partition.args.alpah", "min_partition_size"),
        (_part("DirichletPartitioner", {}), "partition.args.alpha", "requires alpha"),
        (_part("IidPartitioner", {"num_partitions": 3}), "partition.args.num_partitions", "num_clients"),
        (_part("DirichletPartitioner", {"alpha": 0.5, "seed": 1}), "partition.args.seed", "run seed"),
        (_part("GroupedNaturalIdPartitioner", {"group_size": -1}), "partition.args.group_size", "refused"),
        (_part("DirichletPartitioner", {"alpha": float("inf")}), "partition.args.alpha", "finite"),
        (_part("ShardPartitioner", {"partition_by": "writer"}), "partition.args.partition_by", "group"),
        (_part("IidPartitioner", [1]), "partition.args", "mapping"),
    ],
)
def test_bad_partitioner_settings_are_refused_without_data(part, field, match):
    with pytest.raises(ConfigError, match=match) as info:
        check_flwr_partition(part)
    assert info.value.field == field


def test_counts_fixed_by_the_data_must_match_num_clients():
    with pytest.raises(ConfigError, match="7, the number of distinct") as info:
        flwr_assignment(LABELS, GROUPS, _part("NaturalIdPartitioner", {"partition_by": "group"}), 5, seed=0)
    assert info.value.field == "num_clients"
    with pytest.raises(ConfigError, match="no natural client ids") as info:
        flwr_assignment(LABELS, None, _part("NaturalIdPartitioner", {"partition_by": "group"}), 7, seed=0)
    assert info.value.field == "partition.args.partition_by"
    with pytest.raises(ConfigError) as info:
        flwr_assignment(LABELS, None, _part("SizePartitioner", {"partition_sizes": [10, 20]}), 7, seed=0)
    assert info.value.field == "partition.args.partition_sizes"
    grouped = _part("GroupedNaturalIdPartitioner", {"partition_by": "group", "group_size": 2})
    with pytest.raises(ConfigError, match="4, the number of partitions") as info:
        flwr_assignment(LABELS, GROUPS, grouped, 7, seed=0)
    assert info.value.field == "num_clients"


def test_through_partition_rows_with_an_empty_client_refused():
    from sim.data.partition import partition_rows

    order, offsets = partition_rows(LABELS, GROUPS, _part("NaturalIdPartitioner", {"partition_by": "group"}), 7, 0, "x")
    assert np.diff(offsets).tolist() == [30] * 7 and sorted(order.tolist()) == list(range(210))
