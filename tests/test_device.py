"""backend.device (sim/backends/device.py): the values, the CPU runs equal to the default's, the byte count.

No GPU here: cuda is tested as a clean refusal, the counting on the ``meta`` device (every move crosses), and
the backends' moves with a recording mover (which tensors would cross on cuda). experiments/gpu_check.sh runs
the cuda path where a GPU is lent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from sim.backends import build_backend
from sim.backends.device import DeviceMover, check_device_name, resolve_device
from sim.backends.sequential import SequentialBackend
from sim.backends.vectorized import VectorizedBackend
from sim.checkpoint import load_checkpoint
from sim.data import FederatedData
from sim.errors import ConfigError
from sim.experiment import build_experiment
from sim.merge import main as merge_main
from sim.run import run_experiment
from sim.training import ClientCorrection, TrainConfig, local_train
from tests.forked_cli import run_module

TINY = ("num_clients=4", "participation.clients_per_round=3", "model.hidden=[8]", "seed=3")


def _cfg(*overrides: str):
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", *TINY, *overrides])


@pytest.fixture(scope="module")
def exp():
    return build_experiment(_cfg())


# ---- values ------------------------------------------------------------------------------------


def test_auto_and_cpu_resolve_to_the_cpu_here():
    assert not torch.cuda.is_available()  # this suite's machine; a GPU runner checks cuda in gpu_check.sh
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("sequential", "vectorized", "auto"):
        assert build_backend({"name": name, "device": "auto"}).mover.device == torch.device("cpu")


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError) as info:
        resolve_device(value)
    assert info.value.field == "backend.device" and info.value.exit_code == 2
    assert "sees no CUDA GPU" in str(info.value)
    assert check_device_name(value) == value  # the spelling itself is fine (sim.merge checks it before torch)


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "", 0, None])
def test_other_spellings_are_refused(value):
    with pytest.raises(ConfigError) as info:
        check_device_name(value)
    assert info.value.field == "backend.device" and "cuda:N" in info.value.allowed


def test_every_backend_validates_the_key_before_any_data():
    for name in ("sequential", "vectorized", "auto"):
        with pytest.raises(ConfigError) as info:
            build_backend({"name": name, "device": "cuda"})
        assert info.value.field == "backend.device"
    pytest.importorskip("ray")
    with pytest.raises(ConfigError) as info:  # Ray gives each actor its own GPUs: no index to pick
        build_backend({"name": "ray", "device": "cuda:0"})
    assert info.value.field == "backend.device" and "backend=ray" in info.value.allowed


def test_command_line_refuses_cuda_in_one_paragraph(tmp_path):
    result = run_module("sim", ["backend=vectorized", "backend.device=cuda", f"hydra.run.dir={tmp_path}/r"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "backend.device='cuda'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "metrics.csv").exists()


# ---- device=cpu gives the default's numbers, bit for bit -------------------------------------------


def test_sequential_on_cpu_equals_local_train_bit_for_bit(exp):
    """Unequal clients, momentum and a FedProx/SCAFFOLD-like correction: the reference function on the data."""
    train = TrainConfig(epochs=2, batch_size=3, lr=0.1, momentum=0.9)
    setup = exp.setup
    setup.train = train
    ids = torch.tensor([2, 0, 3])
    offsets = torch.randn(3, exp.layout.size, generator=torch.Generator().manual_seed(1)) * 1e-3
    corr = ClientCorrection(0.01, offsets)
    backend = SequentialBackend(device="cpu")
    backend.setup(setup)
    batch = backend.train(ids, exp.initial_params, 4, correction=corr)
    for k, c in enumerate(ids.tolist()):
        x, y = exp.data.client(c)
        ref = local_train(
            exp.model, exp.layout, exp.initial_params, x, y, train, setup.generator(4, c), prox=0.01, offset=offsets[k]
        )
        assert torch.equal(batch.params[k], ref.params)
        assert float(batch.train_loss[k]) == ref.loss
    assert backend.host_device_bytes == 0


def _metrics(folder: Path, *overrides: str):
    summary = run_experiment(_cfg("rounds=2", "save_model=true", *overrides), folder)
    rows = (folder / "metrics.csv").read_text().splitlines()
    wall = rows[0].split(",").index("wall_s")
    return summary, [",".join(v for i, v in enumerate(r.split(",")) if i != wall) for r in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per backend, a two-round run with backend.device=auto and one with cpu (their checkpoints feed merge)."""
    root = tmp_path_factory.mktemp("runs")
    return {
        (backend, device): (
            root / backend / device,
            *_metrics(root / backend / device, f"backend={backend}", f"backend.device={device}"),
        )
        for backend in ("sequential", "vectorized")
        for device in ("auto", "cpu")
    }


@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_device_cpu_run_equals_the_default_run_and_moves_nothing(runs, backend):
    folder, cpu, rows_cpu = runs[backend, "cpu"]
    _, default, rows_default = runs[backend, "auto"]
    assert rows_cpu == rows_default  # every logged number, as text: bit for bit
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["device"] == "cpu" and saved["host_device_bytes"] == 0
    assert default["device"] == "cpu" and default["host_device_bytes"] == 0


def test_merge_on_cpu_equals_the_default_and_refuses_cuda(runs, tmp_path, capsys):
    ingredients = [str(runs["sequential", d][0] / "model.safetensors") for d in ("auto", "cpu")]
    ingredients.append(str(runs["vectorized", "cpu"][0] / "model.safetensors"))
    shift = ["--shift-noise", "3", "--shift-pixels", "1"]  # the noise is drawn on the host, then moved
    out = {}
    for device in (None, "cpu"):
        args = [*ingredients, *shift, "--out", str(tmp_path / f"{device}.safetensors")]
        assert merge_main(args + ([] if device is None else ["--device", device])) == 0
        out[device] = (capsys.readouterr(), load_checkpoint(tmp_path / f"{device}.safetensors")[1])
    assert out[None][0].out == out["cpu"][0].out  # the score table, every digit
    assert torch.equal(out[None][1], out["cpu"][1])
    assert "device cpu: 0 bytes moved" in out["cpu"][0].err
    for bad, said in (("cuda", "sees no CUDA GPU"), ("gpu", "cuda:N")):
        assert merge_main([*ingredients, "--device", bad, "--out", str(tmp_path / "x.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --device='{bad}'") and said in err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.xdist_group("ray")
def test_ray_with_device_cpu_equals_the_sequential_default(exp, ray_session):
    from sim.backends.ray_backend import RayBackend

    ids = torch.tensor([0, 1, 2, 3])
    ray_backend = RayBackend(num_actors=1, device="cpu", inner="sequential", driver_max_clients=0)
    seq = SequentialBackend()  # the default device, cpu here
    seq.setup(exp.setup)
    ref = seq.train(ids, exp.initial_params, 1)
    try:
        ray_backend.setup(exp.setup)
        got = ray_backend.train(ids, exp.initial_params, 1)
        devices = {i["device"] for i in ray_session.get([a.ready.remote() for a in ray_backend.actors])}
    finally:
        ray_backend.close()
    assert devices == {"cpu"}
    assert torch.equal(got.params, ref.params) and torch.equal(got.train_loss, ref.train_loss)


# ---- the byte count ----------------------------------------------------------------------------------


def test_mover_counts_what_crosses_and_keeps_storage_dtypes():
    """The meta device stands for a GPU: every move crosses, and nothing is computed."""
    mover = DeviceMover(torch.device("meta"))
    data = FederatedData(
        x=torch.zeros(10, 12, dtype=torch.uint8),
        y=torch.zeros(10, dtype=torch.long),
        offsets=torch.tensor([0, 4, 10]),
        x_val=torch.zeros(2, 12, dtype=torch.uint8),
        y_val=torch.zeros(2, dtype=torch.long),
        x_test=torch.zeros(3, 12, dtype=torch.uint8),
        y_test=torch.zeros(3, dtype=torch.long),
        num_classes=2,
        input_shape=(3, 2, 2),
        name="t",
    )
    mover.upload_data(data)
    assert mover.host_device_bytes == 15 * 12 + 15 * 8  # uint8 pixels at one byte each, int64 labels
    assert data.x.device.type == "meta" and data.x.dtype == torch.uint8
    assert data.offsets.device.type == "cpu"  # bookkeeping stays on the host
    mover.upload_data(data)  # already there: nothing moves
    assert mover.host_device_bytes == 15 * 20
    on_device = mover.to_device(torch.zeros(5))
    assert mover.to_device(on_device) is on_device and mover.host_device_bytes == 15 * 20 + 20
    tree = mover.tree({"a": [torch.zeros(2, dtype=torch.float64), on_device], "b": 3})
    assert tree["b"] == 3 and tree["a"][0].device.type == "meta"
    assert mover.host_device_bytes == 15 * 20 + 20 + 16
    assert mover.to_host(torch.ones(4)).device.type == "cpu" and mover.host_device_bytes == 15 * 20 + 36


class Recording(DeviceMover):
    """Records every tensor handed to the mover, as (way, shape): on cuda each is a copy unless already there."""

    calls: list[tuple[str, tuple[int, ...]]] = []

    def _move(self, t, device, way="up"):
        Recording.calls.append((way, tuple(t.shape)))
        return super()._move(t, device)

    def to_host(self, t):
        return self._move(t, torch.device("cpu"), "down")


def test_no_model_stack_crosses_in_a_run(tmp_path, monkeypatch):
    """Two FL rounds of 3 clients on vectorized: no [K, P] stack is ever handed to the mover; the losses come
    down once a round (the strategy's small host tensors go up in the aggregation's tree of info and state)."""
    import sim.backends.vectorized as vectorized

    monkeypatch.setattr(vectorized, "DeviceMover", Recording)
    Recording.calls = []
    summary = run_experiment(_cfg("rounds=2", "backend=vectorized", "backend.device=cpu"), tmp_path / "r")
    P = summary["num_parameters"]
    assert ("up", (P,)) in Recording.calls  # the start model
    assert not [shape for _, shape in Recording.calls if len(shape) == 2 and shape[-1] == P]
    assert [c for c in Recording.calls if c[0] == "down"] == [("down", (3,))] * 2  # [K] losses for metrics.csv
    assert summary["host_device_bytes"] == 0  # on the CPU all of it is the identity


def test_vectorized_round_moves_the_schedule_once_per_chunk(exp):
    backend = VectorizedBackend(chunk_size=2, device="cpu")
    backend.mover = Recording(backend.mover.device)
    Recording.calls = []
    backend.setup(exp.setup)
    data_fields = len(Recording.calls)
    assert data_fields == 6  # x, y and the validation and test splits, once
    backend.train(torch.tensor([0, 1, 2]), exp.initial_params, 1)
    calls = Recording.calls[data_fields:]
    assert calls[0] == ("up", (exp.layout.size,))  # the start model
    index = [shape for way, shape in calls if way == "up" and len(shape) == 3]  # [A, S, B] row indices
    assert [s[0] for s in index] == [2, 1]  # one per chunk of clients
    assert [c for c in calls if c[0] == "down"] == [("down", (2,)), ("down", (1,))]
    assert len(calls) == 1 + 2 + 2
