"""Attacks change what they must and nothing else, in the engine's glue and in FL and synchronous gossip runs."""

import pandas as pd
import pytest
import torch

from sim.attacks import Attack, AttackConfig, byzantine_ids, flip_labels
from sim.experiment import build_experiment
from sim.run import run_experiment
from strategies import Strategy

TINY = ("dataset=digits", "num_clients=12", "model=logreg", "rounds=3", "partition=iid", "train.epochs=1")
GOSSIP = ("mode=gossip", "topology=ring", "strategy=gossip_avg")


def _attack(name, f, num_clients=6, seed=0, **params):
    return Attack(AttackConfig.from_config({"name": name, "f": f, **params}, num_clients), num_clients, seed)


def _metrics(make_cfg, out, *overrides):
    run_experiment(make_cfg(*TINY, *overrides), out)
    return pd.read_csv(out / "metrics.csv")


# ---- the Byzantine ids and label flipping ---------------------------------------------------------


def test_byzantine_ids_are_a_seeded_sorted_choice():
    ids = byzantine_ids(20, 5, seed=3)
    assert len(ids) == 5 and len(set(ids.tolist())) == 5
    assert torch.equal(ids, ids.sort().values) and int(ids.max()) < 20
    assert torch.equal(ids, byzantine_ids(20, 5, seed=3))
    assert not torch.equal(ids, byzantine_ids(20, 5, seed=4))
    assert len(byzantine_ids(20, 0, seed=3)) == 0


def test_fraction_f_is_rounded_to_a_count_of_clients():
    assert AttackConfig.from_config({"name": "sign_flip", "f": 0.25}, 10).num_byzantine == 2  # 2.5 -> 2 (even)
    assert AttackConfig.from_config({"name": "sign_flip", "f": 0.3}, 10).num_byzantine == 3
    assert AttackConfig.from_config({"name": "sign_flip", "f": 4}, 10).num_byzantine == 4


def test_label_flip_flips_exactly_the_byzantine_clients_training_labels(make_cfg):
    clean = build_experiment(make_cfg(*TINY))
    exp = build_experiment(make_cfg(*TINY, "attack=label_flip", "attack.f=3"))
    byzantine = exp.attack.ids
    client_of_row = torch.repeat_interleave(torch.arange(12), clean.data.client_sizes)
    flipped = torch.isin(client_of_row, byzantine)
    assert torch.equal(exp.data.y[flipped], 9 - clean.data.y[flipped])
    assert torch.equal(exp.data.y[~flipped], clean.data.y[~flipped])
    assert torch.equal(exp.data.x, clean.data.x) and torch.equal(exp.data.offsets, clean.data.offsets)
    assert torch.equal(exp.data.y_test, clean.data.y_test)  # the server's test split is not the clients'


def test_flip_labels_by_hand():
    data = _two_client_data()
    out = flip_labels(data, torch.tensor([1]))
    assert out.y.tolist() == [0, 1, 2, 1, 0, 2] and data.y.tolist() == [0, 1, 2, 1, 2, 0]


def _two_client_data():
    from sim.data import FederatedData

    empty = torch.zeros(0, 1)
    return FederatedData(
        x=torch.zeros(6, 1),
        y=torch.tensor([0, 1, 2, 1, 2, 0]),
        offsets=torch.tensor([0, 3, 6]),  # client 0: rows 0-2, client 1: rows 3-5
        x_val=empty,
        y_val=torch.zeros(0, dtype=torch.int64),
        x_test=empty,
        y_test=torch.zeros(0, dtype=torch.int64),
        num_classes=3,
        input_shape=(1,),
        name="tiny",
    )


# ---- FL: the round's stack -------------------------------------------------------------------------


def test_fl_substitution_crafts_only_the_byzantine_rows_from_the_honest_updates():
    attack = _attack("sign_flip", 2, num_clients=6, seed=0)
    client_ids = torch.arange(6)
    models = torch.arange(18, dtype=torch.float32).reshape(6, 3)
    reference = torch.tensor([1.0, 1.0, 1.0])
    out, count = attack.substitute(models, client_ids, reference, round_=1)
    byzantine = attack.mask
    honest_update = (models[~byzantine] - reference).mean(0)
    assert count == 2
    assert torch.equal(out[~byzantine], models[~byzantine])
    assert torch.allclose(out[byzantine], (reference - honest_update).expand(2, -1))
    assert torch.equal(models, torch.arange(18, dtype=torch.float32).reshape(6, 3))  # the input is not changed


def test_fl_substitution_counts_only_the_byzantine_participants():
    attack = _attack("ipm", 2, num_clients=6, seed=0, eps=0.5)
    honest_only = attack.honest_ids[:3]
    models = torch.randn(3, 4)
    out, count = attack.substitute(models, honest_only, torch.zeros(4), round_=1)
    assert count == 0 and out is models
    one_byzantine = torch.cat([attack.ids[:1], attack.honest_ids[:2]]).sort().values
    out, count = attack.substitute(torch.ones(3, 4), one_byzantine, torch.zeros(4), round_=1)
    assert count == 1 and torch.allclose(out[attack.mask[one_byzantine]], torch.full((1, 4), -0.5))


def test_label_flip_leaves_the_trained_rows_alone():
    attack = _attack("label_flip", 2)
    models = torch.randn(6, 3)
    out, count = attack.substitute(models, torch.arange(6), torch.zeros(3), round_=1)
    assert count == 2 and out is models


def test_gaussian_rows_depend_on_the_round_only():
    attack = _attack("gaussian", 2, mean=0.0, std=1.0)
    models, ids, ref = torch.zeros(6, 5), torch.arange(6), torch.zeros(5)
    first, _ = attack.substitute(models, ids, ref, round_=1)
    again, _ = attack.substitute(models, ids, ref, round_=1)
    other, _ = attack.substitute(models, ids, ref, round_=2)
    byzantine = attack.mask
    assert torch.equal(first, again) and not torch.equal(first[byzantine], other[byzantine])
    assert not torch.equal(first[byzantine][0], first[byzantine][1])  # independent rows


def test_omniscient_attack_without_honest_input_sends_the_reference():
    attack = _attack("alie", 2)
    reference = torch.tensor([3.0, -1.0])
    out, count = attack.substitute(torch.randn(2, 2), attack.ids, reference, round_=1)
    assert count == 2 and torch.equal(out, reference.expand(2, -1))


# ---- gossip: what one honest node receives ----------------------------------------------------------


def test_gossip_receiver_gets_rows_crafted_from_its_honest_neighbours_only():
    attack = _attack("sign_flip", 2, num_clients=6, seed=0)
    params = torch.arange(12, dtype=torch.float32).reshape(6, 2) ** 1.5
    node = int(attack.honest_ids[0])
    senders = torch.tensor([i for i in range(6) if i != node])
    models, count = attack.received(params, node, senders, round_=1)
    byzantine = attack.mask[senders]
    honest_senders = senders[~byzantine]
    expected = params[node] - (params[honest_senders] - params[node]).mean(0)
    assert count == 2
    assert torch.equal(models[0], params[node])
    assert torch.equal(models[1:][~byzantine], params[honest_senders])
    assert torch.allclose(models[1:][byzantine], expected.expand(2, -1))


# ---- whole runs ------------------------------------------------------------------------------------


class CountingFedAvg(Strategy):
    """Plain averaging that records how many Byzantine inputs each call was told about."""

    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def aggregate(self, models, info, state):
        self.seen.append((len(models), info.num_byzantine))
        return models.mean(0), state


def test_fl_strategy_is_told_the_number_of_byzantine_rows(make_cfg, tmp_path):
    from sim.federated import run_federated
    from sim.results import MetricsLog

    exp = build_experiment(make_cfg(*TINY, "attack=sign_flip", "attack.f=4", "participation.clients_per_round=6"))
    exp.strategy = CountingFedAvg()
    exp.backend.setup(exp.setup)
    log = MetricsLog(tmp_path / "metrics.csv")
    run_federated(exp, log)
    exp.backend.close()
    counts = [row["num_byzantine"] for row in log.rows[1:]]
    assert [seen[1] for seen in exp.strategy.seen] == counts
    assert all(k == 6 for k, _ in exp.strategy.seen) and sum(counts) > 0


@pytest.mark.slow
def test_fl_sign_flip_lowers_fedavg_accuracy_and_is_counted(make_cfg, tmp_path):
    full = ("participation.clients_per_round=12",)
    clean = _metrics(make_cfg, tmp_path / "clean", *full)
    attacked = _metrics(make_cfg, tmp_path / "attacked", *full, "attack=sign_flip", "attack.f=4")
    assert "num_byzantine" not in clean
    assert attacked["num_byzantine"].tolist() == [0, 4, 4, 4]
    assert attacked["test_accuracy"].iloc[-1] < clean["test_accuracy"].iloc[-1] - 0.1


@pytest.mark.slow
def test_fl_attack_gives_the_same_metrics_on_sequential_and_vectorized_backends(make_cfg, tmp_path):
    attack = ("attack=alie", "attack.f=3", "participation.clients_per_round=6")
    seq = _metrics(make_cfg, tmp_path / "seq", *attack, "backend=sequential")
    vec = _metrics(make_cfg, tmp_path / "vec", *attack, "backend=vectorized")
    assert seq["num_byzantine"].tolist() == vec["num_byzantine"].tolist()
    assert seq["num_byzantine"].iloc[1:].sum() > 0
    for column in ("test_accuracy", "test_loss", "train_loss"):
        assert seq[column].iloc[1:].tolist() == pytest.approx(vec[column].iloc[1:].tolist(), abs=1e-5)


@pytest.mark.slow
def test_sync_gossip_sign_flip_lowers_honest_accuracy_and_is_counted(make_cfg, tmp_path):
    clean = _metrics(make_cfg, tmp_path / "clean", *GOSSIP)
    attacked = _metrics(make_cfg, tmp_path / "attacked", *GOSSIP, "attack=sign_flip", "attack.f=4")
    assert attacked["num_byzantine"].tolist() == [4, 4, 4, 4]
    assert attacked["byzantine_messages"].iloc[0] == 0 and (attacked["byzantine_messages"].iloc[1:] > 0).all()
    assert attacked["test_accuracy_mean"].iloc[-1] < clean["test_accuracy_mean"].iloc[-1] - 0.05


def test_sync_gossip_statistics_are_over_honest_nodes_only(make_cfg):
    from sim.gossip import SyncGossip
    from sim.gossip.nodes import node_metrics

    exp = build_experiment(make_cfg(*TINY, *GOSSIP, "attack=sign_flip", "attack.f=4"))
    loop = SyncGossip(exp, exp.topology, exp.gossip)
    params = torch.randn(12, exp.layout.size) * 0.1
    params[exp.attack.ids] = 1e3  # Byzantine nodes' own models: nonsense that must not show
    row = loop.evaluate(params)
    data = exp.data
    honest = node_metrics(
        exp.model, exp.layout, params[exp.attack.honest_ids], data.x_test, data.y_test, None, data.x_val, data.y_val
    )
    assert row == honest


def test_sync_gossip_honest_nodes_are_told_their_byzantine_neighbours(make_cfg):
    from sim.gossip import SyncGossip

    exp = build_experiment(make_cfg(*TINY, *GOSSIP, "attack=ipm", "attack.f=4"))
    exp.strategy = CountingFedAvg()
    loop = SyncGossip(exp, exp.topology, exp.gossip)
    params = torch.randn(12, exp.layout.size)
    new, _, _ = loop.mix(params, 1)
    mask = exp.attack.mask
    ring_byzantine = [int(mask[(i - 1) % 12]) + int(mask[(i + 1) % 12]) for i in range(12) if not mask[i]]
    assert [b for _, b in exp.strategy.seen] == ring_byzantine
    assert torch.equal(new[mask], params[mask])  # Byzantine nodes do not merge
    assert loop.byzantine_messages == sum(ring_byzantine)


def test_infinity_rows_are_infinite_and_honest_rows_untouched():
    attack = _attack("infinity", 2)
    models = torch.randn(6, 3)
    out, count = attack.substitute(models, torch.arange(6), torch.zeros(3), round_=1)
    assert count == 2 and torch.isinf(out[attack.mask]).all()
    assert torch.equal(out[~attack.mask], models[~attack.mask])


def test_an_attack_with_no_byzantine_client_is_no_attack(make_cfg):
    assert build_experiment(make_cfg(*TINY, "attack=sign_flip", "attack.f=0")).attack is None
    assert build_experiment(make_cfg(*TINY, "attack=sign_flip", "attack.f=0.01")).attack is None  # 0.12 -> 0
