"""A hub data set, read offline from the Hugging Face cache exactly as after a real download.

No network here, so the cache entry is made the way ``datasets`` makes one: a builder prepares the
data into ``<cache>/<builder>/<config>/<version>/<hash>/`` (Arrow files and ``dataset_info.json``),
and the entry is placed where a hub data set ``owner/name`` is cached
(``<cache>/owner___name/default/<version>/<hash>/``). With ``HF_DATASETS_OFFLINE=1``,
``datasets.load_dataset("owner/name")`` finds it there ("Using the latest cached version"), which is
the path ``dataset=hf dataset.path=owner/name`` takes on a machine without network.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def _hub_cache_entry(tmp_path: Path, owner: str, name: str) -> Path:
    """An image data set with train and test splits, cached as the hub data set ``owner/name``."""
    script = f"""
import glob, json, os, shutil
import datasets, numpy as np
rng = np.random.default_rng(0)
def split(n):
    labels = rng.integers(0, 3, n)
    images = [np.full((6, 6, 3), 40 + 60 * int(k), dtype=np.uint8) + rng.integers(0, 20, (6, 6, 3), dtype=np.uint8)
              for k in labels]
    return datasets.Dataset.from_dict({{"img": images, "label": labels.tolist()}}).cast_column("img", datasets.Image())
split(60).to_parquet("train.parquet")
split(20).to_parquet("test.parquet")
cache = {str(tmp_path / "cache")!r}
datasets.load_dataset("parquet", data_files={{"train": "train.parquet", "test": "test.parquet"}}, cache_dir=cache)
src = glob.glob(os.path.join(cache, "parquet", "*", "*", "*", "dataset_info.json"))[0]
src = os.path.dirname(src)
version, digest = src.split(os.sep)[-2:]
dst = os.path.join(cache, {owner!r} + "___" + {name!r}, "default", version, digest)
shutil.copytree(src, dst)
info_path = os.path.join(dst, "dataset_info.json")
info = json.load(open(info_path))
info.update(config_name="default", dataset_name={name!r})
json.dump(info, open(info_path, "w"))
for f in glob.glob(os.path.join(dst, "parquet-*.arrow")):
    os.rename(f, f.replace("parquet-", {name!r} + "-"))
shutil.rmtree(os.path.join(cache, "parquet"))
"""
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    return tmp_path / "cache"


def test_a_cached_hub_data_set_runs_offline(tmp_path):
    # Prepare: the cache a download of testowner/tiny_images would have left, and no network
    cache = _hub_cache_entry(tmp_path, "testowner", "tiny_images")
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    # Execute
    argv = [
        sys.executable,
        "-m",
        "sim",
        "dataset=hf",
        "dataset.path=testowner/tiny_images",
        "dataset.features=img",
        "model=cnn",
        "num_clients=3",
        "participation.clients_per_round=3",
        "partition=iid",
        "rounds=2",
        "train.crop_padding=1",
        "progress=false",
        "hydra.run.dir=run",
    ]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    # Assert: it ran from the cache, tested on the data set's own 20-row test split
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["test_accuracy"].notna().any()
    # ... and the data came as the hub data set would give them: uint8 pixels, its own test split
    probe = (
        "from sim.data import load_federated_data\n"
        "d = load_federated_data({'name': 'hf', 'path': 'testowner/tiny_images', 'features': 'img'}, "
        "{'name': 'iid'}, 3, seed=0)\n"
        "print(len(d.y_test), d.x.dtype, d.input_shape, d.spec.kind)"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["20", "torch.uint8", "(3,", "6,", "6)", "image"]
    shutil.rmtree(cache)
