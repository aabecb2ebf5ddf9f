"""LEAF JSON folders: FEMNIST-shaped images and Shakespeare text, one client per user, every bad file named."""

import json

import numpy as np
import pytest
import torch

from sim.data import load_federated_data
from sim.data.inputs import InputSpec
from sim.data.leaf import ALL_LETTERS, DEFAULTS, load_pool
from sim.errors import ConfigError


def write_leaf(path, users: dict, num_samples=None, **extra) -> None:
    """One LEAF .json file as LEAF's preprocessing writes it: users, num_samples, user_data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(users)
    content = {
        "users": names,
        "num_samples": num_samples if num_samples is not None else [len(users[u][0]) for u in names],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
        **extra,
    }
    path.write_text(json.dumps(content))


def femnist_user(user_no: int, rows: int, first_label: int = 0) -> tuple[list, list]:
    """28x28 images as 784 values k/255: pixel (0, 0) = user number, (0, 1) = row, (27, 27) = 255."""
    images = np.zeros((rows, 28, 28))
    images[:, 0, 0] = user_no
    images[:, 0, 1] = np.arange(rows)
    images[:, 27, 27] = 255
    return (images / 255.0).reshape(rows, 784).tolist(), [(first_label + r) % 3 for r in range(rows)]


def femnist_folder(root):
    """Train users f3 (3 rows) and f1 (2 rows) in one file, f2 (4 rows) in another; test: f1 and unknown f9."""
    write_leaf(root / "train" / "b.json", {"f3": femnist_user(3, 3), "f1": femnist_user(1, 2)})
    write_leaf(root / "train" / "a.json", {"f2": femnist_user(2, 4)})
    write_leaf(root / "test" / "t.json", {"f1": femnist_user(1, 1), "f9": femnist_user(9, 2)})
    return root


def leaf_cfg(root, **extra) -> dict:
    return {"name": "leaf", "path": str(root), "val_fraction": 0.0, **extra}


LINE = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suf"  # 81 characters


def text_user(rows: int) -> tuple[list, list]:
    """``rows`` copies of LINE's first 80 characters, each followed by the 81st ("f")."""
    return [LINE[:80]] * rows, [LINE[80]] * rows


# ---------------------------------------------------------------- FEMNIST


def test_femnist_users_are_clients_in_sorted_order_with_their_own_rows(tmp_path):
    root = femnist_folder(tmp_path / "data")
    data = load_federated_data(leaf_cfg(root), {"name": "natural"}, 3, seed=0)
    # users f1, f2, f3 -> clients 0, 1, 2 with 2, 4, 3 rows, in file order within each user
    assert data.offsets.tolist() == [0, 2, 6, 9]
    images = data.inputs.to_model(data.x)
    assert images.shape == (9, 1, 28, 28)
    assert (images[:, 0, 0, 0] * 255).round().tolist() == [1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert (images[:, 0, 0, 1] * 255).round().tolist() == [0, 1, 0, 1, 2, 3, 0, 1, 2]
    assert torch.all(images[:, 0, 27, 27] == 1.0) and images[:, 0, 27, 26].abs().sum() == 0
    assert data.y.tolist() == [0, 1, 0, 1, 2, 0, 0, 1, 2]
    # the test set pools the test users, f9 (not a training user) included, sorted by user
    assert (data.inputs.to_model(data.x_test)[:, 0, 0, 0] * 255).round().tolist() == [1, 9, 9]
    assert data.num_classes == 62 and data.input_shape == (1, 28, 28)


def test_femnist_pixels_are_stored_as_uint8_when_that_is_exact(tmp_path):
    root = femnist_folder(tmp_path / "data")
    pool = load_pool({**DEFAULTS, **leaf_cfg(root)}, 3, seed=0)
    assert pool.x.dtype == np.uint8 and pool.x_test.dtype == np.uint8
    assert pool.inputs == InputSpec((1, 28, 28), kind="image")
    assert pool.x[0, 0] == 1 and pool.x[0, 783] == 255
    # a value that is no k/255 keeps float32 storage, so the model sees exactly the file's numbers
    x, y = femnist_user(1, 2)
    x[0][5] = 0.5
    write_leaf(tmp_path / "f" / "all.json", {"u": (x, y)})
    pool = load_pool({**DEFAULTS, **leaf_cfg(tmp_path / "f"), "test_fraction": 0.0}, 1, seed=0)
    assert pool.x.dtype == np.float32 and pool.x[0, 5] == 0.5


def test_val_fraction_is_carved_per_user(tmp_path):
    root = femnist_folder(tmp_path / "data")
    data = load_federated_data(leaf_cfg(root, val_fraction=0.5), {"name": "natural"}, 3, seed=0)
    # floor(0.5 * [2, 4, 3]) = [1, 2, 1] rows per user go to the server
    assert data.client_sizes.tolist() == [1, 2, 2] and len(data.y_val) == 4


def test_one_folder_or_one_file_carves_the_test_set_per_user(tmp_path):
    users = {f"u{k}": femnist_user(k, 10) for k in range(3)}
    write_leaf(tmp_path / "all_data" / "all.json", users)
    cfg = leaf_cfg(tmp_path / "all_data", test_fraction=0.2, val_fraction=0.25)
    for path in (tmp_path / "all_data", tmp_path / "all_data" / "all.json"):
        data = load_federated_data({**cfg, "path": str(path)}, {"name": "natural"}, 3, seed=0)
        # each user: 2 test rows, then floor(0.25 * 8) = 2 validation rows, 6 to train
        assert data.client_sizes.tolist() == [6, 6, 6] and (len(data.y_val), len(data.y_test)) == (6, 6)


def test_other_partitions_use_the_pooled_rows(tmp_path):
    root = femnist_folder(tmp_path / "data")
    data = load_federated_data(leaf_cfg(root), {"name": "iid"}, 2, seed=0)
    assert data.client_sizes.tolist() == [5, 4]


def test_natural_needs_one_client_per_user(tmp_path):
    root = femnist_folder(tmp_path / "data")
    with pytest.raises(ConfigError) as info:
        load_federated_data(leaf_cfg(root), {"name": "natural"}, 5, seed=0)
    assert info.value.field == "num_clients" and "3" in str(info.value)


# ---------------------------------------------------------------- Shakespeare


def test_shakespeare_characters_get_leafs_ids(tmp_path):
    write_leaf(tmp_path / "s" / "train" / "x.json", {"HAMLET": text_user(2), "OPHELIA": text_user(1)})
    write_leaf(tmp_path / "s" / "test" / "x.json", {"HAMLET": text_user(1)})
    data = load_federated_data(leaf_cfg(tmp_path / "s"), {"name": "natural"}, 2, seed=0)
    # "To be," by hand from ALL_LETTERS: T=25+19, o=53+14, space=1, b=53+1, e=53+4, ","=8
    assert data.x[0, :6].tolist() == [44, 67, 1, 54, 57, 8]
    assert data.y[0].item() == ALL_LETTERS.index("f") == 58  # the 81st character, "f"
    assert data.x.dtype == torch.int64 and data.x.shape == (3, 80)
    assert data.inputs == InputSpec((80,), kind="tokens", vocab_size=80)
    assert data.num_classes == 80 and data.offsets.tolist() == [0, 2, 3]
    assert data.inputs.to_model(data.x_test).dtype == torch.long
    assert len(ALL_LETTERS) == 80 and ALL_LETTERS.find("\n") == 0 and ALL_LETTERS.find("}") == 79


def test_generic_numeric_vectors(tmp_path):
    write_leaf(
        tmp_path / "v" / "a.json", {"u1": ([[1.0, 2.0, 3.0]] * 4, [0, 4, 0, 4]), "u0": ([[0.5, 0, 0]] * 4, [1] * 4)}
    )
    data = load_federated_data(leaf_cfg(tmp_path / "v", test_fraction=0.25), {"name": "natural"}, 2, seed=0)
    assert data.inputs == InputSpec((3,), kind="float") and data.num_classes == 5
    assert data.x[0].tolist() == [0.5, 0.0, 0.0] and data.client_sizes.tolist() == [3, 3]


# ---------------------------------------------------------------- bad folders, each naming what to fix


def _bad(tmp_path, name: str):
    """A LEAF folder broken in one way; returns (folder, text the error must contain)."""
    root = tmp_path / "bad"
    good = {"f1": femnist_user(1, 2), "f2": femnist_user(2, 2)}
    file = root / "train" / "d.json"
    if name == "no json":
        (root / "train").mkdir(parents=True)
        (root / "train" / "notes.txt").write_text("x")
        return root, "no .json"
    if name == "not json":
        file.parent.mkdir(parents=True)
        file.write_text("{users: ")
        return root, "d.json"
    if name == "missing keys":
        file.parent.mkdir(parents=True)
        file.write_text(json.dumps({"users": ["f1"], "num_samples": [2]}))
        return root, "user_data"
    if name == "num_samples":
        write_leaf(file, good, num_samples=[2, 5])
        return root, "'f2'"
    if name == "x and y lengths":
        write_leaf(file, {**good, "f3": (femnist_user(3, 2)[0], [0])}, num_samples=[2, 2, 2])
        return root, "'f3'"
    if name == "users vs user_data":
        write_leaf(file, good)
        content = json.loads(file.read_text())
        content["users"] = ["f1", "f7"]
        file.write_text(json.dumps(content))
        return root, "'f7'"
    if name == "mixed shapes":
        write_leaf(file, {**good, "f3": ([[0.0] * 10] * 2, [0, 1])})
        return root, "'f3'"
    if name == "ragged rows":
        write_leaf(file, {**good, "f3": ([[0.0] * 784, [0.0] * 10], [0, 1])})
        return root, "'f3'"
    if name == "user in two files":
        write_leaf(file, good)
        write_leaf(root / "train" / "e.json", {"f2": femnist_user(2, 1)})
        return root, "'f2'"
    if name == "labels":
        write_leaf(file, {**good, "f3": (femnist_user(3, 1)[0], ["A"])})
        return root, "'f3'"
    if name == "unknown character":
        x, y = text_user(1)
        write_leaf(file, {"KING": ([x[0][:79] + "é"], y)})
        return root, "'é'"
    if name == "missing path":
        return tmp_path / "nowhere", "nowhere"
    raise AssertionError(name)


BAD = [
    "no json",
    "not json",
    "missing keys",
    "num_samples",
    "x and y lengths",
    "users vs user_data",
    "mixed shapes",
    "ragged rows",
    "user in two files",
    "labels",
    "unknown character",
    "missing path",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_leaf_folders_name_the_path_the_file_and_the_user(case, tmp_path):
    root, named = _bad(tmp_path, case)
    with pytest.raises(ConfigError) as info:
        load_federated_data(leaf_cfg(root), {"name": "natural"}, 2, seed=0)
    assert info.value.field == "dataset.path"
    assert named in str(info.value), str(info.value)
    if case not in ("no json", "missing path"):
        assert "d.json" in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "extra,field",
    [({"path": None}, "dataset.path"), ({"task": "femnst"}, "dataset.task"), ({"data_seed": -1}, "dataset.data_seed")],
)
def test_bad_settings_are_refused_before_reading(extra, field, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_federated_data({**leaf_cfg(tmp_path), **extra}, {"name": "natural"}, 2, seed=0)
    assert info.value.field == field


def test_dataset_leaf_defaults_to_the_natural_partition_and_runs(make_cfg, tmp_path):
    from sim.run import run_experiment

    root = femnist_folder(tmp_path / "data")
    cfg = make_cfg(
        "dataset=leaf", f"dataset.path={root}", "num_clients=3", "rounds=1", "model.hidden=[8]",
        "participation.clients_per_round=3",
    )  # fmt: skip
    assert cfg.partition.name == "natural"
    summary = run_experiment(cfg, tmp_path / "run")
    assert summary["status"] == "completed"


def test_shakespeare_rows_feed_the_character_model(tmp_path):
    from omegaconf import OmegaConf

    from sim.models import build_model

    write_leaf(tmp_path / "s" / "all.json", {"A": text_user(3), "B": text_user(2)})
    data = load_federated_data(leaf_cfg(tmp_path / "s", test_fraction=0.0), {"name": "natural"}, 2, seed=0)
    cfg = OmegaConf.create({"name": "charlstm", "embed_dim": 8, "hidden": 16, "layers": 1, "cell": "gru"})
    model = build_model(cfg, data.spec, data.num_classes, seed=0)
    assert model(data.x[:2]).shape == (2, 80)


def test_a_shakespeare_run_with_the_character_model(make_cfg, tmp_path):
    from sim.run import run_experiment

    write_leaf(tmp_path / "s" / "train" / "x.json", {"A": text_user(4), "B": text_user(3)})
    write_leaf(tmp_path / "s" / "test" / "x.json", {"A": text_user(2)})
    cfg = make_cfg(
        "dataset=leaf", f"dataset.path={tmp_path / 's'}", "model=charlstm", "model.hidden=16", "model.layers=1",
        "num_clients=2", "participation.clients_per_round=2", "rounds=2",
    )  # fmt: skip
    assert run_experiment(cfg, tmp_path / "run")["status"] == "completed"
