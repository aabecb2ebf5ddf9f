"""FedPer, FedRep and FedBN (strategies/personal_layers.py): patterns, backends, gossip merges, refusals, resume.

The numbers against hand transcriptions (FedPer's bookkeeping, the FedRep authors' local update) are in
tests/test_personal_layers_ref.py.
"""

import dataclasses

import pytest
import torch
from hydra import compose, initialize_config_module

from sim.backends import SequentialBackend, VectorizedBackend
from sim.errors import ConfigError
from sim.experiment import build_experiment, validate_config
from sim.layout import Layout
from sim.models.resnet import CifarResNet
from sim.models.tabular import MLP, LogisticRegression
from sim.models.vision import SmallCNN
from sim.node_models import merge_info
from sim.training import ClientCorrection
from strategies import AggregationInfo
from strategies.client_state import client_held_state
from strategies.layer_patterns import local_mask, matched_names
from strategies.personal_layers import PERSONAL, PersonalLayers

PARTICIPANTS = ([0, 3, 5], [1, 3, 4], [5, 2, 0])


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", *overrides])


SMALL = ("num_clients=6", "participation.clients_per_round=3", "partition=dirichlet", "partition.alpha=0.3")


# ---- patterns ----------------------------------------------------------------------------------------
def test_last_and_norm_name_the_zoo_models_layers():
    mlp = Layout.from_module(MLP(64, 10, [8, 6]))
    cnn = Layout.from_module(SmallCNN((1, 8, 8), 10, [4, 4], 8))
    bn = Layout.from_module(CifarResNet((1, 8, 8), 10, 8, "batch", 2))
    gn = Layout.from_module(CifarResNet((1, 8, 8), 10, 8, "group", 2))
    assert matched_names(mlp, "<last>") == ["net.4.weight", "net.4.bias"]
    assert matched_names(cnn, "<last>") == ["head.3.weight", "head.3.bias"]
    assert matched_names(bn, "<last>") == ["fc.weight", "fc.bias"]
    norms = matched_names(bn, "<norm>")
    assert {"norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"} <= set(norms)
    assert all(".norm" in n or n.startswith("norm.") for n in norms) and len(norms) == 4 * 7  # stem + 3 blocks x 2
    assert (
        matched_names(gn, "<norm>") == [n for n in gn.names if "norm" in n] and len(matched_names(gn, "<norm>")) == 14
    )
    assert matched_names(mlp, "<norm>") == []
    assert matched_names(cnn, "head.*") == ["head.1.weight", "head.1.bias", "head.3.weight", "head.3.bias"]
    assert matched_names(mlp, r"re:net\.[02]\.bias") == ["net.0.bias", "net.2.bias"]
    mask = local_mask(mlp, ["<last>", "net.0.bias"])
    expected = torch.zeros(mlp.size, dtype=torch.bool)
    for name in ("net.4.weight", "net.4.bias", "net.0.bias"):
        expected[mlp.spec(name).slice] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(
    ("patterns", "value"),
    [(["head.*"], "head.*"), (["<last>", "re:nope.*"], "re:nope.*"), (["<norm>"], "<norm>"), (["*"], ["*"])],
)
def test_a_pattern_naming_nothing_or_everything_is_refused(patterns, value):
    layout = Layout.from_module(MLP(64, 10, [8]))
    with pytest.raises(ConfigError) as err:
        local_mask(layout, patterns)
    assert err.value.field == "strategy.local" and err.value.value == value


@pytest.mark.parametrize(("local", "detail"), [([], "non-empty"), (["re:("], "does not compile"), (3, "")])
def test_malformed_patterns_are_refused_at_construction(local, detail):
    with pytest.raises(ConfigError) as err:
        PersonalLayers(local=local)
    assert err.value.field == "strategy.local" and detail in str(err.value)


def test_logreg_has_no_body_to_share():
    layout = Layout.from_module(LogisticRegression(64, 10))
    with pytest.raises(ConfigError, match="name every tensor"):
        PersonalLayers().shared_mask(layout)


# ---- refusals before any work ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("strategy=fedrep", "mode=gossip"), "strategy"),
        (("strategy=fedper", "federated.schedule=async"), "federated.schedule"),
        (("strategy=fedper", "mode=gossip", "gossip.schedule=async"), "gossip.schedule"),
        (("strategy=fedper", "preagg=nnm"), "preagg.name"),
        (("strategy=fedbn", "dp=central_fixed"), "dp.name"),
        (("strategy=fedrep", "strategy.head_epochs=0"), "strategy.head_epochs"),
        (("strategy=fedper", "strategy.variant=fedx"), "strategy.variant"),
    ],
)
def test_runs_it_cannot_carry_are_refused(overrides, field):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg(*overrides))
    assert err.value.field == field


def test_fedbn_on_a_model_without_norm_layers_is_refused_before_training():
    with pytest.raises(ConfigError) as err:
        build_experiment(compose_cfg(*SMALL, "strategy=fedbn", "model.hidden=[8]"))
    assert err.value.field == "strategy.local" and err.value.value == "<norm>"


def test_flower_adapters_refuse_rules_with_client_state():
    from strategies.flower import ReplyAggregator

    layout = Layout.from_module(MLP(4, 2, [3]))
    with pytest.raises(ConfigError, match="keeps state on each client") as err:
        ReplyAggregator(PersonalLayers(), layout)
    assert err.value.field == "strategy"
    assert client_held_state(PersonalLayers(variant="fedbn"), "x") is not None
    from strategies import FedAvg

    assert client_held_state(FedAvg(), "x") is None


# ---- the FL rounds: every backend alike -----------------------------------------------------------
def fl_rounds(exp, backend):
    """The FL loop's steps for fixed participants: (global models, final state, [K] losses of each round)."""
    backend.setup(exp.setup)
    strategy = exp.strategy
    shared = strategy.shared_mask(exp.layout)
    params = exp.initial_params.clone()
    state = strategy.init_state(params, exp.data.num_clients)
    history, losses = [], []
    for r, ids in enumerate(PARTICIPANTS, start=1):
        ids_t = torch.tensor(ids)
        batch, state = strategy.train_clients(backend, ids_t, params, r, state)
        info = AggregationInfo(ids_t, batch.num_samples, r, exp.data.num_clients, exp.layout, params)
        new, state = strategy.aggregate(batch.params, info, state)
        assert torch.equal(new[~shared], params[~shared])  # the global model's local entries are never averaged
        params = new
        history.append(params.clone())
        losses.append(batch.train_loss)
    backend.close()
    return history, state, losses


VARIANTS = {
    "fedper": ("strategy=fedper", "model.hidden=[8]", "train.momentum=0.5"),
    "fedrep": ("strategy=fedrep", "model.hidden=[8]", "strategy.head_epochs=2", "train.local_steps=3"),
    "fedbn": (
        "strategy=fedbn",
        "model=resnet",
        "model.norm=group",
        "model.groups=2",
        "train.local_steps=2",
        "train.batch_size=4",
    ),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_vectorized_equals_sequential_for_every_variant(variant):
    # Prepare
    exp = build_experiment(compose_cfg(*SMALL, *VARIANTS[variant]))
    # Execute
    seq, seq_state, seq_loss = fl_rounds(exp, SequentialBackend())
    vec, vec_state, vec_loss = fl_rounds(exp, VectorizedBackend(chunk_size=2))
    # Check
    for a, b in zip(seq, vec, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(seq_state[PERSONAL], vec_state[PERSONAL], atol=1e-5)
    for a, b in zip(seq_loss, vec_loss, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # clients 0, 5 and 3 trained twice, 1, 2 and 4 once: every row moved away from the initial local entries
    initial = exp.initial_params[~exp.strategy.shared_mask(exp.layout)]
    assert all(not torch.allclose(row, initial) for row in seq_state[PERSONAL])


def test_fedrep_trains_both_parts_and_counts_both_phases():
    # Prepare
    exp = build_experiment(compose_cfg(*SMALL, *VARIANTS["fedrep"]))
    backend = SequentialBackend()
    backend.setup(exp.setup)
    strategy: PersonalLayers = exp.strategy
    shared = strategy.shared_mask(exp.layout)
    params = exp.initial_params
    state = strategy.init_state(params, exp.data.num_clients)
    ids = torch.tensor([1, 4])
    # Execute
    batch, _ = strategy.train_clients(backend, ids, params, 1, state)
    plain = backend.train(ids, params, 1)
    # Check: two head epochs plus one body epoch of steps (not the run's 3 local steps); body and head moved
    sizes = exp.data.client_sizes[ids]
    per_epoch = (sizes + exp.train.batch_size - 1) // exp.train.batch_size
    assert batch.num_steps.tolist() == (3 * per_epoch).tolist()
    assert not torch.allclose(batch.params[:, shared], params[shared].expand(2, -1))
    assert not torch.allclose(batch.params[:, ~shared], params[~shared].expand(2, -1))
    assert plain.num_steps.tolist() == [3, 3]  # the run's own config (train.local_steps=3) when nothing overrides it
    # the round's loss: both phases' mean losses weighted by their steps (2 head epochs, 1 body epoch)
    head_cfg = dataclasses.replace(exp.train, epochs=2, local_steps=None)
    body_cfg = dataclasses.replace(exp.train, epochs=1, local_steps=None)
    head = backend.train(ids, params, 1, correction=ClientCorrection(frozen=shared), train=head_cfg)
    body = backend.train(
        ids, head.params, 1, correction=ClientCorrection(frozen=~shared), train=body_cfg, stream="fedrep_body"
    )
    assert torch.equal(batch.params, body.params)
    assert torch.allclose(batch.train_loss, (2 * head.train_loss + body.train_loss) / 3, atol=1e-6)
    backend.close()


# ---- gossip: a node merges the shared entries and keeps its own local ones ---------------------------
def test_gossip_merge_keeps_the_nodes_own_local_layers():
    # Prepare: node 0 merges with two neighbours of unequal sizes
    layout = Layout.from_module(MLP(3, 2, [2]))
    strategy = PersonalLayers()
    local = ~strategy.shared_mask(layout)
    g = torch.Generator().manual_seed(0)
    models = torch.randn(3, layout.size, generator=g) * torch.tensor([1.0, 1e6, 1e-3]).view(3, 1)
    members = torch.tensor([4, 0, 7])
    sizes = torch.tensor([3, 1, 6])
    info = merge_info(members, sizes, 2, 8, layout, models[0], torch.tensor([0.5, 0.25, 0.25]), {}, None)
    # Execute
    merged, _ = strategy.aggregate(models, info, {})
    # Check
    assert torch.equal(merged[local], models[0][local])
    expected = (3 * models[0] + 1 * models[1] + 6 * models[2]) / 10
    assert torch.allclose(merged[~local], expected[~local], rtol=1e-6)


def test_a_sync_gossip_round_of_fedper_merges_only_the_shared_entries(tmp_path):
    # Prepare: one round on a ring of 4 nodes (train, then merge with both neighbours), checkpointed
    from sim.resume import read_checkpoint
    from sim.run import run_experiment

    overrides = ("mode=gossip", "topology=ring", "num_clients=4", "rounds=1", "strategy=fedper", "checkpoint.every=1")
    cfg = compose_cfg(*overrides)
    exp = build_experiment(cfg)
    # Execute
    run_experiment(cfg, tmp_path)
    nodes = read_checkpoint(tmp_path)["params"]
    # Check: each node's own trained head, and the by-samples average of its and its neighbours' bodies
    backend = SequentialBackend()
    backend.setup(exp.setup)
    trained = backend.train(torch.arange(4), exp.initial_params, 1).params
    local = ~exp.strategy.shared_mask(exp.layout)
    sizes = exp.data.client_sizes.to(torch.float32)
    for i in range(4):
        ring = [i, (i - 1) % 4, (i + 1) % 4]
        body = (sizes[ring] @ trained[ring]) / sizes[ring].sum()
        assert torch.allclose(nodes[i][local], trained[i][local], atol=1e-6)
        assert torch.allclose(nodes[i][~local], body[~local], atol=1e-5)


# ---- FL runs: bytes, checkpoints and resume ------------------------------------------------------
def test_a_resumed_fedper_run_equals_the_uninterrupted_run_and_sends_the_body_only(tmp_path):
    # Prepare
    import pandas as pd

    from sim.resume import read_checkpoint
    from sim.run import run_experiment

    args = (*SMALL, "strategy=fedper", "model.hidden=[8]", "checkpoint.every=1", "eval_every=1")
    # Execute: 4 rounds at once; 2 rounds, then resumed from the checkpoint to 4
    run_experiment(compose_cfg(*args, "rounds=4"), tmp_path / "long")
    run_experiment(compose_cfg(*args, "rounds=2"), tmp_path / "short")
    saved = read_checkpoint(tmp_path / "short")
    run_experiment(compose_cfg(*args, "rounds=4"), tmp_path / "short", resume_state=saved)
    # Check: the personal rows were in the checkpoint, and everything after the resume is the same
    assert saved["strategy"][PERSONAL].shape == (6, 8 * 10 + 10)  # the head net.2 of every client
    long, short = read_checkpoint(tmp_path / "long"), read_checkpoint(tmp_path / "short")
    assert torch.equal(long["params"], short["params"])
    assert torch.equal(long["strategy"][PERSONAL], short["strategy"][PERSONAL])
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv").drop(columns="wall_s") for d in ("long", "short"))
    pd.testing.assert_frame_equal(a, b)
    body = 64 * 8 + 8  # net.0 of the digits MLP: what each participant sends (float32)
    assert (a["bytes_up"][1:] == 3 * 4 * body).all() and (a["bytes_down"][1:] == 3 * 4 * body).all()
