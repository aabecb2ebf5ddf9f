"""Images in an .npz: every layout lands each pixel at its (C, H, W) place; uint8 stays uint8; bad layouts refused."""

import numpy as np
import pytest
import torch

from sim.data import load_federated_data
from sim.data.inputs import InputSpec
from sim.errors import ConfigError


def _pixels(n, c, h, w) -> np.ndarray:
    """[n, c, h, w] where each value spells its own place: 1000 n + 100 c + 10 h + w."""
    idx = np.indices((n, c, h, w))
    return (1000 * idx[0] + 100 * idx[1] + 10 * idx[2] + idx[3]).astype(np.float64)


def _load(tmp_path, x_train, x_test=None, partition="iid", **ds):
    n = len(x_train)
    arrays = {"x_train": x_train, "y_train": np.arange(n) % 2}
    if x_test is not None:
        arrays.update(x_test=x_test, y_test=np.arange(len(x_test)) % 2)
    path = tmp_path / "img.npz"
    np.savez(path, **arrays)
    cfg = {"name": "npz", "path": str(path), "val_fraction": 0.0, **ds}
    return load_federated_data(cfg, {"name": partition}, 2, seed=0)


# (file array from the channels-first truth, layout given or None for auto)
LAYOUTS = {
    "nhw auto": (lambda a: a[:, 0], None, 1),
    "nhwc auto": (lambda a: a.transpose(0, 2, 3, 1), None, 3),
    "nchw auto": (lambda a: a, None, 3),
    "nhwc given": (lambda a: a.transpose(0, 2, 3, 1), "nhwc", 3),
    "nchw given": (lambda a: a, "nchw", 3),
    "nhw given": (lambda a: a[:, 0], "nhw", 1),
    "rgba nhwc": (lambda a: a.transpose(0, 2, 3, 1), None, 4),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_each_layout_puts_every_pixel_at_its_chw_place(case, tmp_path):
    # Prepare: the truth is channels-first; the file holds it in the case's layout
    to_file, layout, channels = LAYOUTS[case]
    truth = _pixels(6, channels, 5, 7)
    extra = {} if layout is None else {"layout": layout}
    # Execute: x_test is kept in file order, so row n is image n
    data = _load(tmp_path, to_file(truth[:4]), to_file(truth), **extra)
    # Assert
    assert data.input_shape == (channels, 5, 7)
    assert data.inputs == InputSpec((channels, 5, 7), kind="image")
    assert data.x_test.dtype == torch.float32 and data.x_test.shape == (6, channels * 35)
    images = data.inputs.to_model(data.x_test)
    assert images.shape == (6, channels, 5, 7)
    assert torch.equal(images, torch.from_numpy(truth.astype(np.float32)))
    assert images[5, channels - 1, 4, 6].item() == 5000 + 100 * (channels - 1) + 46  # spot check by hand
    assert sorted(data.x[:, 0].tolist()) == [0.0, 1000.0, 2000.0, 3000.0]  # training rows too


def test_uint8_images_stay_uint8_and_are_scaled_on_the_fly(tmp_path):
    # Prepare: two 2x2 RGB images, channels last
    hwc = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3) * 10
    # Execute
    data = _load(tmp_path, hwc, hwc)
    # Assert: stored flat as C, H, W in uint8; the model sees /255 floats
    assert data.x_test.dtype == torch.uint8 and data.x.dtype == torch.uint8
    assert data.x_test[0].tolist() == [0, 30, 60, 90, 10, 40, 70, 100, 20, 50, 80, 110]
    seen = data.inputs.to_model(data.x_test)
    assert seen.shape == (2, 3, 2, 2) and seen[1, 2, 1, 1].item() == pytest.approx(230 / 255)


def test_flat_uint8_rows_with_an_image_input_shape_are_images(tmp_path):
    flat = np.arange(32, dtype=np.uint8).reshape(2, 16)
    data = _load(tmp_path, flat, flat, input_shape=[1, 4, 4])
    assert data.x_test.dtype == torch.uint8 and data.inputs.kind == "image" and data.input_shape == (1, 4, 4)
    assert data.inputs.to_model(data.x_test)[1, 0, 3, 3].item() == pytest.approx(31 / 255)


def test_float_rows_without_an_image_shape_keep_the_old_behaviour(tmp_path):
    # Prepare: 2-D features, and a 4-D array with no 1/3/4-sized channel dim
    data2 = _load(tmp_path, np.ones((4, 6)))
    data4 = _load(tmp_path, _pixels(4, 2, 5, 6))
    # Assert
    assert data2.input_shape == (6,) and data2.inputs.kind == "float"
    assert data4.input_shape == (2, 5, 6) and data4.inputs.kind == "float"


def test_ambiguous_channels_ask_for_the_layout_and_the_layout_settles_it(tmp_path):
    x = _pixels(4, 3, 8, 3)  # [N, 3, 8, 3]: channels could be the second or the last dim
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, x)
    assert info.value.field == "dataset.layout" and "nhwc" in str(info.value) and "nchw" in str(info.value)
    assert _load(tmp_path, x, layout="nhwc").input_shape == (3, 3, 8)
    assert _load(tmp_path, x, layout="nchw").input_shape == (3, 8, 3)


@pytest.mark.parametrize(
    "x,x_test,ds,field",
    [
        (np.zeros((4, 5, 6)), None, {"layout": "nchw"}, "dataset.layout"),  # 3 dims for a 4-dim layout
        (np.zeros((4, 30)), None, {"layout": "nhw"}, "dataset.layout"),  # flat rows need layout=flat
        (np.zeros((4, 5, 6)), None, {"layout": "nwh"}, "dataset.layout"),  # a typo
        (np.zeros((4, 5, 6, 3)), None, {"layout": "nhwc", "input_shape": [5, 6, 3]}, "dataset.input_shape"),
        (np.zeros((4, 5, 6, 3), np.uint8), np.zeros((2, 5, 6, 3)), {}, "dataset.path"),  # uint8 vs float
        (np.zeros((4, 5, 6, 3)), np.zeros((2, 3, 5, 6)), {}, "dataset.path"),  # test in another layout
    ],
)
def test_bad_layouts_are_refused_naming_the_field(tmp_path, x, x_test, ds, field):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, x, x_test, **ds)
    assert info.value.field == field, str(info.value)


def test_a_matching_input_shape_is_accepted_with_an_image_layout(tmp_path):
    data = _load(tmp_path, np.zeros((4, 5, 6, 3)), layout="nhwc", input_shape=[3, 5, 6])
    assert data.input_shape == (3, 5, 6)


def test_nhwc_uint8_images_train_a_cnn_end_to_end(make_cfg, tmp_path):
    from sim.run import run_experiment

    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    x = rng.integers(0, 100, (120, 8, 8, 3)).astype(np.uint8)
    x[y == 1, :4] += 120  # class 1: a bright top half
    np.savez(tmp_path / "img.npz", x_train=x, y_train=y)
    cfg = make_cfg(
        "dataset=npz", f"dataset.path={tmp_path / 'img.npz'}", "model=cnn", "partition=iid", "num_clients=4",
        "participation.clients_per_round=4", "rounds=3",
    )  # fmt: skip
    summary = run_experiment(cfg, tmp_path / "run")
    assert summary["final"]["test_accuracy"] > 0.9
