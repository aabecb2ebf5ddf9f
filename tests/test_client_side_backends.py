"""Client corrections, unequal local steps and the ``start_loss`` extra give the same numbers on every backend.

Each rule runs a few FL rounds through the loop's own steps (correction from the strategy, training
on the backend, aggregation with the reported local steps) on the sequential reference and on the
vectorized backend (and, for SCAFFOLD, on Ray actors); the global models and the per-client state
must agree to 1e-5.
"""

import pytest
import torch

from sim.backends import SequentialBackend, VectorizedBackend
from sim.backends.base import client_extras
from sim.experiment import build_experiment
from sim.training import client_local_steps, per_row_losses
from strategies import AggregationInfo

ROUNDS = 3
PARTICIPANTS = ([0, 3, 5], [1, 3, 4], [5, 2, 0])


def experiment(make_cfg, strategy: str, *extra: str):
    return build_experiment(
        make_cfg(
            "num_clients=6",
            "participation.clients_per_round=3",
            "model.hidden=[8]",
            f"strategy={strategy}",
            "train.local_steps=5",
            "train.local_steps_min=1",
            "train.batch_size=8",
            "train.lr=0.05",
            *extra,
        )
    )


def run_rounds(exp, backend, needs=frozenset()):
    """The FL loop's steps for fixed participants; returns (global models, final state, each round's steps)."""
    backend.setup(exp.setup)
    params = exp.initial_params.clone()
    state = exp.strategy.init_state(params, exp.data.num_clients)
    history, steps = [], []
    for r, ids in enumerate(PARTICIPANTS, start=1):
        ids_t = torch.tensor(ids)
        correction = exp.strategy.client_correction(ids_t, params, state)
        batch = backend.train(ids_t, params, r, needs, correction=correction)
        info = AggregationInfo(
            client_ids=batch.client_ids,
            num_samples=batch.num_samples,
            round=r,
            num_clients=exp.data.num_clients,
            layout=exp.layout,
            reference=params,
            extras=batch.extras,
            num_steps=batch.num_steps,
            train=exp.train,
        )
        params, state = exp.strategy.aggregate(batch.params, info, state)
        history.append(params.clone())
        steps.append(batch.num_steps.tolist())
    backend.close()
    return history, state, steps


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("fedprox", ("strategy.mu=0.5", "train.momentum=0.5")),
        ("scaffold", ("strategy.server_lr=0.8",)),
        ("feddyn", ("strategy.alpha=0.2", "train.weight_decay=0.001")),
        ("fednova", ("train.momentum=0.9",)),
    ],
)
def test_vectorized_equals_sequential_over_rounds(make_cfg, strategy, extra):
    # Prepare
    exp = experiment(make_cfg, strategy, *extra)
    # Execute
    seq, seq_state, seq_steps = run_rounds(exp, SequentialBackend())
    vec, vec_state, vec_steps = run_rounds(exp, VectorizedBackend(chunk_size=2))
    plain = experiment(make_cfg, "fedavg", *[e for e in extra if e.startswith("train.")])
    fedavg, _, _ = run_rounds(plain, SequentialBackend())
    # Assert
    assert seq_steps == vec_steps
    assert len({s for round_ in seq_steps for s in round_}) > 1  # unequal local work
    for r in range(ROUNDS):
        torch.testing.assert_close(vec[r], seq[r], rtol=0, atol=1e-5)
    for key, value in seq_state.items():
        torch.testing.assert_close(vec_state[key], value, rtol=0, atol=1e-5)
    assert (seq[-1] - fedavg[-1]).abs().max() > 1e-4  # the rule changed something


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("feddyn", ("strategy.alpha=0.2", "train.weight_decay=0.001")),  # plain SGD: prox joins weight decay
        ("feddyn", ("strategy.alpha=0.2", "train.momentum=0.5")),
        ("scaffold", ()),
    ],
)
def test_clipped_gradients_agree_across_backends_and_change_the_run(make_cfg, strategy, extra):
    # Prepare: a norm below most local gradients, so clients clip on some steps; each client by its own norm
    exp = experiment(make_cfg, strategy, *extra, "train.clip_grad_norm=0.3")
    # Execute
    seq, seq_state, _ = run_rounds(exp, SequentialBackend())
    vec, vec_state, _ = run_rounds(exp, VectorizedBackend(chunk_size=2))
    unclipped, _, _ = run_rounds(experiment(make_cfg, strategy, *extra), SequentialBackend())
    # Assert
    for r in range(ROUNDS):
        torch.testing.assert_close(vec[r], seq[r], rtol=0, atol=1e-5)
    for key, value in seq_state.items():
        torch.testing.assert_close(vec_state[key], value, rtol=0, atol=1e-5)
    assert (seq[-1] - unclipped[-1]).abs().max() > 1e-3


def test_unequal_local_steps_are_drawn_per_client_and_round(make_cfg):
    exp = experiment(make_cfg, "fedavg")
    a = client_local_steps(exp.train, 0, [1, 1, 2], [4, 5, 4])
    assert a.tolist() == client_local_steps(exp.train, 0, [1, 1, 2], [4, 5, 4]).tolist()
    draws = client_local_steps(exp.train, 0, [1] * 200, list(range(200)))
    assert set(draws.tolist()) == {1, 2, 3, 4, 5}
    assert client_local_steps(experiment(make_cfg, "fedavg", "train.local_steps_min=null").train, 0, [1], [0]) is None


def test_start_loss_is_each_clients_loss_at_its_start_model(make_cfg):
    # Prepare
    exp = experiment(make_cfg, "fedavg")
    ids = torch.tensor([4, 1])
    needs = frozenset({"start_loss"})
    shifted = exp.initial_params + 0.1
    # Execute
    seq = SequentialBackend()
    seq.setup(exp.setup)
    vec = VectorizedBackend()
    vec.setup(exp.setup)
    shared = seq.train(ids, exp.initial_params, 1, needs).extras["start_loss"]
    per_client = vec.train(ids, torch.stack([exp.initial_params, shifted]), 1, needs).extras["start_loss"]
    # Assert
    for k, c in enumerate(ids.tolist()):
        x, y = exp.data.client(c)
        start = exp.initial_params if k == 0 else shifted
        expected = per_row_losses(exp.model, exp.layout, start, x, y, torch.arange(len(y))).mean()
        assert float(per_client[k]) == pytest.approx(float(expected), abs=1e-6)
    x, y = exp.data.client(4)
    own = per_row_losses(exp.model, exp.layout, exp.initial_params, x, y, torch.arange(len(y))).mean()
    assert float(shared[0]) == pytest.approx(float(own), abs=1e-6)
    again = client_extras(exp.setup, ids.tolist(), exp.initial_params.expand(2, -1), needs)["start_loss"]
    torch.testing.assert_close(again, shared)


@pytest.mark.slow
def test_ray_backend_equals_sequential_for_scaffold(make_cfg, ray_session):
    from sim.backends.ray_backend import RayBackend

    exp = experiment(make_cfg, "scaffold")
    seq, seq_state, seq_steps = run_rounds(exp, SequentialBackend())
    ray_run, ray_state, ray_steps = run_rounds(exp, RayBackend(num_actors=2, driver_max_clients=0))
    assert ray_steps == seq_steps
    for r in range(ROUNDS):
        torch.testing.assert_close(ray_run[r], seq[r], rtol=0, atol=1e-5)
    torch.testing.assert_close(ray_state["c_clients"], seq_state["c_clients"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_ray_backend_clips_like_sequential_for_feddyn(make_cfg, ray_session):
    from sim.backends.ray_backend import RayBackend

    exp = experiment(make_cfg, "feddyn", "strategy.alpha=0.2", "train.clip_grad_norm=0.3")
    seq, seq_state, _ = run_rounds(exp, SequentialBackend())
    ray_run, ray_state, _ = run_rounds(exp, RayBackend(num_actors=2, driver_max_clients=0))
    for r in range(ROUNDS):
        torch.testing.assert_close(ray_run[r], seq[r], rtol=0, atol=1e-5)
    torch.testing.assert_close(ray_state["grad_memory"], seq_state["grad_memory"], rtol=0, atol=1e-5)
