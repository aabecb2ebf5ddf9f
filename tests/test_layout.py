"""The flat parameter representation: round trips and slices."""

import torch

from sim.checkpoint import load_checkpoint, save_checkpoint
from sim.layout import Layout
from sim.models import build_model


def _mlp():
    return build_model({"name": "mlp", "hidden": [5, 4]}, (3,), 2, seed=0)


def test_module_flat_module_round_trip():
    model = _mlp()
    layout = Layout.from_module(model)
    flat = layout.flatten(model)
    assert flat.shape == (3 * 5 + 5 + 5 * 4 + 4 + 4 * 2 + 2,)
    other = build_model({"name": "mlp", "hidden": [5, 4]}, (3,), 2, seed=1)
    assert not torch.equal(layout.flatten(other), flat)
    layout.load_into(other, flat)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    assert torch.equal(layout.flatten(other), flat)


def test_kinds_offsets_and_stacked_views():
    model = _mlp()
    layout = Layout.from_module(model)
    assert [s.kind for s in layout] == ["weight", "bias"] * 3
    assert layout.specs[1].offset == 15 and layout.specs[2].offset == 20
    stacked = torch.stack([layout.flatten(model), 2 * layout.flatten(model)])
    w0 = layout.view(stacked, "net.0.weight")
    assert w0.shape == (2, 5, 3)
    assert torch.equal(w0[1], 2 * model.net[0].weight.detach())
    sd = layout.to_state_dict(stacked)
    assert sd["net.4.bias"].shape == (2, 2)


def test_layout_json_round_trip():
    layout = Layout.from_module(_mlp())
    assert Layout.from_json(layout.to_json()) == layout


def test_checkpoint_loads_back_bit_for_bit(tmp_path):
    model = _mlp()
    layout = Layout.from_module(model)
    flat = layout.flatten(model) * 1.0000001  # values that are not round numbers
    save_checkpoint(tmp_path / "m.safetensors", layout, flat, {"round": "3"})
    layout2, flat2, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert layout2 == layout and torch.equal(flat2, flat) and meta["round"] == "3"
