"""dataset=hf: local copies in every format, read by the code a hub download is read by; no network."""

import os
import subprocess
import sys

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
Image = pytest.importorskip("PIL.Image")

from sim.data import load_federated_data  # noqa: E402
from sim.data.hf import DEFAULTS, check_config, load_pool  # noqa: E402
from sim.errors import ConfigError  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """``datasets`` writes its Arrow cache under tmp_path, not the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _pixels(i: int, shape=(4, 5, 3)) -> np.ndarray:
    """A known image: pixel (r, c, ch) = (i * 40 + r * 10 + c * 2 + ch) mod 256."""
    r, c, ch = np.indices(shape)
    return ((i * 40 + r * 10 + c * 2 + ch) % 256).astype(np.uint8)


def _image_dataset(n: int, writer=None):
    columns = {"img": [Image.fromarray(_pixels(i)) for i in range(n)], "label": [i % 3 for i in range(n)]}
    if writer is not None:
        columns["writer"] = writer
    return datasets.Dataset.from_dict(columns).cast_column("img", datasets.Image())


def _hub_layout(root, train, test=None):
    """Parquet files named as on the hub (data/train-*.parquet, data/test-*.parquet)."""
    os.makedirs(root / "data", exist_ok=True)
    train.to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    if test is not None:
        test.to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def _pool(path, **extra):
    ds = {**DEFAULTS, "name": "hf", "path": str(path), **extra}
    check_config(ds)
    return load_pool(ds, 2, 0)


def _stored(pool, spec_shape=(3, 4, 5)):
    """The stored rows back as [N, H, W, C] images."""
    return pool.x.reshape(-1, *spec_shape).transpose(0, 2, 3, 1)


def test_parquet_with_own_test_split_keeps_uint8_pixels_and_labels(tmp_path):
    root = _hub_layout(tmp_path / "cifar", _image_dataset(10), _image_dataset(4))
    pool = _pool(root, val_fraction=0.0)
    assert pool.x.dtype == np.uint8 and pool.x.shape == (10, 60)
    assert pool.inputs.kind == "image" and pool.inputs.shape == (3, 4, 5) and pool.input_shape == (3, 4, 5)
    assert pool.x_test.shape == (4, 60) and pool.y_test.tolist() == [0, 1, 2, 0]  # the data set's own test split
    assert pool.num_classes == 3
    images = _stored(pool)
    for row, label in enumerate(pool.y):  # every row is one of the known images, with its label
        i = next(k for k in range(10) if np.array_equal(images[row], _pixels(k)))
        assert label == i % 3
    assert np.array_equal(pool.x_test[1].reshape(3, 4, 5), _pixels(1).transpose(2, 0, 1))  # channels first


def test_mean_and_std_are_the_training_rows_per_channel(tmp_path):
    root = _hub_layout(tmp_path / "d", _image_dataset(10), _image_dataset(4))
    pool = _pool(root, val_fraction=0.0)
    scaled = pool.x.reshape(-1, 3, 20).astype(np.float64) / 255
    assert np.allclose(pool.inputs.mean, scaled.mean(axis=(0, 2)), atol=1e-12)
    assert np.allclose(pool.inputs.std, scaled.std(axis=(0, 2)), atol=1e-12)
    assert _pool(root, normalize=False).inputs.mean is None


def test_without_test_split_test_fraction_is_carved(tmp_path):
    path = tmp_path / "one.parquet"
    _image_dataset(30).to_parquet(str(path))
    pool = _pool(path, test_fraction=0.2, val_fraction=0.25)
    assert (len(pool.y_test), len(pool.y_val), len(pool.y)) == (6, 6, 18)
    assert sorted(np.bincount(pool.y_test).tolist()) == [2, 2, 2]  # stratified by label


def test_imagefolder_of_png_files_grayscale_gives_one_channel(tmp_path):
    for label in ("cat", "dog"):
        os.makedirs(tmp_path / "imgs" / label)
        for i in range(3):
            Image.fromarray(np.full((6, 7), 10 * i + (label == "dog"), np.uint8), mode="L").save(
                tmp_path / "imgs" / label / f"{i}.png"
            )
    pool = _pool(tmp_path / "imgs", format="imagefolder", val_fraction=0.0, test_fraction=0.0)
    assert pool.inputs.shape == (1, 6, 7) and pool.x.shape == (6, 42)
    firsts = sorted(zip(pool.y.tolist(), pool.x[:, 0].tolist(), strict=True))
    assert firsts == [(0, 0), (0, 10), (0, 20), (1, 1), (1, 11), (1, 21)]  # ClassLabel: cat 0, dog 1


def test_rgba_and_palette_images_become_rgb(tmp_path):
    rgba = Image.fromarray(np.dstack([_pixels(0), np.full((4, 5), 7, np.uint8)]), mode="RGBA")
    pal = Image.fromarray(_pixels(1)).convert("P")
    ds = datasets.Dataset.from_dict({"img": [rgba, pal], "label": [0, 1]}).cast_column("img", datasets.Image())
    ds.to_parquet(str(tmp_path / "m.parquet"))
    pool = _pool(tmp_path / "m.parquet", val_fraction=0.0, test_fraction=0.0)
    assert pool.inputs.shape == (3, 4, 5)
    assert np.array_equal(pool.x[pool.y == 0][0].reshape(3, 4, 5), _pixels(0).transpose(2, 0, 1))


def test_save_to_disk_folder_with_string_labels(tmp_path):
    ds = datasets.Dataset.from_dict({"img": [Image.fromarray(_pixels(i)) for i in range(6)]})
    ds = ds.add_column("kind", ["b", "a", "c", "a", "b", "c"]).cast_column("img", datasets.Image())
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(str(tmp_path / "saved"))
    pool = _pool(tmp_path / "saved", label="kind", val_fraction=0.0)
    assert pool.num_classes == 3 and pool.y_test.tolist() == [1, 0]  # sorted names: a 0, b 1, c 2


def test_csv_numeric_columns_are_float_features(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,y,who\n" + "".join(f"{i},{2 * i + 0.5},{i % 2},w{i % 3}\n" for i in range(12)))
    pool = _pool(path, features=["a", "b"], label="y", partition_column="who", val_fraction=0.0, test_fraction=0.0)
    assert pool.x.dtype == np.float32 and pool.inputs.kind == "float" and pool.inputs.shape == (2,)
    assert np.array_equal(pool.x[:, 1], pool.x[:, 0] * 2 + 0.5)
    assert np.array_equal(pool.y, pool.x[:, 0].astype(int) % 2)
    assert np.array_equal(pool.groups, pool.x[:, 0].astype(int) % 3)  # w0 w1 w2 -> 0 1 2
    assert np.allclose(pool.inputs.mean, [5.5, 11.5]) and np.allclose(
        pool.inputs.std, np.std(np.arange(12)) * np.array([1, 2])
    )
    auto = _pool(path, label="y", val_fraction=0.0, test_fraction=0.0)  # features null: every numeric column
    assert auto.inputs.shape == (2,)


def test_text_with_char_tokenizer(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"text": "abca", "label": 0}\n{"text": "cb", "label": 1}\n')
    pool = _pool(path, tokenizer="char", seq_len=3, val_fraction=0.0, test_fraction=0.0)
    assert pool.inputs.kind == "tokens" and pool.inputs.vocab_size == 5 and pool.x.dtype == np.int64
    assert sorted(pool.x.tolist()) == [[2, 3, 4], [4, 3, 0]]  # a 2, b 3, c 4; cut to 3, padded with 0


def test_natural_partition_over_a_column_end_to_end(tmp_path):
    writers = ["w2", "w0", "w1", "w0", "w2", "w1", "w0", "w1", "w2"] * 2
    root = _hub_layout(tmp_path / "femnist", _image_dataset(18, writer=writers))
    ds = {"name": "hf", "path": str(root), "partition_column": "writer", "val_fraction": 0.0, "test_fraction": 0.0}
    data = load_federated_data(ds, {"name": "natural"}, 3, seed=0)
    assert data.client_sizes.tolist() == [6, 6, 6]
    labels = [i % 3 for i in range(18)]
    for k, name in enumerate(["w0", "w1", "w2"]):
        _, y = data.client(k)
        assert sorted(y.tolist()) == sorted(lab for lab, w in zip(labels, writers, strict=True) if w == name)


def test_load_federated_data_iid_end_to_end(tmp_path):
    root = _hub_layout(tmp_path / "c", _image_dataset(20), _image_dataset(5))
    data = load_federated_data({"name": "hf", "path": str(root)}, {"name": "iid"}, 4, seed=0)
    assert data.x.dtype.is_floating_point is False and data.x.shape[1] == 60
    assert data.num_clients == 4 and int(data.client_sizes.sum()) + len(data.y_val) == 20
    assert data.spec.kind == "image" and data.x_test.shape == (5, 60)


# ---- errors, each naming its field ----


def test_path_missing_or_absent(tmp_path):
    for path, match in [(None, "hub name"), ("???", "hub name"), (str(tmp_path / "no.parquet"), "Nothing exists")]:
        with pytest.raises(ConfigError, match=match) as info:
            check_config({**DEFAULTS, "name": "hf", "path": path})
        assert info.value.field == "dataset.path"


@pytest.mark.parametrize(
    "extra,field,match",
    [
        ({"features": "pixels"}, "dataset.features", "img \\(image\\), label \\(int64\\)"),
        ({"label": "target"}, "dataset.label", "img \\(image\\), label \\(int64\\)"),
        ({"partition_column": "writer_id"}, "dataset.partition_column", "a column of split train"),
        ({"features": "label", "input_kind": "image"}, "dataset.features", "holds int64"),
        ({"split": "training"}, "dataset.split", "train, test"),
        ({"test_split": "validation"}, "dataset.test_split", "train, test"),
        ({"num_classes": 2}, "dataset.num_classes", "at least 3"),
    ],
)
def test_column_and_split_errors(tmp_path, extra, field, match):
    root = _hub_layout(tmp_path / "c", _image_dataset(6), _image_dataset(2))
    with pytest.raises(ConfigError, match=match) as info:
        _pool(root, **extra)
    assert info.value.field == field


def test_imagefolder_with_non_image_column_and_text_without_tokenizer(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nab,0\ncd,1\n")
    with pytest.raises(ConfigError, match="holds string") as info:
        _pool(path, features="text", input_kind="image")
    assert info.value.field == "dataset.features"
    with pytest.raises(ConfigError, match="char") as info:
        _pool(path)
    assert info.value.field == "dataset.tokenizer"


def test_undecodable_bytes_in_an_image_column(tmp_path):
    cells = [{"bytes": b"not an image", "path": None}] * 2
    ds = datasets.Dataset.from_dict({"img": cells, "label": [0, 1]}).cast_column("img", datasets.Image())
    ds.to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(ConfigError, match="not a readable image") as info:
        _pool(tmp_path / "bad.parquet")
    assert info.value.field == "dataset.features"


def test_images_of_several_sizes_are_named(tmp_path):
    imgs = [Image.fromarray(_pixels(0)), Image.fromarray(_pixels(1, (6, 5, 3)))]
    ds = datasets.Dataset.from_dict({"img": imgs, "label": [0, 1]}).cast_column("img", datasets.Image())
    ds.to_parquet(str(tmp_path / "s.parquet"))
    with pytest.raises(ConfigError, match="5x4 \\(1 images\\), 5x6 \\(1 images\\)") as info:
        _pool(tmp_path / "s.parquet", val_fraction=0.0, test_fraction=0.0)
    assert info.value.field == "dataset.features"


@pytest.mark.parametrize("values,match", [("0.5,1.5", "label 0.5"), ("-1,0", "label -1")])
def test_labels_that_are_not_class_indices(tmp_path, values, match):
    path = tmp_path / "t.csv"
    a, b = values.split(",")
    path.write_text(f"x,label\n1,{a}\n2,{b}\n")
    with pytest.raises(ConfigError, match=match) as info:
        _pool(path, features=["x"])
    assert info.value.field == "dataset.label"


@pytest.mark.parametrize(
    "key,value",
    [("format", "parket"), ("normalize", "yes"), ("seq_len", 0), ("num_classes", "abc"), ("tokenizer", "bpe")],
)
def test_bad_settings_are_refused_before_reading(key, value):
    with pytest.raises(ConfigError) as info:
        check_config({**DEFAULTS, "name": "hf", "path": "/nonexistent/x.parquet", key: value})
    assert info.value.field == f"dataset.{key}"


def _cli(tmp_path, *args):
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cli_cache"), "HF_DATASETS_OFFLINE": "1"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "sim", *args, f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_runs_a_parquet_data_set(tmp_path):
    root = _hub_layout(tmp_path / "c", _image_dataset(40), _image_dataset(6))
    done = _cli(
        tmp_path, "dataset=hf", f"dataset.path={root}", "partition=iid", "num_clients=10", "model=mlp", "rounds=1"
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_cli_offline_hub_name_not_in_cache_is_a_config_error(tmp_path):
    done = _cli(tmp_path, "dataset=hf", "dataset.path=someone/not-cached-anywhere", "model=mlp", "rounds=1")
    assert done.returncode == 2 and "dataset.path" in done.stderr, done.stderr[-3000:]
