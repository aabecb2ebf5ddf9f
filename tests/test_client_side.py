"""FedProx, SCAFFOLD, FedDyn and FedNova: the corrected SGD step and each server rule, by hand.

The client side is checked against ``torch.optim.SGD`` on the papers' explicit local objectives
(autograd of ``loss + mu/2 ||w - w0||^2`` and ``loss - <g_k, w>``), the server side against plain
re-implementations of the papers' pseudo-code on tiny problems, FedProx against Flower's own
strategy on the same replies.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sim.errors import ConfigError
from sim.layout import Layout
from sim.training import TrainConfig, clip_rows_, local_train
from strategies import AggregationInfo, FedDyn, FedNova, FedProx, Scaffold, build_strategy
from strategies.client_side import normalizing_norms

LAYOUT = Layout.from_module(nn.Linear(2, 1))  # P = 3 (weight [1, 2], bias [1])


def info(ids, reference, steps=None, lr=0.1, momentum=0.0, samples=None, num_clients=4):
    ids = torch.as_tensor(ids)
    return AggregationInfo(
        client_ids=ids,
        num_samples=torch.as_tensor(samples if samples is not None else [1] * len(ids)),
        round=1,
        num_clients=num_clients,
        layout=LAYOUT,
        reference=reference,
        num_steps=None if steps is None else torch.as_tensor(steps),
        train=TrainConfig(lr=lr, momentum=momentum),
    )


# ---- the client step ----------------------------------------------------------------------------
def _tiny_client():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    layout = Layout.from_module(model)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    return model, layout, layout.flatten(model), x, y


def test_one_step_with_an_offset_is_the_sgd_step_on_the_corrected_gradient():
    # Prepare: one client, one full batch, one step: the known gradient g at w0
    model, layout, w0, x, y = _tiny_client()
    cfg = TrainConfig(batch_size=6, lr=0.5, local_steps=1)
    offset = torch.linspace(-1, 1, layout.size)
    w = w0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(torch.func.functional_call(model, layout.to_state_dict(w), (x,)), y), w)
    # Execute
    out = local_train(model, layout, w0, x, y, cfg, torch.Generator().manual_seed(1), prox=3.0, offset=offset)
    # Assert: w1 = w0 - lr (g + offset); the proximal term is zero at the start model
    torch.testing.assert_close(out.params, w0 - 0.5 * (g + offset), rtol=0, atol=1e-7)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_local_training_equals_torch_sgd_on_the_fedprox_and_feddyn_objective(momentum):
    # Prepare: the explicit local objective L(w) + mu/2 ||w - w0||^2 - <g_k, w>, minimised by torch.optim.SGD
    model, layout, w0, x, y = _tiny_client()
    cfg = TrainConfig(batch_size=6, lr=0.2, local_steps=4, momentum=momentum, weight_decay=0.01)
    mu, memory = 0.7, torch.linspace(0.5, -0.5, layout.size)
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=0.2, momentum=momentum, weight_decay=0.01)
    for _ in range(4):
        opt.zero_grad()
        logits = torch.func.functional_call(model, layout.to_state_dict(w), (x,))
        loss = F.cross_entropy(logits, y) + mu / 2 * ((w - w0) ** 2).sum() - (memory * w).sum()
        loss.backward()
        opt.step()
    # Execute
    out = local_train(model, layout, w0, x, y, cfg, torch.Generator().manual_seed(1), prox=mu, offset=-memory)
    # Assert
    torch.testing.assert_close(out.params, w.detach(), rtol=0, atol=1e-6)
    assert out.steps == 4


def test_clipping_hand_numbers_one_step():
    # Prepare: an offset of norm 5e6 along (0.6, 0.8, 0, ...) swamps the data gradient, so the clipped
    # gradient is 10 * (0.6, 0.8, 0, ...) up to 1e-5 and one step of lr 0.5 moves by (-3, -4, 0, ...)
    model, layout, w0, x, y = _tiny_client()
    offset = torch.zeros(layout.size)
    offset[:2] = torch.tensor([3e6, 4e6])
    cfg = TrainConfig(batch_size=6, lr=0.5, local_steps=1, clip_grad_norm=10.0, weight_decay=0.1)
    # Execute
    out = local_train(model, layout, w0, x, y, cfg, torch.Generator().manual_seed(1), prox=2.0, offset=offset)
    # Assert: weight decay (0.1 * w0) is added after the clip, as torch.optim.SGD adds it after clip_grad_norm_
    expected = w0 * (1 - 0.5 * 0.1)
    expected[:2] -= torch.tensor([3.0, 4.0])
    torch.testing.assert_close(out.params, expected, rtol=0, atol=1e-4)


def test_clipping_leaves_a_gradient_below_the_norm_alone():
    model, layout, w0, x, y = _tiny_client()
    plain = TrainConfig(batch_size=3, lr=0.2, local_steps=6, momentum=0.5)
    clipped = TrainConfig(batch_size=3, lr=0.2, local_steps=6, momentum=0.5, clip_grad_norm=1e3)
    a = local_train(model, layout, w0, x, y, plain, torch.Generator().manual_seed(1), prox=0.3)
    b = local_train(model, layout, w0, x, y, clipped, torch.Generator().manual_seed(1), prox=0.3)
    torch.testing.assert_close(b.params, a.params, rtol=0, atol=0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_clipped_local_training_equals_torch_clip_grad_norm_then_sgd(momentum):
    # Prepare: the FedDyn objective; per step backward, torch's clip_grad_norm_, then torch.optim.SGD with
    # weight decay (which the clip does not see), as in the FedDyn authors' train functions
    model, layout, w0, x, y = _tiny_client()
    alpha, memory, clip = 0.7, torch.linspace(0.5, -0.5, layout.size), 0.3
    cfg = TrainConfig(batch_size=6, lr=0.2, local_steps=5, momentum=momentum, weight_decay=0.01, clip_grad_norm=clip)
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=0.2, momentum=momentum, weight_decay=0.01)
    norms = []
    for _ in range(5):
        opt.zero_grad()
        logits = torch.func.functional_call(model, layout.to_state_dict(w), (x,))
        loss = F.cross_entropy(logits, y) + alpha / 2 * ((w - w0) ** 2).sum() - (memory * w).sum()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_([w], max_norm=clip)))
        opt.step()
    # Execute
    out = local_train(model, layout, w0, x, y, cfg, torch.Generator().manual_seed(1), prox=alpha, offset=-memory)
    # Assert: every step clipped (so the test tests the clip), and the same model
    assert min(norms) > clip
    torch.testing.assert_close(out.params, w.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "ten", True])
def test_bad_clip_norm_is_refused_naming_the_field(make_cfg, value):
    cfg = make_cfg().train
    cfg.clip_grad_norm = value
    with pytest.raises(ConfigError, match="train.clip_grad_norm"):
        TrainConfig.from_config(cfg)
    assert TrainConfig.from_config(make_cfg("train.clip_grad_norm=10").train).clip_grad_norm == 10.0


def test_clip_rows_uses_each_rows_own_norm():
    # rows of norm 5, 0.5 and 0 with max_norm 1: the first scaled by 1 / (5 + 1e-6), the others untouched
    grads = torch.tensor([[3.0, 4.0], [0.3, -0.4], [0.0, 0.0]])
    clip_rows_(grads, 1.0)
    torch.testing.assert_close(grads, torch.tensor([[0.6, 0.8], [0.3, -0.4], [0.0, 0.0]]), rtol=1e-6, atol=0)


# ---- server rules against the papers' pseudo-code -----------------------------------------------
def test_fedprox_corrects_with_mu_and_averages_like_fedavg():
    x = torch.zeros(3)
    models = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    rule = FedProx(mu=0.25)
    assert rule.client_correction(torch.tensor([0, 1]), x, {}).prox == 0.25
    assert FedProx(mu=0.0).client_correction(torch.tensor([0]), x, {}) is None  # FedAvg: no extra work
    out, _ = rule.aggregate(models, info([0, 1], x, samples=[1, 3]), {})
    torch.testing.assert_close(out, torch.tensor([2.5, 2.0, 1.5]))


def scaffold_reference(x, c, c_clients, ys, ids, steps, lr, eta_g, n):
    """Karimireddy et al. 2020, Algorithm 1, option II, written out per client."""
    dy, dc = [], []
    c_clients = c_clients.clone()
    for y, i, k in zip(ys, ids, steps, strict=True):
        c_plus = c_clients[i] - c + (x - y) / (k * lr)
        dy.append(y - x)
        dc.append(c_plus - c_clients[i])
        c_clients[i] = c_plus
    return x + eta_g * torch.stack(dy).mean(0), c + len(ids) / n * torch.stack(dc).mean(0), c_clients


def test_scaffold_matches_the_paper_over_rounds_and_keeps_absent_clients_state():
    # Prepare: N = 4 clients, two rounds with different participants and unequal local steps
    rule = Scaffold(server_lr=0.5)
    x = torch.tensor([0.1, -0.2, 0.3])
    state = rule.init_state(x, 4)
    ref = (x.clone(), torch.zeros(3), torch.zeros(4, 3))
    g = torch.Generator().manual_seed(3)
    for ids, steps in (([0, 2], [3, 5]), ([1, 2, 3], [2, 2, 7])):
        models = ref[0] + torch.randn(len(ids), 3, generator=g)
        before = state["c_clients"].clone()
        corr = rule.client_correction(torch.tensor(ids), x, state)
        torch.testing.assert_close(corr.offsets, state["c"] - state["c_clients"][ids])
        # Execute
        x, state = rule.aggregate(models, info(ids, x, steps=steps, lr=0.1), state)
        ref = scaffold_reference(*ref, models, ids, steps, 0.1, 0.5, 4)
        # Assert
        torch.testing.assert_close(x, ref[0])
        torch.testing.assert_close(state["c"], ref[1])
        torch.testing.assert_close(state["c_clients"], ref[2])
        absent = [i for i in range(4) if i not in ids]
        torch.testing.assert_close(state["c_clients"][absent], before[absent])  # keyed by client id
    assert state["c_clients"][0].abs().sum() > 0 and state["c"].abs().sum() > 0


def test_scaffold_hand_numbers_one_client():
    # x = 0, c = 0, one client of N = 2 moved to y = [-0.6, 0, 0.3] in K = 3 steps of lr = 0.1
    rule = Scaffold()
    x = torch.zeros(3)
    state = rule.init_state(x, 2)
    y = torch.tensor([[-0.6, 0.0, 0.3]])
    out, state = rule.aggregate(y, info([1], x, steps=[3], lr=0.1, num_clients=2), state)
    torch.testing.assert_close(out, y[0])
    torch.testing.assert_close(state["c_clients"][1], torch.tensor([2.0, 0.0, -1.0]))  # (x - y) / (K lr)
    torch.testing.assert_close(state["c"], torch.tensor([1.0, 0.0, -0.5]))  # |S|/N mean of the deltas


def test_feddyn_matches_the_paper_over_rounds():
    # Acar et al. 2021, Algorithm 1: g_k <- g_k - a (w_k - x); h <- h - a/N sum (w_k - x); x <- mean w_k - h/a
    alpha, n = 0.3, 4
    rule = FedDyn(alpha=alpha)
    x = torch.tensor([0.5, 0.0, -0.5])
    state = rule.init_state(x, n)
    g_ref, h_ref, x_ref = torch.zeros(n, 3), torch.zeros(3), x.clone()
    gen = torch.Generator().manual_seed(5)
    for ids in ([0, 1], [1, 3], [2]):
        corr = rule.client_correction(torch.tensor(ids), x, state)
        assert corr.prox == alpha
        torch.testing.assert_close(corr.offsets, -g_ref[ids])
        models = x_ref + torch.randn(len(ids), 3, generator=gen)
        x, state = rule.aggregate(models, info(ids, x), state)
        for k, i in enumerate(ids):
            g_ref[i] = g_ref[i] - alpha * (models[k] - x_ref)
        h_ref = h_ref - alpha / n * (models - x_ref).sum(0)
        x_ref = models.mean(0) - h_ref / alpha
        torch.testing.assert_close(x, x_ref)
        torch.testing.assert_close(state["grad_memory"], g_ref)
        torch.testing.assert_close(state["h"], h_ref)


def test_fednova_normalises_by_local_steps_hand_numbers():
    # two clients with equal data: client 0 took 1 step (update -1), client 1 took 4 steps (update -4)
    x = torch.zeros(3)
    models = torch.tensor([[1.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    out, _ = FedNova().aggregate(models, info([0, 1], x, steps=[1, 4], samples=[10, 10]), {})
    # both moved 1 per step: d = 1, tau_eff = (1 + 4) / 2 -> 2.5
    torch.testing.assert_close(out, torch.tensor([2.5, 0.0, 0.0]))
    out, _ = FedNova().aggregate(models, info([0, 1], x, steps=[1, 4], samples=[30, 10]), {})
    # p = (3/4, 1/4): d = 1, tau_eff = 3/4 * 1 + 1/4 * 4 = 1.75
    torch.testing.assert_close(out, torch.tensor([1.75, 0.0, 0.0]))
    models = torch.tensor([[1.0, 0.0, 0.0], [8.0, 0.0, 0.0]])
    out, _ = FedNova().aggregate(models, info([0, 1], x, steps=[1, 4], samples=[30, 10]), {})
    # d = 3/4 * 1 + 1/4 * 2 = 1.25; tau_eff 1.75 -> 2.1875, where FedAvg gives 2.75
    torch.testing.assert_close(out, torch.tensor([2.1875, 0.0, 0.0]))


def test_fednova_momentum_norm_is_the_sum_of_the_momentum_coefficients():
    rho, tau = 0.9, 5
    expected = sum((1 - rho**s) / (1 - rho) for s in range(1, tau + 1))  # the authors' local_normalizing_vec
    assert float(normalizing_norms(torch.tensor([tau]), rho)[0]) == pytest.approx(expected)
    assert normalizing_norms(torch.tensor([3, 0]), 0.0).tolist() == [3.0, 0.0]


def test_flower_fedprox_and_ours_give_the_same_global_model():
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedProx as FlowerFedProx

    from sim.flower_client import model_message
    from strategies.flower import GossipsoupStrategy, from_arrayrecord, to_arrayrecord

    layout = Layout.from_module(nn.Linear(3, 2))
    start = torch.linspace(-1.0, 1.0, layout.size)
    replies = []
    for node, n in {11: 5, 22: 40, 33: 13}.items():
        params = start + 0.3 * torch.randn(layout.size, generator=torch.Generator().manual_seed(node))
        ins = model_message(layout, start, {"server-round": 1}, node_id=node)
        content = RecordDict({"arrays": to_arrayrecord(layout, params), "metrics": MetricRecord({"num-examples": n})})
        replies.append(Message(content, reply_to=ins))
    theirs, _ = FlowerFedProx(proximal_mu=0.1).aggregate_train(1, replies)
    mine, _ = GossipsoupStrategy(FedProx(mu=0.1), layout, initial_params=start).aggregate_train(1, replies)
    np.testing.assert_allclose(
        from_arrayrecord(layout, mine).numpy(), from_arrayrecord(layout, theirs).numpy(), atol=1e-6
    )
    assert not np.allclose(from_arrayrecord(layout, mine).numpy(), start.numpy(), atol=0.05)


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("fedprox", "mu", -0.1),
        ("fedprox", "mu", "abc"),
        ("feddyn", "alpha", 0.0),
        ("feddyn", "alpha", -1.0),
        ("scaffold", "server_lr", 0.0),
        ("scaffold", "server_lr", float("inf")),
        ("fednova", "server_lr", -1.0),
        ("fednova", "weighting", "by_size"),
    ],
)
def test_bad_values_are_refused_naming_the_field(make_cfg, name, key, value):
    cfg = make_cfg(f"strategy={name}").strategy
    cfg[key] = value
    with pytest.raises(ConfigError, match=f"strategy.{key}"):
        build_strategy(cfg)


def test_server_rules_say_why_gossip_refuses_them_and_refuse_without_state():
    for rule in (Scaffold(), FedDyn(), FedNova()):
        assert "mode=federated" in rule.needs_server
    assert FedProx.needs_server is None and FedProx.client_side and not FedNova.client_side
    with pytest.raises(ConfigError, match="mode=federated"):
        Scaffold().client_correction(torch.tensor([0]), torch.zeros(3), None)
    with pytest.raises(ConfigError, match="local steps"):  # an engine that reports no steps (offline merge)
        FedNova().aggregate(torch.zeros(2, 3), info([0, 1], torch.zeros(3)), {})


def test_local_steps_min_is_checked(make_cfg):
    with pytest.raises(ConfigError, match="train.local_steps_min"):
        TrainConfig.from_config({"local_steps_min": 2})  # no local_steps
    with pytest.raises(ConfigError, match="train.local_steps_min"):
        TrainConfig.from_config({"local_steps": 3, "local_steps_min": 4})
    assert TrainConfig.from_config({"local_steps": 3, "local_steps_min": 1}).local_steps_min == 1


def test_per_client_state_survives_a_run_state_file(tmp_path):
    from sim.run_state import load_state, save_state

    rule = Scaffold()
    x = torch.zeros(3)
    state = rule.init_state(x, 4)
    _, state = rule.aggregate(torch.ones(2, 3), info([1, 3], x, steps=[2, 4], lr=0.5), state)
    save_state(tmp_path / "s.safetensors", {"strategy": state})
    back = load_state(tmp_path / "s.safetensors")["strategy"]
    assert back.keys() == state.keys()
    for key in state:
        assert torch.equal(back[key], state[key])
    assert back["c_clients"].shape == (4, 3) and back["c_clients"][3].tolist() == [-0.5, -0.5, -0.5]
