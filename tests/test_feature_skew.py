"""Feature skew (sim.data.feature_skew): hand-checked transforms, each client its own, none leaves data alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from forked_cli import run_module

from sim.data import load_federated_data, validate_data_config
from sim.data.feature_skew import (
    apply_feature_skew,
    blend_toward_white,
    client_groups,
    rotate_images,
    shift_signals,
)
from sim.data.inputs import InputSpec
from sim.errors import ConfigError

DIGITS = {"name": "digits"}
IMAGE = InputSpec((1, 2, 2), "image")


# ---------------------------------------------------------------- the transforms, by hand


def test_quarter_turn_is_counter_clockwise():
    # 1 2      2 4
    # 3 4  ->  1 3   (the top-right pixel goes to the top-left)
    rows = np.array([[1, 2, 3, 4]], dtype=np.float32)
    np.testing.assert_array_equal(rotate_images(rows, (1, 2, 2), 90.0), [[2, 4, 1, 3]])
    np.testing.assert_array_equal(rotate_images(rows, (1, 2, 2), 180.0), [[4, 3, 2, 1]])
    np.testing.assert_array_equal(rotate_images(rows, (1, 2, 2), 270.0), [[3, 1, 4, 2]])
    np.testing.assert_array_equal(rotate_images(rows, (1, 2, 2), -90.0), [[3, 1, 4, 2]])


def test_half_turn_of_a_non_square_image_takes_the_interpolating_path():
    # 2x3 cannot use rot90's quarter turns; the bilinear path lands on whole pixels at 180 degrees
    rows = np.array([[1, 2, 3, 4, 5, 6]], dtype=np.float64)
    np.testing.assert_allclose(rotate_images(rows, (1, 2, 3), 180.0), [[6, 5, 4, 3, 2, 1]], atol=1e-12)


def test_eighth_turn_interpolates_bilinearly_with_black_outside():
    # a 3x3 image with one lit pixel, top middle; turned 45 degrees counter-clockwise about the centre.
    # Output (0,0) is (x, y) = (-1, 1) from the centre; turned back it is (0, sqrt2): row 1 - sqrt2, column 1,
    # so it mixes pixel (0,1) with weight 1 - (sqrt2 - 1) = 2 - sqrt2 and a black row above the image.
    # Output (0,1) is (0, 1); turned back (a, a) with a = 1/sqrt2: row 1 - a, column 1 + a, so pixel (0,1)
    # has weight (1 - (1 - a)) * (1 - a) = a (1 - a).
    img = np.zeros((1, 9))
    img[0, 1] = 1.0
    out = rotate_images(img, (1, 3, 3), 45.0).reshape(3, 3)
    a = 1 / math.sqrt(2)
    assert out[0, 0] == pytest.approx(2 - math.sqrt(2), abs=1e-12)
    assert out[0, 1] == pytest.approx(a * (1 - a), abs=1e-12)
    assert out[1, 1] == 0.0 and out[2, 2] == 0.0
    # the centre pixel stays where it is, whatever the angle
    centre = np.zeros((1, 9))
    centre[0, 4] = 1.0
    assert rotate_images(centre, (1, 3, 3), 33.0).reshape(3, 3)[1, 1] == pytest.approx(1.0, abs=1e-12)


def test_uint8_images_stay_uint8_rounded():
    img = np.zeros((1, 9), dtype=np.uint8)
    img[0, 1] = 200
    out = rotate_images(img, (1, 3, 3), 45.0)
    assert out.dtype == np.uint8
    assert out.reshape(3, 3)[0, 0] == round(200 * (2 - math.sqrt(2)))  # 117.157 -> 117
    blended = blend_toward_white(np.array([[0, 100, 255]], dtype=np.uint8), 0.25)
    assert blended.dtype == np.uint8
    np.testing.assert_array_equal(blended, [[64, 139, 255]])  # 63.75, 138.75, 255


def test_intensity_blends_toward_white():
    rows = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(blend_toward_white(rows, 0.25), [[0.25, 0.625, 1.0]], rtol=0, atol=1e-7)


def test_signal_rotation_is_a_circular_shift():
    rows = np.array([[1, 2, 3, 4, 10, 20, 30, 40]], dtype=np.float32)  # 2 channels of length 4
    np.testing.assert_array_equal(shift_signals(rows, (2, 4), 1), [[4, 1, 2, 3, 40, 10, 20, 30]])


# ---------------------------------------------------------------- groups and clients


def test_groups_are_seeded_and_balanced():
    g = client_groups(10, 4, seed=3)
    assert sorted(np.bincount(g).tolist()) == [2, 2, 3, 3]
    np.testing.assert_array_equal(g, client_groups(10, 4, seed=3))
    assert not np.array_equal(g, client_groups(10, 4, seed=4))
    assert sorted(client_groups(5, None, seed=0).tolist()) == [0, 1, 2, 3, 4]  # null: one group per client


@pytest.mark.parametrize("groups", [2, 4])
def test_each_client_gets_its_own_groups_transform_on_unequal_clients(groups):
    x = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    offsets = np.array([0, 1, 1, 4, 5])  # 4 clients of 1, 0, 3 and 1 rows
    part = {"feature_skew": "rotate", "feature_skew_groups": groups}
    out = apply_feature_skew(x, offsets, IMAGE, part, seed=0)
    group = client_groups(4, groups, seed=0)
    assert sorted(np.bincount(group).tolist()) == [4 // groups] * groups
    for k in range(4):
        lo, hi = offsets[k], offsets[k + 1]
        quarters = group[k] * 4 // groups  # g * 360 / G degrees
        want = np.rot90(x[lo:hi].reshape(-1, 1, 2, 2), quarters, axes=(2, 3)).reshape(-1, 4)
        np.testing.assert_array_equal(out[lo:hi], want)
    # the same clients' 1-D signals (1, 4) are shifted by g * L / G positions
    signals = apply_feature_skew(x, offsets, InputSpec((1, 4), "float"), part, seed=0)
    for k in range(4):
        lo, hi = offsets[k], offsets[k + 1]
        np.testing.assert_array_equal(signals[lo:hi], np.roll(x[lo:hi], group[k] * 4 // groups, axis=1))
    np.testing.assert_array_equal(x, np.arange(20, dtype=np.float32).reshape(5, 4))  # input untouched


def test_digits_clients_rotated_by_their_group_and_servers_sets_untouched():
    part = {"name": "iid"}
    plain = load_federated_data(DIGITS, part, 8, seed=1)
    skewed = load_federated_data(DIGITS, {**part, "feature_skew": "rotate", "feature_skew_groups": 4}, 8, seed=1)
    group = client_groups(8, 4, seed=1)
    assert torch.equal(plain.y, skewed.y) and torch.equal(plain.offsets, skewed.offsets)
    for field in ("x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(plain, field), getattr(skewed, field)), field
    changed = 0
    for k in range(8):
        x, _ = plain.client(k)
        want = torch.rot90(x.reshape(-1, 1, 8, 8), int(group[k]), dims=(2, 3)).reshape(len(x), 64)
        assert torch.equal(skewed.client(k)[0], want), k
        changed += int(group[k] != 0)
    assert changed == 6  # 8 clients in 4 groups: two per group, group 0's unchanged


def _rot(x: torch.Tensor, quarters: int, side: int) -> torch.Tensor:
    return torch.rot90(x.reshape(-1, 1, side, side), quarters, dims=(2, 3)).reshape(len(x), side * side)


def test_local_test_rows_carved_from_a_client_carry_its_transform():
    part = {"name": "dirichlet", "alpha": 0.5}
    skew = {**part, "feature_skew": "rotate", "feature_skew_groups": 4}
    plain = load_federated_data(DIGITS, part, 6, seed=5, local_test_fraction=0.25)
    skewed = load_federated_data(DIGITS, skew, 6, seed=5, local_test_fraction=0.25)
    group = client_groups(6, 4, seed=5)
    assert torch.equal(plain.local_offsets, skewed.local_offsets) and torch.equal(plain.y_local, skewed.y_local)
    for k in range(6):
        lo, hi = int(plain.local_offsets[k]), int(plain.local_offsets[k + 1])
        assert hi > lo
        assert torch.equal(skewed.x_local[lo:hi], _rot(plain.x_local[lo:hi], int(group[k]), 8)), k


def test_natural_per_user_test_rows_carry_the_users_transform(tmp_path):
    """LEAF-style users with their own test files: each user's test rows get the user's transform."""

    def write(path, rows_per_user: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        users = [f"u{k}" for k in range(4)]
        data = {
            u: {"x": np.random.default_rng(k).random((rows_per_user, 784)).tolist(), "y": [k] * rows_per_user}
            for k, u in enumerate(users)
        }
        path.write_text(json.dumps({"users": users, "num_samples": [rows_per_user] * 4, "user_data": data}))

    write(tmp_path / "train" / "a.json", 3)
    write(tmp_path / "test" / "a.json", 2)
    ds = {"name": "leaf", "path": str(tmp_path), "val_fraction": 0.0}
    plain = load_federated_data(ds, {"name": "natural"}, 4, seed=0)
    skewed = load_federated_data(ds, {"name": "natural", "feature_skew": "rotate"}, 4, seed=0)
    group = client_groups(4, 4, seed=0)
    for k in range(4):
        lo, hi = int(plain.local_offsets[k]), int(plain.local_offsets[k + 1])
        assert hi - lo == 2
        assert torch.equal(skewed.x_local[lo:hi], _rot(plain.x_local[lo:hi], int(group[k]), 28)), k
        assert torch.equal(skewed.client(k)[0], _rot(plain.client(k)[0], int(group[k]), 28)), k


def test_intensity_on_digits_follows_the_group():
    part = {"name": "iid", "feature_skew": "intensity", "feature_skew_groups": 2}
    plain = load_federated_data(DIGITS, {"name": "iid"}, 4, seed=0)
    skewed = load_federated_data(DIGITS, part, 4, seed=0)
    group = client_groups(4, 2, seed=0)
    for k in range(4):
        t = group[k] / 4.0  # g / (2 G)
        x = plain.client(k)[0].double()
        torch.testing.assert_close(skewed.client(k)[0].double(), (1 - t) * x + t, rtol=0, atol=1e-6)


def test_none_leaves_the_data_bit_identical():
    x = np.ones((3, 4), dtype=np.float32)
    assert apply_feature_skew(x, np.array([0, 3]), IMAGE, {"feature_skew": "none"}, seed=0) is x
    a = load_federated_data(DIGITS, {"name": "dirichlet", "alpha": 0.3}, 5, seed=2)
    b = load_federated_data(DIGITS, {"name": "dirichlet", "alpha": 0.3, "feature_skew": "none"}, 5, seed=2)
    for field in ("x", "y", "offsets", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"feature_skew": "blur"}, "partition.feature_skew"),
        ({"feature_skew": "rotate", "feature_skew_groups": 0}, "partition.feature_skew_groups"),
        ({"feature_skew": "rotate", "feature_skew_groups": 2.0}, "partition.feature_skew_groups"),
        ({"feature_skew": "rotate", "feature_skew_groups": True}, "partition.feature_skew_groups"),
    ],
)
def test_bad_settings_are_refused_before_any_data(extra, field):
    with pytest.raises(ConfigError) as err:
        validate_data_config(DIGITS, {"name": "iid", **extra}, 4)
    assert err.value.field == field


def test_inputs_the_transform_does_not_fit_are_refused_naming_the_field():
    flat = InputSpec((4,), "float")
    with pytest.raises(ConfigError, match="partition.feature_skew.*rotate needs images"):
        apply_feature_skew(np.zeros((2, 4)), np.array([0, 2]), flat, {"feature_skew": "rotate"}, seed=0)
    signal = InputSpec((1, 4), "float")
    with pytest.raises(ConfigError, match="intensity needs images"):
        apply_feature_skew(np.zeros((2, 4)), np.array([0, 2]), signal, {"feature_skew": "intensity"}, seed=0)
    # a single group transforms nothing but is still refused for such inputs
    with pytest.raises(ConfigError):
        one_group = {"feature_skew": "rotate", "feature_skew_groups": 1}
        apply_feature_skew(np.zeros((2, 4)), np.array([0, 2]), flat, one_group, seed=0)


def test_command_line_refusal_exits_2_naming_the_field(tmp_path):
    result = run_module("sim", ["partition.feature_skew=rotat", "rounds=1"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "partition.feature_skew='rotat'" in result.stderr and "Did you mean rotate" in result.stderr
    assert "Traceback" not in result.stderr
