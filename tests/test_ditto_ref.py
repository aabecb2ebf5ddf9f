"""Ditto against a transcription of the authors' algorithm (litian96/ditto, ``flearn/trainers_MTL/ditto.py``).

The transcription is plain torch on a logistic regression's two tensors, step for step as their ``Server.train``
does for a sampled client: on each minibatch, first the personal model ``v_k`` takes
``v - lr (grad F_k(v) + lam (v - w^t))`` with ``w^t`` the round's global model (their ``self.global_model``,
fixed all round), then the client's copy of the global model takes a plain SGD step on the same batch; the
server adds the mean of the copies' differences to ``w^t`` (their ``simple_average``, in float64, onto float32
weights). Every ``v_k`` starts as the initial model (``BaseFedarated.local_models``). What the transcription
takes from gossipsoup is the input only: the data, the participants and each client's minibatch rows. Our side
is the real FL loop (``run_federated``) with ``strategy=ditto`` on both backends, over four rounds of clients of
unequal sizes (Dirichlet labels), one client never sampled.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sim.backends import SequentialBackend, VectorizedBackend
from sim.experiment import build_experiment
from sim.federated import run_federated
from sim.results import MetricsLog
from sim.training import batch_schedule

ROUNDS, LAM = 4, 0.5
CFG = (
    "seed=1",  # client 0 sampled in three rounds, client 4 never
    "num_clients=5",
    "participation.clients_per_round=2",
    "model=logreg",
    "partition=dirichlet",
    "partition.alpha=0.3",
    "train.local_steps=6",
    "train.batch_size=7",
    "train.lr=0.1",
    f"rounds={ROUNDS}",
    "checkpoint.every=null",
    "strategy=ditto",
    f"strategy.lam={LAM}",
)


def grads(layers: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy of ``softmax(x W^T + b)`` (their ``solve_sgd``'s gradients)."""
    w, b = (t.detach().requires_grad_(True) for t in layers)
    loss = F.cross_entropy(x @ w.T + b, y)
    return list(torch.autograd.grad(loss, [w, b]))


def authors_ditto(exp, participants, lam: float, weights: str):
    """Their rounds: returns the global model and every client's personal model as flat vectors."""
    lr = exp.train.lr
    p0 = exp.initial_params.clone()
    state = exp.layout.to_state_dict(p0)
    w0 = [state["linear.weight"].clone(), state["linear.bias"].clone()]  # the layout's order: weight, then bias
    glob = [t.clone() for t in w0]
    local = [[t.clone() for t in w0] for _ in range(exp.data.num_clients)]
    for r, ids in enumerate(participants, start=1):
        diffs, sizes = [], []
        for k in ids.tolist():
            x, y = exp.data.client(k)
            w_k = [t.clone() for t in glob]
            for idx in batch_schedule(len(y), exp.train, exp.setup.generator(r, k)):
                g = grads(local[k], x[idx], y[idx])  # local
                for layer in range(2):
                    eff = g[layer] + lam * (local[k][layer] - glob[layer])
                    local[k][layer] = local[k][layer] - lr * eff
                g = grads(w_k, x[idx], y[idx])  # global
                w_k = [w - lr * gi for w, gi in zip(w_k, g, strict=True)]
            diffs.append([u - v for u, v in zip(w_k, glob, strict=True)])
            sizes.append(float(len(y)))
        if weights == "uniform":  # their simple_average
            share = [1.0 / len(diffs)] * len(diffs)
        else:  # gossipsoup's default: FedAvg's average by samples
            share = [s / sum(sizes) for s in sizes]
        avg = [sum(c * d[layer].double() for c, d in zip(share, diffs, strict=True)) for layer in range(2)]
        glob = [(g + a).float() for g, a in zip(glob, avg, strict=True)]
    flat = lambda layers: torch.cat([t.flatten() for t in layers])  # noqa: E731
    return flat(glob), torch.stack([flat(v) for v in local])


def our_ditto(exp, backend):
    """The real FL loop; returns (global model, personal models [N, P], the participants of each round)."""
    exp.backend = backend
    backend.setup(exp.setup)
    seen = {}

    def round_end(r, params, state):
        seen["state"] = state

    try:
        params = run_federated(exp, MetricsLog(Path("/nonexistent/metrics.csv")), round_end=round_end)
    finally:
        backend.close()
    return params, seen["state"]["personal"]


@pytest.fixture(scope="module")
def exp_for():
    """One experiment per weighting, shared by the tests (the loop changes nothing in it but its backend)."""
    from hydra import compose, initialize_config_module

    built = {}

    def build(weighting="samples"):
        if weighting not in built:
            overrides = ["progress=false", *CFG, f"strategy.weighting={weighting}"]
            with initialize_config_module(config_module="configs", version_base="1.3"):
                built[weighting] = build_experiment(compose(config_name="config", overrides=overrides))
        return built[weighting]

    return build


@pytest.mark.parametrize("weighting", ["uniform", "samples"])
@pytest.mark.parametrize("backend", [SequentialBackend, VectorizedBackend])
def test_global_and_personal_models_equal_the_authors_algorithm_over_rounds(exp_for, weighting, backend):
    # Prepare: the run's own participants (its seeded process), a client never sampled, unequal sizes
    exp = exp_for(weighting)
    participants = [exp.participation.sample(r) for r in range(1, ROUNDS + 1)]
    never = set(range(5)) - {int(k) for ids in participants for k in ids}
    sizes = exp.data.client_sizes.tolist()
    assert never and len(set(sizes)) == 5, (participants, sizes)
    # Execute
    ref_global, ref_personal = authors_ditto(exp, participants, LAM, weighting)
    ours_global, ours_personal = our_ditto(exp, backend())
    # Check
    assert torch.allclose(ours_global, ref_global, atol=1e-5, rtol=0)
    assert torch.allclose(ours_personal, ref_personal, atol=1e-5, rtol=0)
    for k in never:  # never trained: the initial model, as theirs
        assert torch.equal(ours_personal[k], exp.initial_params)
    moved = (ours_personal - exp.initial_params).abs().amax(1)
    assert all(float(moved[k]) > 1e-3 for k in set(range(5)) - never)


def test_the_pull_matters_lam_changes_the_personal_models_not_the_global_one(exp_for):
    """A mutation guard: the transcription with another lambda is far from our run (the check is not vacuous)."""
    exp = exp_for()
    participants = [exp.participation.sample(r) for r in range(1, ROUNDS + 1)]
    ref_global, ref_personal = authors_ditto(exp, participants, 0.0, "samples")
    ours_global, ours_personal = our_ditto(exp, SequentialBackend())
    assert torch.allclose(ours_global, ref_global, atol=1e-5, rtol=0)
    assert (ours_personal - ref_personal).abs().max() > 1e-3
