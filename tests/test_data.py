"""Data sources, splits and partitioners (sim.data): sizes, skew, determinism, and every ConfigError."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sim.data import FederatedData, load_federated_data, validate_data_config
from sim.errors import ConfigError
from sim.seeding import derived_seed, numpy_rng

DIGITS = {"name": "digits", "test_fraction": 0.2, "val_fraction": 0.1}
DIGITS_ROWS = 1797
# 1797 rows: floor(0.2 * 1797) = 359 test, floor(0.1 * 1438) = 143 validation, 1295 for training.
DIGITS_TRAIN = 1295
BENCH_SYNTHETIC = {
    "name": "synthetic",
    "size_offset": 10,
    "size_lognormal_mean": 3.0,
    "size_lognormal_sigma": 1.0,
    "size_cap": 300,
}


def label_skew(data: FederatedData) -> float:
    """Mean total-variation distance between each client's label distribution and the pool's."""
    pool = np.bincount(data.y.numpy(), minlength=data.num_classes) / len(data.y)
    dist = []
    for k in range(data.num_clients):
        _, y = data.client(k)
        p = np.bincount(y.numpy(), minlength=data.num_classes) / len(y)
        dist.append(0.5 * np.abs(p - pool).sum())
    return float(np.mean(dist))


def client_label_sets(data: FederatedData) -> list[set[int]]:
    return [set(data.client(k)[1].tolist()) for k in range(data.num_clients)]


def assert_same(a: FederatedData, b: FederatedData) -> None:
    for field in ("x", "y", "offsets", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def write_npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def npz_cfg(path, **extra) -> dict:
    return {"name": "npz", "path": str(path), "val_fraction": 0.1, "test_fraction": 0.2, "input_shape": None, **extra}


# ---------------------------------------------------------------- digits and the partitioners


@pytest.mark.parametrize("partition", [{"name": "iid"}, {"name": "dirichlet"}, {"name": "shards"}])
def test_digits_layout_is_consistent(partition):
    # Execute
    data = load_federated_data(DIGITS, partition, 10, seed=0)
    # Assert
    assert (len(data.y_val), len(data.y_test)) == (143, 359)
    assert data.offsets[0] == 0 and data.offsets[-1] == len(data.y) == len(data.x)
    assert torch.all(data.client_sizes > 0) and int(data.client_sizes.sum()) == len(data.y)
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64 and data.offsets.dtype == torch.int64
    assert data.x.shape[1] == data.x_val.shape[1] == data.x_test.shape[1] == 64
    assert 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0
    assert (data.num_classes, data.input_shape, data.name, data.num_clients) == (10, (1, 8, 8), "digits", 10)


def test_digits_rows_add_up_to_the_whole_dataset():
    # Prepare
    from sklearn.datasets import load_digits

    original = np.sort((load_digits().data / 16.0).astype(np.float32).view(np.void(4 * 64)).ravel())
    # Execute
    data = load_federated_data(DIGITS, {"name": "iid"}, 7, seed=3)
    # Assert: every row lands in exactly one of train / val / test
    assert len(data.y) + len(data.y_val) + len(data.y_test) == DIGITS_ROWS
    together = torch.cat([data.x, data.x_val, data.x_test]).numpy()
    assert np.array_equal(np.sort(together.view(np.void(4 * 64)).ravel()), original)


def test_digits_test_split_is_stratified():
    # Execute
    data = load_federated_data(DIGITS, {"name": "iid"}, 5, seed=1)
    # Assert: each class is within one row of its exact share of the test set
    all_y = torch.cat([data.y, data.y_val, data.y_test]).numpy()
    expected = 0.2 * np.bincount(all_y)
    assert np.all(np.abs(np.bincount(data.y_test.numpy(), minlength=10) - expected) <= 1)


def test_iid_clients_differ_in_size_by_at_most_one():
    data = load_federated_data(DIGITS, {"name": "iid"}, 9, seed=0)
    assert int(data.client_sizes.max() - data.client_sizes.min()) <= 1


def test_label_skew_grows_as_dirichlet_alpha_falls():
    # Execute
    skews = {
        alpha: np.mean(
            [label_skew(load_federated_data(DIGITS, {"name": "dirichlet", "alpha": alpha}, 10, s)) for s in range(3)]
        )
        for alpha in (100.0, 1.0, 0.1)
    }
    # Assert
    assert skews[100.0] < 0.1 < skews[1.0] < skews[0.1]


def test_dirichlet_respects_min_partition_size():
    data = load_federated_data(DIGITS, {"name": "dirichlet", "alpha": 0.3, "min_partition_size": 20}, 10, seed=4)
    assert int(data.client_sizes.min()) >= 20


@pytest.mark.parametrize("partition", [{"name": "iid"}, {"name": "dirichlet"}, {"name": "shards"}])
def test_same_seed_same_data_other_seed_other_partition(partition):
    # Execute
    first, again = (load_federated_data(DIGITS, partition, 8, seed=11) for _ in range(2))
    other = load_federated_data(DIGITS, partition, 8, seed=12)
    # Assert
    assert_same(first, again)
    assert not torch.equal(first.y, other.y) or not torch.equal(first.offsets, other.offsets)


def test_shards_on_digits_give_equal_clients_of_few_labels():
    # Execute
    data = load_federated_data(DIGITS, {"name": "shards", "shards_per_client": 2}, 10, seed=0)
    # Assert: shards of floor(1295 / 20) = 64 rows, each spanning at most 2 labels (64 < any class size)
    assert data.client_sizes.tolist() == [128] * 10
    assert all(len(labels) <= 4 for labels in client_label_sets(data))


def test_shards_that_fit_classes_give_at_most_shards_per_client_labels(tmp_path):
    # Prepare: 10 classes of 20 rows; 10 clients x 2 shards -> shards of 10 rows, one label each
    y = np.repeat(np.arange(10), 20)
    x = np.random.default_rng(0).random((200, 3))
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    # Execute
    data = load_federated_data(npz_cfg(path, val_fraction=0.0), {"name": "shards", "shards_per_client": 2}, 10, 0)
    # Assert
    assert data.client_sizes.tolist() == [20] * 10
    assert all(1 <= len(labels) <= 2 for labels in client_label_sets(data))


@pytest.mark.parametrize("make", ["dirichlet", "shards"])
def test_fast_read_of_flwr_assignment_matches_the_public_api(make):
    # Prepare
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, ShardPartitioner

    from sim.data.flwr_run import run_flwr_partitioner

    labels = np.random.default_rng(0).integers(0, 5, 300)

    def build():
        if make == "dirichlet":
            return DirichletPartitioner(6, "label", alpha=0.4, min_partition_size=1, seed=7)
        return ShardPartitioner(6, "label", num_shards_per_partition=2, seed=7)

    reference = build()
    reference.dataset = datasets.Dataset.from_dict({"row": np.arange(300), "label": labels})
    # Execute
    fast = run_flwr_partitioner(build(), labels, 6)
    with warnings.catch_warnings():  # a pyarrow deprecation notice inside dataset.sort
        warnings.simplefilter("ignore")
        public = [np.asarray(reference.load_partition(k)["row"]) for k in range(6)]
    # Assert
    assert all(np.array_equal(a, b) for a, b in zip(fast, public, strict=True))


def test_iid_equals_flwr_iid_partitioner_on_the_seeded_shuffle():
    # Prepare
    import datasets
    from flwr_datasets.partitioner import IidPartitioner

    from sim.data.partition import iid_assignment

    perm = np.random.default_rng(derived_seed(5, "partition")).permutation(103)
    flwr = IidPartitioner(4)
    flwr.dataset = datasets.Dataset.from_dict({"row": perm})
    # Execute
    ours = iid_assignment(103, 4, seed=5)
    # Assert
    assert all(np.array_equal(np.asarray(flwr.load_partition(k)["row"]), rows) for k, rows in enumerate(ours))


def test_dictconfig_is_accepted():
    data = load_federated_data(OmegaConf.create(DIGITS), OmegaConf.create({"name": "iid"}), 4, seed=0)
    assert data.num_clients == 4


# ---------------------------------------------------------------- synthetic


def test_synthetic_natural_shapes_and_labels():
    # Execute
    data = load_federated_data(
        {"name": "synthetic", "num_features": 20, "num_classes": 5}, {"name": "natural"}, 30, seed=0
    )
    # Assert
    assert data.num_clients == 30 and data.input_shape == (20,) and data.num_classes == 5
    assert data.x.shape[1] == data.x_test.shape[1] == data.x_val.shape[1] == 20
    assert int(data.y.min()) >= 0 and int(data.y.max()) < 5
    assert torch.all(data.client_sizes >= 1)


def test_synthetic_sizes_follow_offset_lognormal_and_cap():
    # Prepare: no test/val rows, so each client's training size is its user's whole size
    cfg = {**BENCH_SYNTHETIC, "size_cap": 30, "test_fraction": 0.0, "val_fraction": 0.0}
    # Execute
    data = load_federated_data(cfg, {"name": "natural"}, 200, seed=3)
    # Assert
    lognormal = numpy_rng(3, "data", "synthetic", "users").lognormal(3.0, 1.0, 200)
    expected = np.minimum(10 + np.floor(lognormal), 30)
    assert data.client_sizes.tolist() == expected.astype(int).tolist()
    assert int(data.client_sizes.min()) >= 10 and int(data.client_sizes.max()) == 30


def test_synthetic_per_user_test_and_val_shares():
    # Prepare: every user has exactly 51 rows (offset 50 + floor(e^0))
    cfg = {"name": "synthetic", "size_offset": 50, "size_lognormal_mean": 0.0, "size_lognormal_sigma": 0.0}
    # Execute
    data = load_federated_data(cfg, {"name": "natural"}, 12, seed=0)
    # Assert: floor(0.2 * 51) = 10 test rows and floor(0.1 * 51) = 5 validation rows per user
    assert data.client_sizes.tolist() == [36] * 12
    assert (len(data.y_test), len(data.y_val)) == (120, 60)


def test_synthetic_feature_variance_follows_the_diagonal_covariance():
    # Prepare: one user with 4001 rows
    cfg = {
        "name": "synthetic",
        "size_offset": 4000,
        "size_lognormal_mean": 0.0,
        "size_lognormal_sigma": 0.0,
        "test_fraction": 0.0,
        "val_fraction": 0.0,
    }
    # Execute
    x = load_federated_data(cfg, {"name": "natural"}, 1, seed=0).x.numpy()
    # Assert: Var(x_j) = j^-1.2
    expected = np.arange(1, 61) ** -1.2
    assert np.allclose(x.var(axis=0) / expected, 1.0, atol=0.1)


def test_synthetic_is_deterministic_and_data_seed_pins_the_data():
    # Execute
    a, b = (load_federated_data(BENCH_SYNTHETIC, {"name": "natural"}, 50, seed=1) for _ in range(2))
    other_run = load_federated_data(BENCH_SYNTHETIC, {"name": "natural"}, 50, seed=2)
    pinned = [load_federated_data({**BENCH_SYNTHETIC, "data_seed": 9}, {"name": "natural"}, 50, seed=s) for s in (1, 2)]
    # Assert
    assert_same(a, b)
    assert a.x.shape != other_run.x.shape or not torch.equal(a.x, other_run.x)
    assert_same(*pinned)


def test_synthetic_repartitioned_iid_keeps_the_training_pool():
    # Execute
    natural = load_federated_data({**BENCH_SYNTHETIC, "data_seed": 0}, {"name": "natural"}, 40, seed=0)
    iid = load_federated_data({**BENCH_SYNTHETIC, "data_seed": 0}, {"name": "iid"}, 40, seed=0)
    # Assert
    assert len(iid.y) == len(natural.y) and int(iid.client_sizes.max() - iid.client_sizes.min()) <= 1
    assert torch.equal(torch.sort(iid.y).values, torch.sort(natural.y).values)
    assert torch.equal(iid.x_test, natural.x_test)


# ---------------------------------------------------------------- npz


def test_npz_without_test_arrays_carves_test_and_val(tmp_path):
    # Prepare
    rng = np.random.default_rng(0)
    x = rng.random((100, 2, 3))
    y = np.repeat(np.arange(4), 25)
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y)
    # Execute
    data = load_federated_data(npz_cfg(path), {"name": "iid"}, 5, seed=0)
    # Assert: 20 test rows (5 per class), 8 validation rows, 72 for training, nothing lost
    assert (len(data.y), len(data.y_val), len(data.y_test)) == (72, 8, 20)
    assert np.bincount(data.y_test.numpy()).tolist() == [5, 5, 5, 5]
    assert data.input_shape == (1, 2, 3) and data.num_classes == 4  # [N, H, W]: one-channel images
    together = torch.cat([data.x, data.x_val, data.x_test]).numpy()
    assert np.allclose(np.sort(together.sum(1)), np.sort(x.reshape(100, 6).astype(np.float32).sum(1)))


def test_npz_with_test_arrays_uses_them_as_given(tmp_path):
    # Prepare
    rng = np.random.default_rng(1)
    x_test, y_test = rng.random((7, 4)), np.array([0, 1, 2, 3, 4, 5, 6])
    path = write_npz(
        tmp_path / "d.npz", x_train=rng.random((40, 4)), y_train=rng.integers(0, 3, 40), x_test=x_test, y_test=y_test
    )
    # Execute
    data = load_federated_data(npz_cfg(path, input_shape=[2, 2]), {"name": "iid"}, 4, seed=0)
    # Assert
    assert torch.equal(data.x_test, torch.from_numpy(x_test.astype(np.float32)))
    assert data.y_test.tolist() == y_test.tolist() and data.num_classes == 7
    assert len(data.y) + len(data.y_val) == 40 and len(data.y_val) == 4
    assert data.input_shape == (2, 2)


def test_npz_client_train_gives_natural_clients_in_sorted_id_order(tmp_path):
    # Prepare: the feature encodes the row's client id; ids 30, 10, 20 own 10, 20, 30 rows
    ids = np.repeat([30, 10, 20], [10, 20, 30])
    path = write_npz(
        tmp_path / "d.npz", x_train=ids[:, None].astype(float), y_train=np.arange(60) % 3, client_train=ids
    )
    # Execute
    data = load_federated_data(npz_cfg(path), {"name": "natural"}, 3, seed=0)
    # Assert: ids 10, 20, 30 -> clients 0, 1, 2, each minus its own test and validation rows
    assert data.client_sizes.tolist() == [20 - 4 - 1, 30 - 6 - 2, 10 - 2 - 0]
    for k, client_id in enumerate((10, 20, 30)):
        assert torch.all(data.client(k)[0] == client_id)


# ---------------------------------------------------------------- ConfigError, one per case

BAD_CONFIGS = [
    ({"name": "mnist"}, {"name": "iid"}, 5, "dataset.name"),
    (DIGITS, {"name": "random"}, 5, "partition.name"),
    (DIGITS, {"name": "iid"}, 0, "num_clients"),
    (DIGITS, {"name": "dirichlet", "alpha": 0}, 5, "partition.alpha"),
    (DIGITS, {"name": "dirichlet", "min_partition_size": -1}, 5, "partition.min_partition_size"),
    (DIGITS, {"name": "shards", "shards_per_client": 0}, 5, "partition.shards_per_client"),
    ({**DIGITS, "test_fraction": 1.0}, {"name": "iid"}, 5, "dataset.test_fraction"),
    ({**DIGITS, "val_fraction": -0.1}, {"name": "iid"}, 5, "dataset.val_fraction"),
    ({**DIGITS, "test_fraction": 0.5, "val_fraction": 0.5}, {"name": "iid"}, 5, r"test_fraction \+ dataset.val"),
    ({"name": "synthetic", "alpha": -1.0}, {"name": "natural"}, 5, "dataset.alpha"),
    ({"name": "synthetic", "beta": -0.5}, {"name": "natural"}, 5, "dataset.beta"),
    ({"name": "synthetic", "num_features": 0}, {"name": "natural"}, 5, "dataset.num_features"),
    ({"name": "synthetic", "num_classes": 1}, {"name": "natural"}, 5, "dataset.num_classes"),
    ({"name": "synthetic", "size_offset": 0}, {"name": "natural"}, 5, "dataset.size_offset"),
    (DIGITS, {"name": "natural"}, 5, "partition.name.*iid, dirichlet, shards"),
    ({"name": "npz", "path": "???"}, {"name": "iid"}, 5, "dataset.path"),
    ({"name": "npz", "path": "/nonexistent/data.npz"}, {"name": "iid"}, 5, "dataset.path.*/nonexistent/data.npz"),
]


@pytest.mark.parametrize("dataset, partition, num_clients, match", BAD_CONFIGS)
def test_bad_config_is_refused_before_any_work(dataset, partition, num_clients, match):
    with pytest.raises(ConfigError, match=match):
        validate_data_config(dataset, partition, num_clients)
    with pytest.raises(ConfigError, match=match):
        load_federated_data(dataset, partition, num_clients, seed=0)


@pytest.mark.parametrize("partition", [{"name": "iid"}, {"name": "dirichlet"}, {"name": "shards"}])
def test_more_clients_than_training_rows(partition):
    with pytest.raises(ConfigError, match=f"num_clients.*{DIGITS_TRAIN}"):
        load_federated_data(DIGITS, partition, DIGITS_TRAIN + 1, seed=0)


def test_too_many_shards_per_client():
    with pytest.raises(ConfigError, match="partition.shards_per_client"):
        load_federated_data(DIGITS, {"name": "shards", "shards_per_client": 200}, 10, seed=0)


def test_dirichlet_that_cannot_meet_min_partition_size():
    partition = {"name": "dirichlet", "alpha": 0.05, "min_partition_size": 100}
    with pytest.raises(ConfigError, match="partition.min_partition_size.*partition.alpha"):
        load_federated_data(DIGITS, partition, 10, seed=0)


def test_client_left_without_rows():
    partition = {"name": "dirichlet", "alpha": 0.01, "min_partition_size": 0}
    with pytest.raises(ConfigError, match="partition.min_partition_size.*fewer clients"):
        load_federated_data(DIGITS, partition, 50, seed=0)


def test_npz_file_that_is_not_an_npz(tmp_path):
    (tmp_path / "notes.npz").write_text("not an archive")
    np.save(tmp_path / "single.npy", np.zeros(3))
    for name in ("notes.npz", "single.npy"):
        with pytest.raises(ConfigError, match="dataset.path.*npz archive"):
            load_federated_data(npz_cfg(tmp_path / name), {"name": "iid"}, 2, seed=0)


def test_npz_missing_required_keys_lists_what_the_file_has(tmp_path):
    path = write_npz(tmp_path / "d.npz", x_train=np.zeros((4, 2)), labels=np.zeros(4))
    with pytest.raises(ConfigError, match="Missing y_train; the file has: labels, x_train"):
        load_federated_data(npz_cfg(path), {"name": "iid"}, 2, seed=0)


def test_npz_test_arrays_must_come_together(tmp_path):
    path = write_npz(tmp_path / "d.npz", x_train=np.zeros((4, 2)), y_train=np.zeros(4, int), x_test=np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="has x_test but no y_test"):
        load_federated_data(npz_cfg(path), {"name": "iid"}, 2, seed=0)


def test_npz_mismatched_lengths_are_named(tmp_path):
    path = write_npz(tmp_path / "d.npz", x_train=np.zeros((5, 2)), y_train=np.zeros(4, int))
    with pytest.raises(ConfigError, match="x_train has 5 rows, y_train has 4 rows"):
        load_federated_data(npz_cfg(path), {"name": "iid"}, 2, seed=0)


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.array([0.0, 1.5, 1.0, 0.0]), "integer class labels in y_train"),
        (np.array([0, -1, 1, 0]), "class labels >= 0 in y_train"),
    ],
)
def test_npz_bad_labels(tmp_path, labels, match):
    path = write_npz(tmp_path / "d.npz", x_train=np.zeros((4, 2)), y_train=labels)
    with pytest.raises(ConfigError, match=match):
        load_federated_data(npz_cfg(path), {"name": "iid"}, 2, seed=0)


def test_npz_client_count_must_match_num_clients(tmp_path):
    path = write_npz(
        tmp_path / "d.npz", x_train=np.zeros((30, 2)), y_train=np.arange(30) % 2, client_train=np.arange(30) % 3
    )
    with pytest.raises(ConfigError, match="num_clients=4.*3, the number of distinct client ids"):
        load_federated_data(npz_cfg(path), {"name": "natural"}, 4, seed=0)


def test_npz_natural_needs_client_train(tmp_path):
    path = write_npz(tmp_path / "d.npz", x_train=np.zeros((30, 2)), y_train=np.arange(30) % 2)
    with pytest.raises(ConfigError, match="partition.name.*client_train"):
        load_federated_data(npz_cfg(path), {"name": "natural"}, 3, seed=0)


def test_npz_input_shape_must_hold_a_row(tmp_path):
    path = write_npz(tmp_path / "d.npz", x_train=np.zeros((30, 6)), y_train=np.arange(30) % 2)
    with pytest.raises(ConfigError, match="dataset.input_shape.*6 values"):
        load_federated_data(npz_cfg(path, input_shape=[1, 2, 2]), {"name": "iid"}, 3, seed=0)


def test_synthetic_iid_is_one_task_that_label_partitions_can_skew():
    from sim.data import load_federated_data

    ds = {"name": "synthetic", "iid": True, "size_offset": 10, "size_lognormal_mean": 3.0, "size_lognormal_sigma": 1.0}
    a = load_federated_data(ds, {"name": "dirichlet", "alpha": 0.1}, 20, seed=0)
    b = load_federated_data(ds, {"name": "dirichlet", "alpha": 0.1}, 20, seed=0)
    assert torch.equal(a.x, b.x) and torch.equal(a.offsets, b.offsets)
    # one shared softmax-regression task: a linear model fit on train rows transfers to the test rows
    w = torch.linalg.lstsq(a.x, torch.nn.functional.one_hot(a.y, 10).float()).solution
    assert ((a.x_test @ w).argmax(1) == a.y_test).float().mean() > 0.5


def test_label_mix_gives_every_client_a_skewed_share():
    from sim.data import load_federated_data

    ds = {
        "name": "synthetic",
        "iid": True,
        "size_offset": 50,
        "size_lognormal_mean": 4.0,
        "size_lognormal_sigma": 1.0,
        "size_cap": 1000,
    }
    data = load_federated_data(ds, {"name": "label_mix", "alpha": 0.1}, 100, seed=1)
    sizes = data.client_sizes
    assert int(sizes.sum()) == len(data.y) and int(sizes.min()) > 0
    # skew: a typical client's most common label holds most of its rows
    top_share = [float(torch.bincount(data.client(k)[1], minlength=10).max()) / int(sizes[k]) for k in range(100)]
    assert np.median(top_share) > 0.5
    again = load_federated_data(ds, {"name": "label_mix", "alpha": 0.1}, 100, seed=1)
    assert torch.equal(again.offsets, data.offsets) and torch.equal(again.y, data.y)
