"""Conv nets on the vectorized backend: the vmap options of ``backend.vmap`` and the agreement with sequential.

The im2col convolution is checked against ``F.conv2d`` on awkward shapes (stride, padding, dilation, no
bias) and, inside the backend, against the plain vmapped step on clients of unequal sizes (padded last
batches); bf16 autocast must change the numbers (else it did not run) by no more than bfloat16's
rounding. The agreement pinned for LeNet-5 is what ``experiments/drift_conv.py`` measures (docs/backends.md).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zoo_helpers import model_cfg, training_setup

from sim.backends.sequential import SequentialBackend
from sim.backends.vectorized import VectorizedBackend
from sim.backends.vmap_conv import Im2colConv2d, VmapOptions, im2col_model, vmap_options
from sim.data.inputs import InputSpec
from sim.errors import ConfigError
from sim.training import TrainConfig

SPEC = InputSpec((3, 12, 12), "image")


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "padding", "dilation", "bias"),
    [(3, 4, 3, 1, 1, 1, True), (2, 5, (3, 2), 2, (1, 0), 1, False), (4, 3, 3, 1, 2, 2, True), (1, 6, 5, 1, 0, 1, True)],
)
def test_im2col_convolution_equals_conv2d(c_in, c_out, kernel, stride, padding, dilation, bias):
    # Prepare
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    x = torch.randn(3, c_in, 9, 11) * 1e3  # large values: a wrong reduction would show far above tolerance
    # Execute
    ref = conv(x)
    conv.__class__ = Im2colConv2d
    out = conv(x)
    # Check
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-2), (out - ref).abs().max()


def test_im2col_model_swaps_only_plain_convolutions():
    # Prepare
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, padding="same"), nn.Conv2d(4, 2, 1)
    )
    # Execute
    swapped, count = im2col_model(net)
    # Check: the grouped and "same"-padded ones keep their forward; the original model is untouched
    assert count == 2
    assert [type(m) is Im2colConv2d for m in swapped] == [True, False, False, True]
    assert all(type(m) is nn.Conv2d for m in net)
    assert list(dict(swapped.named_parameters())) == list(dict(net.named_parameters()))


@pytest.fixture(scope="module")
def lenet_setup():
    """LeNet-5 on 12x12 colour images, three clients of 7, 12 and 3 rows (partial batches of 5)."""
    train = TrainConfig(epochs=1, batch_size=5, lr=0.05)
    return training_setup(model_cfg("lenet"), SPEC, 3, [7, 12, 3], train)


def _round(setup, backend) -> torch.Tensor:
    start = setup.layout.flatten(setup.model)
    backend.setup(setup)
    out = backend.train(torch.arange(setup.data.num_clients), start, round_=1)
    backend.close()
    return out.params


@pytest.fixture(scope="module")
def plain_params(lenet_setup):
    return _round(lenet_setup, VectorizedBackend(kernel="vmap", device="cpu"))


def test_im2col_step_trains_as_the_grouped_step(lenet_setup, plain_params, monkeypatch):
    # Prepare: count the im2col convolutions that run (LeNet-5 has two, so each step runs both)
    calls = []
    forward = Im2colConv2d.forward
    monkeypatch.setattr(Im2colConv2d, "forward", lambda self, x: calls.append(1) or forward(self, x))
    # Execute
    params = _round(lenet_setup, VectorizedBackend(kernel="vmap", device="cpu", vmap={"conv": "im2col"}))
    # Check
    assert len(calls) >= 2
    start = lenet_setup.layout.flatten(lenet_setup.model)
    assert not torch.equal(plain_params, start.expand_as(plain_params))
    assert torch.allclose(params, plain_params, rtol=0, atol=1e-5), (params - plain_params).abs().max()


def test_bf16_autocast_runs_and_stays_within_bfloat16_rounding(lenet_setup, plain_params):
    # Execute
    params = _round(lenet_setup, VectorizedBackend(kernel="vmap", device="cpu", vmap={"precision": "bf16"}))
    # Check: autocast really ran (a float32 step would agree to 1e-6), and moved no weight by more than
    # bfloat16's relative rounding (2^-8) of the update
    start = lenet_setup.layout.flatten(lenet_setup.model)
    update = (plain_params - start).abs().max()
    gap = (params - plain_params).abs().max()
    assert gap > 1e-6
    assert gap < 0.05 * update


def test_lenet_one_client_agrees_with_sequential_over_its_first_steps():
    # Prepare: one client of 15 rows, 3 local steps of 5 (docs/backends.md: 6.5e-08 relative measured)
    train = TrainConfig(epochs=1, batch_size=5, lr=0.05)
    setup = training_setup(model_cfg("lenet"), SPEC, 3, [15], train)
    # Execute
    seq = _round(setup, SequentialBackend())
    vec = _round(setup, VectorizedBackend(kernel="vmap", device="cpu"))
    # Check
    rel = ((seq - vec).abs().max() / seq.abs().max()).item()
    assert rel < 1e-6


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"conv": "winograd"}, "backend.vmap.conv"),
        ({"precision": "fp16"}, "backend.vmap.precision"),
        ({"compile": "yes"}, "backend.vmap.compile"),
        ({"chunk": 3}, "backend.vmap.chunk"),
        ("bf16", "backend.vmap"),
    ],
)
def test_bad_vmap_options_name_the_field(cfg, field):
    with pytest.raises(ConfigError) as err:
        vmap_options(cfg)
    assert err.value.field == field


def test_default_options_are_the_plain_step():
    assert vmap_options(None).plain and vmap_options({"conv": "grouped", "precision": "fp32", "compile": False}).plain
    assert not VmapOptions(precision="bf16").plain


def test_vmap_options_reach_the_backend_through_the_config():
    # Prepare: the config file's defaults, one of them overridden as on the command line
    from omegaconf import OmegaConf

    from sim.backends import build_backend

    cfg = OmegaConf.load("configs/backend/vectorized.yaml")
    default = build_backend(cfg)
    cfg.vmap.precision = "bf16"
    # Execute
    backend = build_backend(cfg)
    # Check
    assert default.vmap_options.plain
    assert backend.vmap_options == VmapOptions(precision="bf16")


def test_gpu_bench_checks_round_one_against_the_reference_and_fails_on_nan(monkeypatch):
    # Prepare: experiments/ is where the bench scripts import each other from
    monkeypatch.syspath_prepend("experiments")
    import gpu_bench

    rows = [
        {"round": 0, "train_loss": float("nan"), "test_loss": 2.3},
        {"round": 1, "train_loss": 1.5, "test_loss": 2.0},
    ]
    # Execute
    got = gpu_bench.round_one(rows)
    # Check: round 1's row, not the initial evaluation's; within, beyond and without a value
    assert got == (1.5, 2.0)
    assert gpu_bench.check(got, (1.5, 2.0 * (1 + 5e-4)), 1e-3) == (True, pytest.approx(5e-4 / (1 + 5e-4)))
    assert not gpu_bench.check(got, (1.5, 2.1), 1e-3)[0]
    assert not gpu_bench.check(gpu_bench.round_one(rows[:1]), (1.5, 2.0), 1e-3)[0]
    assert not gpu_bench.check((float("nan"), 2.0), (1.5, 2.0), 1e-3)[0]
    assert gpu_bench.per_round_s([{"wall_s": 1.0}, {"wall_s": 3.0}, {"wall_s": 4.0}]) == 1.5
