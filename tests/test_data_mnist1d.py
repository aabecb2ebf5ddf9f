"""MNIST-1D: the published benchmark's rows (pinned from the mnist1d package), splits, seeds, checks, learning."""

import numpy as np
import pytest
import torch

from sim.data import load_federated_data
from sim.data.inputs import InputSpec
from sim.data.mnist1d import generate, templates
from sim.errors import ConfigError

# Values printed by mnist1d 0.0.2.post1: make_dataset(get_dataset_args()) (5,000 examples, seed 42).
PACKAGE_Y_TRAIN_HEAD = [2, 6, 4, 5, 6, 6, 6, 0, 3, 1]
PACKAGE_Y_TEST_HEAD = [2, 6, 3, 9, 4]
PACKAGE_X_TRAIN_0_HEAD = [-0.3320056673693902, -0.4719103656557236, -0.778697076293495]
PACKAGE_X_TEST_LAST_TAIL = [0.8777343497528006, 1.193151836835276]
PACKAGE_TRAIN_LABEL_COUNTS = [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]


@pytest.fixture(scope="module")
def published():
    return generate(5000, 42)


def test_generation_is_the_packages_benchmark(published):
    x, y = published
    assert x.shape == (5000, 40) and y.shape == (5000,)
    assert np.bincount(y).tolist() == [500] * 10
    assert y[:10].tolist() == PACKAGE_Y_TRAIN_HEAD and y[4000:4005].tolist() == PACKAGE_Y_TEST_HEAD
    assert np.bincount(y[:4000]).tolist() == PACKAGE_TRAIN_LABEL_COUNTS
    # 1e-12 relative: the package's values, though the last bit may differ with the CPU's math kernels (one of
    # these differs by one ulp between two x86 machines)
    np.testing.assert_allclose(x[0, :3], PACKAGE_X_TRAIN_0_HEAD, rtol=1e-12, atol=0)
    np.testing.assert_allclose(x[-1, -2:], PACKAGE_X_TEST_LAST_TAIL, rtol=1e-12, atol=0)
    assert abs(x.mean()) < 1e-12 and x.std() == pytest.approx(1.0, abs=1e-12)


def test_templates_are_whitened_and_start_at_zero():
    t = templates()
    assert t.shape == (10, 12) and np.all(t[:, 0] == 0)
    assert np.allclose(t.std(1), 1 / 6)  # unit variance before the division by 6


def test_generation_is_deterministic_per_seed():
    a, b, c = generate(100, 7), generate(100, 7), generate(100, 8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert len(generate(95, 7)[1]) == 90  # 9 per class: num_samples is rounded down to a multiple of 10


def test_default_splits_shapes_and_input_spec(published):
    data = load_federated_data({"name": "mnist1d"}, {"name": "iid"}, 10, seed=0)
    # 4,000 training rows of which 10% (stratified) go to the server's validation split; 1,000 test rows
    assert (len(data.y), len(data.y_val), len(data.y_test)) == (3600, 400, 1000)
    assert data.input_shape == (1, 40) and data.num_classes == 10
    assert data.inputs == InputSpec((1, 40), kind="float")
    assert data.x.dtype == torch.float32 and data.x.shape[1] == 40
    # the test set is the package's: its last 1,000 rows in order
    assert torch.equal(data.x_test, torch.from_numpy(published[0][4000:].astype(np.float32)))
    assert data.y_test.tolist() == published[1][4000:].tolist()
    assert data.inputs.to_model(data.x_test[:2]).shape == (2, 1, 40)


def test_seeds_the_benchmark_stays_fixed_and_generation_seed_null_follows_the_run():
    small = {"name": "mnist1d", "num_samples": 200}
    a = load_federated_data(small, {"name": "iid"}, 2, seed=0)
    b = load_federated_data(small, {"name": "iid"}, 2, seed=1)
    assert torch.equal(a.x_test, b.x_test)  # generation_seed 42: the same data for every run seed
    assert not torch.equal(a.y_val, b.y_val) or not torch.equal(a.x_val, b.x_val)  # the val split follows it
    free = {**small, "generation_seed": None}
    c = load_federated_data(free, {"name": "iid"}, 2, seed=0)
    d = load_federated_data(free, {"name": "iid"}, 2, seed=0)
    e = load_federated_data(free, {"name": "iid"}, 2, seed=1)
    assert torch.equal(c.x_test, d.x_test) and not torch.equal(c.x_test, e.x_test)
    pinned = load_federated_data({**free, "data_seed": 5}, {"name": "iid"}, 2, seed=1)
    assert torch.equal(pinned.x_test, load_federated_data({**free, "data_seed": 5}, {"name": "iid"}, 2, 9).x_test)


@pytest.mark.parametrize(
    "key,value",
    [("num_samples", 5), ("num_samples", "abc"), ("num_samples", 10.0), ("generation_seed", -1),
     ("generation_seed", 2**32), ("data_seed", "x"), ("test_fraction", 1.0), ("val_fraction", float("inf"))],
)  # fmt: skip
def test_bad_settings_are_refused_before_generation(key, value):
    with pytest.raises(ConfigError) as info:
        load_federated_data({"name": "mnist1d", key: value}, {"name": "iid"}, 2, seed=0)
    assert info.value.field == f"dataset.{key}"


@pytest.mark.slow
def test_an_mlp_learns_mnist1d_in_a_few_rounds(make_cfg, tmp_path):
    """The command-line default run (20 clients, Dirichlet(0.5)) on mnist1d, 5 rounds: well above chance."""
    from sim.run import run_experiment

    summary = run_experiment(make_cfg("dataset=mnist1d", "model=mlp", "rounds=5"), tmp_path)
    assert summary["final"]["test_accuracy"] > 0.25  # chance: 0.10
