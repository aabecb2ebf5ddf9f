"""Gossip messages under rules with local layers (FedPer, FedBN) carry the shared entries only, as FL's uploads do:
``bytes_up`` / ``bytes_down`` count them, and compressed messages compress them alone (hand-computed on a tiny ring)."""

from __future__ import annotations

from pathlib import Path

import torch

from sim.compress import CompressConfig
from sim.experiment import build_experiment
from sim.gossip import SyncGossip
from sim.gossip.compressed import ModelCodec, message_bytes
from sim.results import MetricsLog

ROUNDS = 2
# a ring of 4 nodes: each sends its model to its 2 neighbours, 8 messages a round (no loss)
RING = ("mode=gossip", "num_clients=4", "topology=ring", "model.hidden=[8]", f"rounds={ROUNDS}", f"eval_every={ROUNDS}")
P = 64 * 8 + 8 + 8 * 10 + 10  # the digits MLP with one hidden layer of 8: 610 entries
SHARED = 64 * 8 + 8  # FedPer's default keeps the last layer (8 * 10 + 10 entries) on each node: 520 are sent


def rows_of(make_cfg, *overrides: str) -> tuple[list[dict], SyncGossip]:
    exp = build_experiment(make_cfg(*RING, "backend=sequential", *overrides))
    exp.backend.setup(exp.setup)
    log = MetricsLog(Path("/dev/null"))
    engine = SyncGossip(exp, exp.topology, exp.gossip)
    engine.run(log, lambda row: None)
    return log.rows, engine


def test_fedper_gossip_counts_the_shared_entries_of_each_message(make_cfg):
    rows, engine = rows_of(make_cfg, "strategy=fedper")
    exp = engine.exp
    assert int(exp.strategy.shared_mask(exp.layout).sum()) == SHARED and exp.layout.size == P
    assert [r["messages_sent"] for r in rows] == [0, 8, 8]
    assert [r["bytes_up"] for r in rows] == [0, 8 * SHARED * 4, 8 * SHARED * 4]  # 16640 a round, not 8 * 610 * 4
    assert [r["bytes_down"] for r in rows] == [r["bytes_up"] for r in rows]
    plain, _ = rows_of(make_cfg, "strategy=gossip_avg")  # a rule without local layers sends whole models
    assert [r["bytes_up"] for r in plain] == [0, 8 * P * 4, 8 * P * 4]


def test_compressed_fedper_gossip_encodes_the_shared_entries_only(make_cfg):
    # top-k with fraction 0.1 of the 520 shared entries: k = 52, 8 bytes each (index and value)
    over = ("strategy=fedper", "compress=topk", "compress.fraction=0.1", "compress.error_feedback=true")
    rows, engine = rows_of(make_cfg, *over)
    assert message_bytes(engine.exp) == 8 * 52
    assert [r["bytes_up"] for r in rows] == [0, 8 * 8 * 52, 8 * 8 * 52]
    # what was compressed: the residuals x - C(x) of the shared entries, each row 52 entries short of them
    assert engine.codec is not None and engine.codec.residuals is not None
    assert engine.codec.residuals.shape == (4, SHARED)
    assert (engine.codec.residuals == 0).sum(1).tolist() == [52] * 4  # the sent entries left no residual
    # sign: one bit per shared entry plus a float scale
    signed = build_experiment(make_cfg(*RING, "strategy=fedper", "compress=sign"))
    assert message_bytes(signed) == 4 + SHARED // 8


def test_the_codec_compresses_and_keeps_residuals_over_the_shared_entries_only():
    # Prepare: 2 nodes, 5 entries, entries 2 and 4 local; top-1 of the 3 shared entries (k = ceil(0.3 * 3) = 1)
    conf = CompressConfig.from_config({"name": "topk", "fraction": 0.3, "error_feedback": True})
    shared = torch.tensor([True, True, False, True, False])
    codec = ModelCodec(conf, seed=0, num_nodes=2, num_values=5, shared=shared)
    models = torch.tensor([[1.0, -5.0, 100.0, 2.0, 7.0], [3.0, 1.0, -9.0, -4.0, 50.0]])
    # Execute
    decoded = codec.encode(models, torch.tensor([0, 1]), "gossip", 1)
    # Assert: the largest shared magnitude per row is sent (not the local 100 or 50); local entries are not touched
    assert decoded.tolist() == [[0.0, -5.0, 100.0, 0.0, 7.0], [0.0, 0.0, -9.0, -4.0, 50.0]]
    assert codec.residuals is not None and codec.residuals.tolist() == [[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]]
    # Execute again: the residual joins the next message (e = [1, 0, 2] + x_shared [0, 0, 0] -> 2 is sent)
    again = codec.encode(torch.zeros(2, 5), torch.tensor([0, 1]), "gossip", 2)
    assert again.tolist() == [[0.0, 0.0, 0.0, 2.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0]]
    assert codec.residuals.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
