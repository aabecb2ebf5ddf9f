"""``system.model_flops: auto``: training FLOPs per sample measured from the run's model (sim/system/flops.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sim.errors import ConfigError
from sim.run import run_experiment
from sim.seeding import numpy_rng
from sim.system import build_system, validate_system_config
from sim.system.flops import training_flops_per_sample

LOGNORMAL = {
    "name": "lognormal",
    "bandwidth_up": {"median": 1e6, "sigma": 0.0},
    "bandwidth_down": {"median": 2e6, "sigma": 0.0},
    "latency_s": {"median": 0.01, "sigma": 0.0},
    "flops_per_s": {"median": 1e6, "sigma": 0.7},
    "model_flops": "auto",
    "links": {},
}


def mlp_flops_by_hand(widths: list[int]) -> int:
    """FlopCounterMode's count per sample: each Linear's addmm forward (2*in*out) and its weight-gradient mm
    (2*in*out); the input-gradient mm (2*in*out) for every Linear but the first, whose input needs no gradient.
    Bias adds, bias gradients (sums), ReLU and the loss are not counted."""
    pairs = list(zip(widths[:-1], widths[1:], strict=True))
    return sum(4 * i * o for i, o in pairs) + sum(2 * i * o for i, o in pairs[1:])


@pytest.mark.parametrize("widths", [[5, 7, 3], [13, 1, 9, 4]])
def test_mlp_count_is_the_hand_computed_matmul_flops(widths):
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i, o in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(i, o), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    x, y = torch.randn(6, widths[0]), torch.arange(6) % widths[-1]
    assert training_flops_per_sample(model, x, y) == mlp_flops_by_hand(widths)  # [5,7,3]: 4*35 + 6*21 = 266
    assert mlp_flops_by_hand([5, 7, 3]) == 266


def test_conv_net_count_by_hand_and_the_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 2, 6, 6), torch.tensor([0, 1, 2, 4])
    # conv (first layer, no input gradient): forward 2 * (3*4*4 outputs) * (2*3*3 weights each) and the same for
    # its weight gradient; the Linear 48 -> 5: forward, weight gradient and input gradient 2*48*5 each.
    conv = 2 * (3 * 4 * 4) * (2 * 3 * 3)
    assert training_flops_per_sample(model, x, y) == 2 * conv + 3 * 2 * 48 * 5
    assert not model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_measured_flops_over_the_drawn_speed_give_compute_s():
    s = build_system({"seed": 4, "system": LOGNORMAL}, 5, model_flops=266.0)
    speed = 1e6 * np.exp(0.7 * numpy_rng(4, "system", "flops_per_s").standard_normal(5))
    np.testing.assert_allclose(s.compute_s, 266.0 / speed, rtol=1e-15)
    assert s.compute_time(2, 30) == pytest.approx(30 * 266.0 / speed[2], rel=1e-12)
    with pytest.raises(ValueError, match="model_flops: auto"):
        build_system({"seed": 4, "system": LOGNORMAL}, 5)  # auto without a measurement is a programming error


@pytest.mark.parametrize(
    ("field", "over"),
    [
        ("system.flops_per_s.median", {"flops_per_s": {"median": 0.0, "sigma": 0.1}}),
        ("system.flops_per_s.median", {"flops_per_s": {"median": -1.0, "sigma": 0.1}}),
        ("system.flops_per_s.median", {"flops_per_s": {"median": math.inf, "sigma": 0.1}}),
        ("system.flops_per_s", {"flops_per_s": {"median": 1e300, "sigma": 50.0}}),  # a draw overflows
        ("system.model_flops", {"model_flops": "automatic"}),
        ("system.model_flops", {"model_flops": -5}),
    ],
)
def test_bad_speed_or_flops_with_auto_is_refused_by_name(field, over):
    with pytest.raises(ConfigError) as err:
        validate_system_config({**LOGNORMAL, **over}, 20, 0)
    assert err.value.field == field
    if field == "system.model_flops":
        assert "auto" in str(err.value)


def test_a_run_measures_once_records_it_and_times_rounds_with_it(make_cfg, tmp_path):
    overrides = (
        "num_clients=4",
        "participation.clients_per_round=4",
        "model.hidden=[8]",
        "rounds=1",
        "backend=vectorized",
        "system=constant",
        "system.flops_per_s=1e6",
        "system.model_flops=auto",
        "system.latency_s=0.0",
        "system.bandwidth_up=1e12",
        "system.bandwidth_down=1e12",
    )
    cfg = make_cfg(*overrides)
    summary = run_experiment(cfg, tmp_path)
    recorded = json.loads((tmp_path / "summary.json").read_text())
    flops = mlp_flops_by_hand([64, 8, 10])  # digits: 64 features, 10 classes
    assert summary["model_flops"] == recorded["model_flops"] == flops
    assert recorded["config"]["system"]["model_flops"] == "auto"  # the config keeps what the user asked for
    sizes = torch.tensor(recorded["data"]["client_train_sizes"], dtype=torch.float64)
    m = pd.read_csv(tmp_path / "metrics.csv")
    # every client selected, bandwidths 1e12 (transfers ~1e-8 s): the round lasts the biggest client's compute,
    # steps x batch samples (the last short batch counts as a full one) at flops / 1e6 s each
    batch = int(cfg.train.batch_size)
    steps = torch.ceil(sizes / batch) * int(cfg.train.epochs)
    assert m["time_s"].tolist() == [0.0, pytest.approx(float(steps.max()) * batch * flops / 1e6, rel=1e-6)]


@pytest.mark.parametrize("value", ["auto", "abc", 1000.0])
def test_model_flops_without_a_flop_speed_is_refused_not_ignored(value):
    """Without system.flops_per_s compute time comes from compute_s: a model_flops there would silently do nothing."""
    cfg = {
        **{key: val for key, val in LOGNORMAL.items() if key != "flops_per_s"},
        "compute_s": {"median": 0.002, "sigma": 1.0},
    }
    with pytest.raises(ConfigError) as err:
        validate_system_config({**cfg, "model_flops": value}, 20, 0)
    assert err.value.field == "system.model_flops" and "flops_per_s" in str(err.value)
    validate_system_config({**cfg, "model_flops": None}, 20, 0)  # null stays the default
