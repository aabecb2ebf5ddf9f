"""CHOCO-gossip / CHOCO-SGD (strategies/choco.py, sim/gossip/choco.py) against a transcription of the authors' code
(tests/choco_ref.py), on a ring and an irregular graph with unequal node data, several rounds, top-k, sign and QSGD."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sim.compress import CompressConfig
from sim.errors import ConfigError
from sim.experiment import build_experiment, validate_config
from sim.gossip import SyncGossip
from sim.results import MetricsLog
from tests import choco_ref

ROUNDS = 4
SMALL = (
    "mode=gossip",
    "num_clients=6",
    "model.hidden=[8]",
    f"rounds={ROUNDS}",
    "eval_every=4",
    "backend=vectorized",
    "strategy=choco",
)
P = 64 * 8 + 8 + 8 * 10 + 10  # the digits MLP with one hidden layer of 8
IRREGULAR = ("topology=erdos_renyi", "topology.mean_degree=3")  # Metropolis-Hastings rows of unequal degrees


def engine(make_cfg, *overrides: str) -> tuple[torch.Tensor, list[dict], object]:
    """The final node models and rows of a synchronous run, and its experiment (set up for training)."""
    exp = build_experiment(make_cfg(*SMALL, *overrides))
    exp.backend.setup(exp.setup)
    log = MetricsLog(Path("/dev/null"))
    final = SyncGossip(exp, exp.topology, exp.gossip).run(log, lambda row: None)
    return final, log.rows, exp


def reference(
    exp, compress: choco_ref.Compress, gamma: float, hat_init: str = "zeros", order: str = "code"
) -> torch.Tensor:
    w = exp.topology.mixing_matrix(1).to_dense()
    x0 = exp.initial_params.unsqueeze(0).repeat(exp.data.num_clients, 1)
    ids = torch.arange(exp.data.num_clients)

    def train(x: torch.Tensor, round_: int) -> torch.Tensor:
        return exp.backend.train(ids, x, round_, frozenset()).params

    return choco_ref.choco_reference(x0, w, gamma, ROUNDS, train, compress, hat_init, order)


CASES = [
    (("topology=ring", "compress=topk", "compress.fraction=0.05"), choco_ref.top_k(0.05), 0.5, "zeros"),
    ((*IRREGULAR, "compress=topk", "compress.fraction=0.1"), choco_ref.top_k(0.1), 0.8, "initial"),
    (("topology=ring", "compress=sign"), choco_ref.scaled_sign, 0.3, "zeros"),
    ((*IRREGULAR, "compress=qsgd", "compress.levels=4", "compress.rescaled=true"), "qsgd", 0.6, "zeros"),
]


@pytest.mark.parametrize(("overrides", "compress", "gamma", "hat_init"), CASES)
def test_choco_equals_the_authors_algorithm(make_cfg, overrides, compress, gamma, hat_init):
    over = (*overrides, f"strategy.gamma={gamma}", f"strategy.hat_init={hat_init}")
    final, rows, exp = engine(make_cfg, *over)
    if compress == "qsgd":
        compress = choco_ref.qsgd(4, int(exp.cfg.seed), biased=True)
    expected = reference(exp, compress, gamma, hat_init)
    assert torch.allclose(final, expected, atol=1e-5), (final - expected).abs().max()
    assert not torch.allclose(final[0], final[1], atol=1e-3)  # the nodes differ: the test sees the consensus step
    edges = int((exp.topology.mixing_matrix(1).to_dense() > 0).sum()) - exp.data.num_clients
    size = exp.data.client_sizes
    assert len(set(size.tolist())) > 1  # unequal node data
    if "compress=topk" in overrides:
        fraction = float(overrides[-1].split("=")[1])
        message_bytes = 8 * max(1, math.ceil(round(fraction * P, 6)))
    elif "compress=sign" in overrides:
        message_bytes = 4 + math.ceil(P / 8)
    else:
        message_bytes = 4 + math.ceil(P * (1 + math.ceil(math.log2(5))) / 8)
    assert [r["bytes_up"] for r in rows] == [0] + [edges * message_bytes] * ROUNDS


def test_choco_without_a_compressor_and_gamma_one_is_plain_gossip_in_the_papers_order(make_cfg):
    exact = (*IRREGULAR, "compress=none", "strategy.gamma=1.0", "strategy.order=paper")
    final, rows, exp = engine(make_cfg, *exact)
    plain, plain_rows, _ = engine(make_cfg, *IRREGULAR, "compress=none", "strategy=gossip_avg")
    assert torch.allclose(final, plain, atol=1e-5)
    assert [r["bytes_up"] for r in rows] == [r["bytes_up"] for r in plain_rows]
    # the code's order is x <- trained + (W - I) x_before, by hand: not plain gossip, and not equal to it
    code, _, _ = engine(make_cfg, *exact[:-1], "strategy.order=code", "strategy.hat_init=initial")
    ids = torch.arange(exp.data.num_clients)
    w = exp.topology.mixing_matrix(1).to_dense()
    x = exp.initial_params.unsqueeze(0).repeat(exp.data.num_clients, 1)
    for round_ in range(1, ROUNDS + 1):
        x = exp.backend.train(ids, x, round_, frozenset()).params + (w - torch.eye(len(w))) @ x
    assert torch.allclose(code, x, atol=1e-5)
    assert not torch.allclose(code, plain, atol=1e-3)


@pytest.mark.parametrize(
    "overrides", [("topology=ring", "compress=topk", "compress.fraction=0.05"), IRREGULAR + ("compress=sign",)]
)
def test_the_papers_order_equals_algorithm_2(make_cfg, overrides):
    final, _, exp = engine(make_cfg, *overrides, "strategy.gamma=0.4", "strategy.order=paper")
    q = choco_ref.top_k(0.05) if "compress=topk" in overrides else choco_ref.scaled_sign
    expected = reference(exp, q, 0.4, order="paper")
    assert torch.allclose(final, expected, atol=1e-5), (final - expected).abs().max()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("strategy.gamma=0",), "strategy.gamma"),
        (("strategy.gamma=1.5",), "strategy.gamma"),
        (("strategy.gamma=-0.1",), "strategy.gamma"),
        (("strategy.hat_init=ones",), "strategy.hat_init"),
        (("strategy.order=later",), "strategy.order"),
        (("gossip.schedule=async",), "gossip.schedule"),
        (("gossip.drop_prob=0.1",), "gossip.drop_prob"),
        (("topology=random_regular", "topology.time_varying=true"), "topology.time_varying"),
        (("topology=exponential", "topology.one_peer=true"), "topology.one_peer"),
        (("attack=sign_flip",), "attack.name"),
        (("preagg=clipping",), "preagg.name"),
        (("strategy.hat_init=initial", "gossip.shared_init=false"), "strategy.hat_init"),
        (("mode=federated", "topology=star"), "strategy"),
        (("compress=topk", "compress.error_feedback=true"), "compress.error_feedback"),
        (("compress=sign", "compress.error_feedback=true"), "compress.error_feedback"),
    ],
)
def test_refused_before_any_work(make_cfg, overrides, field):
    with pytest.raises(ConfigError) as err:
        validate_config(make_cfg(*SMALL, *overrides))
    assert err.value.field == field


@pytest.mark.parametrize("feedback", [(), ("compress.error_feedback=false",), ("compress.error_feedback=null",)])
def test_the_configs_default_error_feedback_runs_with_choco_and_keeps_no_residual(make_cfg, feedback):
    """compress=topk's default error_feedback is null (auto): CHOCO runs with it and with false, no residual kept."""
    cfg = make_cfg(*SMALL, "compress=topk", "compress.fraction=0.05", *feedback)
    assert cfg.compress.error_feedback is (False if feedback == ("compress.error_feedback=false",) else None)
    validate_config(cfg)
    exp = build_experiment(cfg)
    loop = SyncGossip(exp, exp.topology, exp.gossip)
    assert loop.choco is not None and loop.codec is None  # CHOCO's copies, no naive codec with its residuals
    loop.choco.start(exp.initial_params.unsqueeze(0).repeat(exp.data.num_clients, 1))
    assert set(loop.carried()) == {"states", "extras", "choco_hat"}


def test_the_configs_default_error_feedback_is_on_outside_choco(make_cfg):
    fl, gossip = ("mode=federated", "topology=star", "strategy=fedavg"), ("mode=gossip", "strategy=gossip_avg")
    for name, mode in (
        ("topk", fl),
        ("topk", gossip),
        ("randomk", fl),
        ("qsgd", gossip),
        ("sign", fl),
        ("quantize", gossip),
    ):
        cfg = make_cfg(*mode, f"compress={name}")
        assert cfg.compress.error_feedback is None  # the yaml's auto
        validate_config(cfg)
        assert CompressConfig.from_config(cfg.compress).error_feedback is True


def test_the_mixing_terms_of_a_static_graph_are_built_once_and_give_the_consensus_by_hand(monkeypatch):
    import sim.gossip.choco as engine_choco
    from strategies.choco import Choco, mixing_terms

    calls = []

    def counted(w, dtype):
        calls.append(w)
        return mixing_terms(w, dtype)

    monkeypatch.setattr(engine_choco, "mixing_terms", counted)
    # a path of 3 nodes with a self-weight; row 0 sums to 0.75, so the row sums matter
    w = torch.tensor([[0.5, 0.25, 0.0], [0.25, 0.5, 0.25], [0.0, 0.25, 0.75]]).to_sparse().coalesce()
    gossip = engine_choco.ChocoGossip(Choco(gamma=0.5, hat_init="initial"), None, seed=0, num_nodes=3)
    x0 = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 1e6]])
    gossip.start(x0)
    trained = x0 + 1.0
    first = gossip.mix(trained, w, 1)
    # x + gamma (W x_hat - rowsum(W) x_hat), x_hat = x0: node 0, column 0: 2 + 0.5 (0.5 + 0.25 * 3 - 0.75) = 2.25
    dense = w.to_dense()
    expected = trained + 0.5 * (dense @ x0 - dense.sum(1, keepdim=True) * x0)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-6)
    assert first[0, 0].item() == pytest.approx(2.25)
    second = gossip.mix(first + 1.0, w, 2)  # the copies are the first round's models now (no compressor)
    torch.testing.assert_close(second, first + 1.0 + 0.5 * (dense @ first - dense.sum(1, keepdim=True) * first))
    assert len(calls) == 1  # the same matrix object: its cast and row sums are not rebuilt
    other = w * 1.0  # a new matrix (another round's graph) is read afresh
    gossip.mix(second, other, 3)
    assert len(calls) == 2 and calls[1] is other
