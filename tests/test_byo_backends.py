"""A user's own model on a user's own images: one run, the same numbers on every backend.

The model class lives in a test module (``custom_models.TinyNet``), which Ray workers could not
import by name: the Ray backend ships it by value. The data are uint8 images in ``[N, H, W, C]``
layout in an ``.npz`` written here, with augmentation switched on, so the whole path (layout
detection, uint8 storage, the input hook, seeded crops and flips, vmapped training, actors) runs.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim.run import run_experiment

COLUMNS = ("test_accuracy", "test_loss", "train_loss")


def _images(path: Path) -> None:
    rng = np.random.default_rng(0)
    means = rng.integers(30, 220, size=(3, 6, 6, 3))
    y = rng.integers(0, 3, size=90)
    x = np.clip(means[y] + rng.normal(0, 30, size=(90, 6, 6, 3)), 0, 255).astype(np.uint8)
    np.savez(path, x_train=x[:72], y_train=y[:72], x_test=x[72:], y_test=y[72:])


def _run(make_cfg, out: Path, data: Path, *overrides: str) -> pd.DataFrame:
    cfg = make_cfg(
        "dataset=npz",
        f"dataset.path={data}",
        "model=custom",
        "model.target=custom_models.TinyNet",
        "train.crop_padding=1",
        "train.hflip=true",
        "train.epochs=1",
        "train.batch_size=5",
        "num_clients=4",
        "partition=iid",
        "rounds=2",
        *overrides,
    )
    run_experiment(cfg, out)
    return pd.read_csv(out / "metrics.csv")


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode", [("participation.clients_per_round=3",), ("mode=gossip", "topology=ring")], ids=["federated", "gossip"]
)
def test_a_custom_model_on_uint8_images_runs_alike_on_every_backend(make_cfg, tmp_path, ray_session, mode):
    # Prepare
    data = tmp_path / "images.npz"
    _images(data)
    # Execute
    runs = {
        backend: _run(make_cfg, tmp_path / backend, data, *mode, f"backend={backend}", *extra)
        for backend, extra in (
            ("sequential", ("backend.num_threads=1",)),
            ("vectorized", ()),
            ("ray", ("backend.num_actors=2",)),
        )
    }
    # Assert: the same curve everywhere, and the run learned something real
    reference = runs["sequential"]
    for backend, metrics in runs.items():
        for col in COLUMNS:
            assert np.allclose(reference[col], metrics[col], atol=1e-5, equal_nan=True), (backend, col)
    assert reference["train_loss"].iloc[1:].notna().all()
