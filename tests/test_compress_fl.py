"""Compressed FL uploads (sim/compress/fl.py in sim/federated.py): a transcription of the rounds, bytes, link times,
resume, refusals."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sim.errors import ConfigError
from sim.experiment import build_experiment, validate_config
from sim.run import run_experiment
from tests.forked_cli import run_module

SMALL = (
    "num_clients=6",
    "participation.clients_per_round=3",
    "model.hidden=[8]",
    "rounds=3",
    "eval_every=3",
    "backend=vectorized",
    "save_model=true",
)
P = 64 * 8 + 8 + 8 * 10 + 10  # the digits MLP with one hidden layer of 8


def run(make_cfg, out, *overrides):
    run_experiment(make_cfg(*SMALL, *overrides), out)
    return pd.read_csv(out / "metrics.csv"), load_file(str(out / "model.safetensors"))


def flat(model: dict) -> torch.Tensor:
    return torch.cat([model[k].reshape(-1) for k in ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias")])


def top_k_by_sorting(row: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k of one vector, written apart from sim/compress: a stable sort by decreasing magnitude."""
    order = sorted(range(len(row)), key=lambda i: -abs(float(row[i])))
    out = torch.zeros_like(row)
    out[order[:k]] = row[order[:k]]
    return out


def transcription(make_cfg, fraction: float, feedback: bool, downlink: bool, *overrides) -> torch.Tensor:
    """FedAvg with compressed uploads, one client at a time: x_k trained from w, w + C(x_k - w + e_k), weighted mean."""
    exp = build_experiment(make_cfg(*SMALL, *overrides))
    exp.backend.setup(exp.setup)
    w = exp.initial_params.clone()
    k = math.ceil(fraction * len(w))
    e = torch.zeros(exp.data.num_clients, len(w))
    e_server = torch.zeros(len(w))
    for round_ in range(1, 4):
        ids = exp.participation.sample(round_)
        batch = exp.backend.train(ids, w, round_, frozenset())
        decoded = []
        for client, x in zip(batch.client_ids.tolist(), batch.params, strict=True):
            u = x - w + (e[client] if feedback else 0)
            m = top_k_by_sorting(u, k)
            if feedback:
                e[client] = u - m
            decoded.append(w + m)
        weights = batch.num_samples.to(torch.float32)
        new = (weights / weights.sum()) @ torch.stack(decoded)
        if downlink:
            u = new - w + (e_server if feedback else 0)
            m = top_k_by_sorting(u, k)
            if feedback:
                e_server = u - m
            new = w + m
        w = new
    return w


@pytest.mark.parametrize(("feedback", "downlink"), [(True, False), (False, False), (True, True)])
def test_fl_rounds_equal_a_transcription(make_cfg, tmp_path, feedback, downlink):
    over = ("compress=topk", "compress.fraction=0.1", f"compress.error_feedback={str(feedback).lower()}")
    over = (*over, f"compress.downlink={str(downlink).lower()}")
    metrics, model = run(make_cfg, tmp_path, *over)
    expected = transcription(make_cfg, 0.1, feedback, downlink, *over)
    assert torch.allclose(flat(model), expected, atol=1e-6)
    k = math.ceil(0.1 * P)
    assert metrics["bytes_up"].tolist() == [0] + [3 * 8 * k] * 3
    assert metrics["bytes_down"].tolist() == [0] + [3 * (8 * k if downlink else 4 * P)] * 3


def test_identity_compression_equals_no_compression_and_counts_its_own_bytes(make_cfg, tmp_path):
    plain, plain_model = run(make_cfg, tmp_path / "none", "compress=none")
    full, full_model = run(make_cfg, tmp_path / "full", "compress=topk", "compress.fraction=1.0")
    assert torch.allclose(flat(plain_model), flat(full_model), atol=1e-6)
    assert plain["bytes_up"].tolist() == [0] + [3 * 4 * P] * 3
    assert full["bytes_up"].tolist() == [0] + [3 * 8 * P] * 3  # indices and values: twice the dense model


def test_link_times_use_the_encoded_bytes(make_cfg, tmp_path):
    plain, _ = run(make_cfg, tmp_path / "none", "system=constant")
    sparse, _ = run(make_cfg, tmp_path / "topk", "system=constant", "compress=topk", "compress.downlink=true")
    k = math.ceil(0.01 * P)
    # every client alike: the round lasts for the client with most samples, whose transfers shrink by these bytes
    saved = (4 * P - 8 * k) / 1.25e6 + (4 * P - 8 * k) / 2.5e6
    assert plain["time_s"][1] - sparse["time_s"][1] == pytest.approx(saved, rel=1e-9)
    up_only, _ = run(make_cfg, tmp_path / "up", "system=constant", "compress=topk", "compress.downlink=false")
    assert plain["time_s"][1] - up_only["time_s"][1] == pytest.approx((4 * P - 8 * k) / 1.25e6, rel=1e-9)


def test_a_resumed_compressed_run_equals_the_uninterrupted_run(tmp_path):
    small = tuple(o for o in SMALL if not o.startswith(("rounds=", "eval_every=")))
    args = (*small, "eval_every=1", "compress=qsgd", "compress.levels=4", "checkpoint.every=1", "progress=false")
    assert run_module("sim", [*args, "rounds=4", "hydra.run.dir=long"], tmp_path, timeout=300).returncode == 0
    assert run_module("sim", [*args, "rounds=2", "hydra.run.dir=short"], tmp_path, timeout=300).returncode == 0
    resumed = run_module("sim", ["resume=short", "rounds=4"], tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv").drop(columns="wall_s") for d in ("long", "short"))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert (tmp_path / "long/model.safetensors").read_bytes() == (tmp_path / "short/model.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("strategy=fisher_merge", "compress=topk"), "compress.name"),
        (("mode=gossip", "topology=ring", "strategy=fisher_merge", "compress=topk"), "compress.name"),
        (("federated.schedule=async", "compress=sign"), "compress.name"),
        (("compress=topk", "compress.fraction=0"), "compress.fraction"),
        (("compress=qsgd", "compress.levels=0"), "compress.levels"),
        (("compress=quantize", "compress.bits=16"), "compress.bits"),
    ],
)
def test_refused_before_any_work(make_cfg, overrides, field):
    with pytest.raises(ConfigError) as err:
        validate_config(make_cfg(*overrides))
    assert err.value.field == field


def test_the_command_line_refusal_is_one_paragraph_with_exit_code_2(tmp_path):
    done = run_module("sim", ["compress=topk", "compress.fraction=1.5"], tmp_path, timeout=120)
    assert done.returncode == 2
    assert "compress.fraction=1.5" in done.stderr and "(0, 1]" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.rglob("metrics.csv"))
