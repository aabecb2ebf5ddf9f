"""dataset=hf on images stored as ``{"bytes", "path"}`` structs: what pandas writes for a column of such dicts.

``datasets`` stores an ``Image`` column as exactly this struct, but a parquet written by pandas (or pyarrow)
carries no ``Image`` feature in its metadata, so ``datasets`` reads the column back as a plain dict of
Values. The simulator takes it as an image column; a struct that is not images is refused with a message
that says what an image column must look like.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
Image = pytest.importorskip("PIL.Image")

from sim.data.hf import DEFAULTS, check_config, load_pool  # noqa: E402
from sim.errors import ConfigError  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _pixels(i: int) -> np.ndarray:
    """A known 4x5 RGB image: pixel (r, c, ch) = (i * 40 + r * 10 + c * 2 + ch) mod 256."""
    r, c, ch = np.indices((4, 5, 3))
    return ((i * 40 + r * 10 + c * 2 + ch) % 256).astype(np.uint8)


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pixels(i)).save(buffer, format="PNG")
    return buffer.getvalue()


def _pandas_parquet(path, n: int) -> None:
    """The layout of the issue: a pandas column of {"bytes": PNG, "path": None} dicts, saved with to_parquet."""
    frame = pd.DataFrame(
        {"image": [{"bytes": _png(i), "path": None} for i in range(n)], "label": [i % 3 for i in range(n)]}
    )
    frame.to_parquet(path)


def _pool(path, **extra):
    ds = {**DEFAULTS, "name": "hf", "path": str(path), **extra}
    check_config(ds)
    return load_pool(ds, 2, 0)


def _which(row: np.ndarray, n: int) -> int:
    """The index of the known image this stored (channels-first, flat) row is."""
    image = row.reshape(3, 4, 5).transpose(1, 2, 0)
    return next(i for i in range(n) if np.array_equal(image, _pixels(i)))


def test_a_pandas_parquet_of_bytes_dicts_is_an_image_column(tmp_path):
    _pandas_parquet(tmp_path / "train.parquet", 12)
    pool = _pool(tmp_path / "train.parquet", val_fraction=0.0, test_fraction=0.25)  # features=null: detected
    assert pool.inputs.kind == "image" and pool.inputs.shape == (3, 4, 5) and pool.x.dtype == np.uint8
    assert len(pool.x) == 9 and len(pool.x_test) == 3
    for x, y in ((pool.x, pool.y), (pool.x_test, pool.y_test)):
        for row, label in zip(x, y, strict=True):  # every row is its known image (PNG is lossless), with its label
            assert label == _which(row, 12) % 3


def test_the_arrow_struct_with_string_paths_reads_bytes_and_files(tmp_path):
    # An Arrow file whose column is struct<bytes: binary, path: string>; two rows hold only a file path
    for i in (0, 1):
        Image.fromarray(_pixels(i)).save(tmp_path / f"{i}.png")
    cells = [{"bytes": None, "path": str(tmp_path / f"{i}.png")} for i in (0, 1)]
    cells += [{"bytes": _png(i), "path": f"{i}.png"} for i in range(2, 8)]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"img": pa.array(cells, type=struct), "label": pa.array([i % 2 for i in range(8)])})
    with pa.OSFile(str(tmp_path / "train.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    pool = _pool(tmp_path / "train.arrow", features="img", input_kind="image", val_fraction=0.0, test_fraction=0.25)
    seen = sorted(_which(row, 8) for row in np.concatenate([pool.x, pool.x_test]))
    assert seen == list(range(8)) and pool.inputs.shape == (3, 4, 5)


def test_a_struct_of_file_paths_alone_is_an_image_column(tmp_path):
    for i in range(6):
        Image.fromarray(_pixels(i)).save(tmp_path / f"{i}.png")
    cells = [{"path": str(tmp_path / f"{i}.png")} for i in range(6)]
    pd.DataFrame({"image": cells, "label": [i % 2 for i in range(6)]}).to_parquet(tmp_path / "paths.parquet")
    pool = _pool(tmp_path / "paths.parquet", val_fraction=0.0, test_fraction=0.0)
    assert pool.inputs.kind == "image" and sorted(_which(row, 6) for row in pool.x) == list(range(6))


@pytest.mark.parametrize(
    "cells,shown",
    [
        ([{"x": float(i), "y": 1.0} for i in range(6)], "struct {x: float64, y: float64}"),
        ([{"bytes": i, "path": None} for i in range(6)], "struct {bytes: int64, path: null}"),  # bytes not binary
        ([{"bytes": _png(i), "path": None, "size": 5} for i in range(6)], "struct {bytes: binary, path: null, size"),
        ([_png(i) for i in range(6)], "(binary)"),  # raw PNG bytes, not wrapped in a dict
        ([{"path": None} for i in range(6)], "struct {path: null}"),  # nothing to read
    ],
)
def test_a_column_that_is_not_images_names_the_fix(tmp_path, cells, shown):
    pd.DataFrame({"point": cells, "label": [i % 2 for i in range(6)]}).to_parquet(tmp_path / "p.parquet")
    for extra in ({}, {"features": "point"}, {"features": "point", "input_kind": "image"}):
        with pytest.raises(ConfigError) as info:
            _pool(tmp_path / "p.parquet", **extra)
        assert info.value.field == "dataset.features"
        message = str(info.value)
        assert shown in message  # the column's real type, not "dict"
        assert "'bytes': <PNG/JPEG bytes>" in message and "cast_column('img', datasets.Image())" in message


@pytest.mark.slow
def test_cli_runs_on_a_pandas_parquet(tmp_path):
    _pandas_parquet(tmp_path / "mine.parquet", 30)
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cli_cache"), "HF_DATASETS_OFFLINE": "1"}
    argv = [sys.executable, "-m", "sim", "dataset=hf", f"dataset.path={tmp_path / 'mine.parquet'}", "model=logreg"]
    argv += ["num_clients=3", "participation.clients_per_round=3", "rounds=1", "progress=false"]
    done = subprocess.run(
        [*argv, f"hydra.run.dir={tmp_path / 'out'}"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] == "completed"
