"""Run state round-trips bit for bit through one file, for every strategy's state and the patterns'."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sim.errors import ConfigError
from sim.patterns import PATTERNS
from sim.run_state import load_state, pack, save_state, unpack
from strategies import build_strategy

STRATEGY_FILES = sorted(Path(__file__).resolve().parents[1].joinpath("configs", "strategy").glob("*.yaml"))


def _same(a, b) -> bool:
    """Equal values of equal types all the way down (NaN equals NaN, dtypes must agree)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


MIXED = {
    "step": 3,
    "lr": 0.1 + 0.2,  # not exactly 0.3: the digits must survive
    "flags": (True, None, "x"),
    "bad": [float("nan"), float("inf"), -float("inf"), -0.0],
    "m": torch.tensor([1.5, -2.0], dtype=torch.float64),
    "ids": torch.tensor([3, 1], dtype=torch.long),
    "nodes": [{"v": torch.zeros(2, 3)}, {}],
    "active": np.array([True, False]),
    "countdown": np.array([4, 0], dtype=np.int64),
    "np_scalar": np.float32(0.25),
}


def test_pack_and_unpack_restore_types_and_bits():
    # Prepare / Execute
    tensors, skeleton = pack(MIXED)
    back = unpack(tensors, skeleton)
    # Assert: everything but the NumPy scalar comes back as it went in (that one as a Python float)
    expected = {**MIXED, "np_scalar": 0.25}
    assert _same(back, expected)
    assert len(tensors) == 5  # two tensors, the nested one, two arrays


def test_the_file_round_trips_and_damage_is_named(tmp_path):
    path = tmp_path / "state.safetensors"
    save_state(path, MIXED)
    assert _same(load_state(path), {**MIXED, "np_scalar": 0.25})
    # Truncated, or not a state file: a ConfigError naming the field and the file
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    for bad in ("cut.safetensors", "missing.safetensors"):
        with pytest.raises(ConfigError) as err:
            load_state(tmp_path / bad, field="resume")
        assert err.value.field == "resume" and bad in str(err.value)


def test_unstorable_values_are_refused_when_packing():
    with pytest.raises(TypeError):
        pack({"f": lambda: 0})
    with pytest.raises(TypeError):
        pack({1: "int key"})


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=[p.stem for p in STRATEGY_FILES])
def test_every_strategy_state_after_a_round_round_trips(path, tmp_path):
    # Prepare: the strategy's state after one aggregation of three models
    from omegaconf import OmegaConf

    from sim.layout import Layout
    from sim.training import TrainConfig
    from strategies import AggregationInfo

    name = path.stem
    root = OmegaConf.create({"seed": 0, "strategy": OmegaConf.load(path)})  # ${seed} resolves as in a run
    strategy = build_strategy(OmegaConf.to_container(root, resolve=True)["strategy"])
    if strategy.offline_only or strategy.gossip_only or strategy.needs_validation or strategy.requires:
        pytest.skip(f"{name} needs a run (validation split, extras) to aggregate")
    # two Linear layers and a norm layer: FedPer/FedRep/FedBN need a body to share and a layer to keep
    layout = Layout.from_module(
        torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2), torch.nn.Linear(2, 2))
    )
    reference = torch.arange(layout.size, dtype=torch.float32) / 10
    models = reference + torch.randn(3, layout.size, generator=torch.Generator().manual_seed(0))
    info = AggregationInfo(
        client_ids=torch.tensor([0, 2, 3]),
        num_samples=torch.tensor([5, 7, 9]),
        round=1,
        num_clients=4,
        layout=layout,
        reference=reference,
        participation_prob=torch.full((3,), 0.5),
        num_steps=torch.tensor([4, 2, 3]),  # client-side rules (SCAFFOLD, FedNova) read the steps and the lr
        train=TrainConfig.from_config({"lr": 0.1}),
    )
    _, state = strategy.aggregate(models, info, strategy.init_state(reference, 4))
    # Execute
    save_state(tmp_path / "s.safetensors", state)
    # Assert
    assert _same(load_state(tmp_path / "s.safetensors"), state)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_participation_pattern_state_round_trips(name, tmp_path):
    p = np.array([0.2, 0.5, 0.9])
    pattern = PATTERNS[name](p, 3)
    state = {k: v for k, v in vars(pattern).items() if isinstance(v, (np.ndarray, int, float))}
    save_state(tmp_path / "p.safetensors", state)
    assert _same(load_state(tmp_path / "p.safetensors"), state)


def test_canonical_safetensors_gives_equal_bytes_for_equal_contents():
    from safetensors.torch import load, save

    from sim.results import canonical_safetensors, safetensors_metadata

    # Prepare: the same tensors and metadata, handed over in two different orders
    a = save({"w": torch.ones(3), "b": torch.arange(2)}, metadata={"z": "1", "a": "2"})
    b = save({"b": torch.arange(2), "w": torch.ones(3)}, metadata={"a": "2", "z": "1"})
    # Execute
    ca, cb = canonical_safetensors(a), canonical_safetensors(b)
    # Assert: one byte string, a header padded to 8 bytes, the same tensors and metadata back
    assert ca == cb
    assert int.from_bytes(ca[:8], "little") % 8 == 0
    assert torch.equal(load(ca)["w"], torch.ones(3)) and torch.equal(load(ca)["b"], torch.arange(2))
    assert safetensors_metadata(ca) == {"a": "2", "z": "1"}
