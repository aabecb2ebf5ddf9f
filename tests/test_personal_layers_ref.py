"""FedRep and FedPer against a transcription of the FedRep authors' code (github.com/lgcollins/FedRep).

The transcription follows ``main_fedrep.py`` and ``models/Update.py``'s ``LocalUpdate.train`` on a small MLP
in plain torch: each participant copies the global model, puts back its own local (non-``w_glob_keys``)
tensors, trains with one ``torch.optim.SGD`` (momentum 0.5) for the round, switching ``requires_grad`` per
epoch (FedRep: head epochs with the body frozen, then body epochs with the head frozen; FedPer: everything,
every epoch), and the server averages every tensor weighted by the clients' sizes (their ``lens``, LEAF
branch). Both sides get the same batches (our seeded permutations, one per epoch, as their shuffled
DataLoader draws one per epoch) and the same participants, over three rounds of clients of unequal sizes.
Where the authors' code differs by choice, the difference is pinned here and written in
docs/personalization.md.
"""

import copy

import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn

from sim.backends import SequentialBackend
from sim.experiment import build_experiment
from sim.seeding import torch_generator
from sim.training import batch_schedule
from strategies import AggregationInfo
from strategies.personal_layers import BODY_STREAM, PERSONAL

PARTICIPANTS = ([0, 3, 5], [1, 3, 4], [5, 2, 0])
HEAD_EPOCHS, BODY_EPOCHS, EPOCHS = 2, 1, 2
COMMON = (
    "num_clients=6",
    "participation.clients_per_round=3",
    "partition=dirichlet",
    "partition.alpha=0.3",
    "model.hidden=[8]",
    "train.lr=0.05",
    "train.batch_size=5",
    "train.momentum=0.5",
    f"train.epochs={EPOCHS}",
    "progress=false",
)


def experiment(*overrides: str):
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return build_experiment(compose(config_name="config", overrides=[*COMMON, *overrides]))


@pytest.fixture(scope="module")
def fedrep():
    return experiment("strategy=fedrep", f"strategy.head_epochs={HEAD_EPOCHS}", f"strategy.body_epochs={BODY_EPOCHS}")


@pytest.fixture(scope="module")
def fedper():
    return experiment("strategy=fedper")


def ours(exp):
    """(global models of each round, every client's model at the end) from the strategy's own hooks."""
    backend = SequentialBackend()
    backend.setup(exp.setup)
    strategy = exp.strategy
    strategy.shared_mask(exp.layout)
    params = exp.initial_params.clone()
    state = strategy.init_state(params, exp.data.num_clients)
    history = []
    for r, ids in enumerate(PARTICIPANTS, start=1):
        ids_t = torch.tensor(ids)
        batch, state = strategy.train_clients(backend, ids_t, params, r, state)
        info = AggregationInfo(ids_t, batch.num_samples, r, exp.data.num_clients, exp.layout, params)
        params, state = strategy.aggregate(batch.params, info, state)
        history.append(params)
    backend.close()
    assert state[PERSONAL].shape == (6, int((~strategy.shared_mask(exp.layout)).sum()))
    return history, strategy.personal_models(torch.arange(6), params, state)


def epochs_of(exp, stream: str, round_: int, client: int, epochs: int) -> list[list[torch.Tensor]]:
    """The client's batches, one list per epoch (each epoch one permutation of its rows)."""
    n = int(exp.data.client_sizes[client])
    cfg = exp.train.__class__(epochs=epochs, batch_size=exp.train.batch_size)
    batches = batch_schedule(n, cfg, torch_generator(exp.setup.seed, stream, round_, client))
    per_epoch = -(-n // cfg.batch_size)
    return [batches[e * per_epoch : (e + 1) * per_epoch] for e in range(epochs)]


def theirs(exp, alg: str, set_to_none: bool = True):
    """The authors' main loop and LocalUpdate.train, transcribed (weight decay 0: see the module docstring)."""
    net_glob = exp.layout.load_into(copy.deepcopy(exp.model), exp.initial_params)
    head = set(n for n in exp.layout.names if n.startswith("net.2."))  # <last>: the MLP's output layer
    w_glob_keys = [n for n in net_glob.state_dict() if n not in head]
    w_locals = {user: copy.deepcopy(net_glob.state_dict()) for user in range(6)}
    lens = exp.data.client_sizes.tolist()
    history = []
    for r, idxs_users in enumerate(PARTICIPANTS, start=1):
        w_glob, total_len = None, 0
        for idx in idxs_users:
            net_local = copy.deepcopy(net_glob)
            w_local = net_local.state_dict()
            for k in w_locals[idx]:
                if k not in w_glob_keys:
                    w_local[k] = w_locals[idx][k]
            net_local.load_state_dict(w_local)
            x, y = exp.data.client(idx)
            if alg == "fedrep":
                epochs = epochs_of(exp, "train", r, idx, HEAD_EPOCHS) + epochs_of(exp, BODY_STREAM, r, idx, BODY_EPOCHS)
                head_eps = HEAD_EPOCHS
            else:
                epochs, head_eps = epochs_of(exp, "train", r, idx, EPOCHS), 0
            optimizer = torch.optim.SGD(net_local.parameters(), lr=exp.train.lr, momentum=0.5)
            for it, batches in enumerate(epochs):
                for name, param in net_local.named_parameters():
                    if alg != "fedrep":
                        param.requires_grad = True
                    elif it < head_eps:
                        param.requires_grad = name not in w_glob_keys
                    elif it == head_eps:
                        param.requires_grad = name in w_glob_keys
                for rows in batches:
                    net_local.zero_grad(set_to_none=set_to_none)
                    nn.functional.cross_entropy(net_local(x[rows]), y[rows]).backward()
                    optimizer.step()
            w_local = net_local.state_dict()
            total_len += lens[idx]
            if w_glob is None:
                w_glob = {k: v * lens[idx] for k, v in w_local.items()}
            else:
                for k in w_glob:
                    w_glob[k] += w_local[k] * lens[idx]
            w_locals[idx] = copy.deepcopy(w_local)
        assert w_glob is not None
        net_glob.load_state_dict({k: v / total_len for k, v in w_glob.items()})
        history.append(exp.layout.flatten(net_glob))
    clients = []
    for user in range(6):
        model = copy.deepcopy(net_glob)
        model.load_state_dict(
            {k: (v if k in w_glob_keys else w_locals[user][k]) for k, v in net_glob.state_dict().items()}
        )
        clients.append(exp.layout.flatten(model))
    return history, torch.stack(clients)


@pytest.mark.parametrize("alg", ["fedrep", "fedper"])
def test_equals_the_authors_code_over_three_rounds(alg, fedrep, fedper):
    # Prepare
    exp = fedrep if alg == "fedrep" else fedper
    assert len(set(exp.data.client_sizes.tolist())) == 6  # unequal client sizes
    shared = exp.strategy.shared_mask(exp.layout)
    # Execute
    our_history, our_clients = ours(exp)
    their_history, their_clients = theirs(exp, alg)
    # Check: the global body of every round; every client's model (global body, own head) at the end
    for a, b in zip(our_history, their_history, strict=True):
        assert torch.allclose(a[shared], b[shared], atol=1e-5)
    assert torch.allclose(our_clients, their_clients, atol=1e-5)
    # the global model's head: theirs averages the participants' heads, ours keeps the initial one (never sent)
    assert torch.equal(our_history[-1][~shared], exp.initial_params[~shared])
    assert not torch.allclose(their_history[-1][~shared], exp.initial_params[~shared])


def test_the_authors_torch_0_4_drifts_the_frozen_head_in_the_body_epochs(fedrep):
    """Their pinned torch 0.4.1 zeroes gradients instead of dropping them: SGD still steps the frozen head by
    its momentum during the body epoch. Ours holds it fixed, as torch >= 2.0 runs their code."""
    shared = fedrep.strategy.shared_mask(fedrep.layout)
    _, ours_now = theirs(fedrep, "fedrep", set_to_none=True)
    _, old_torch = theirs(fedrep, "fedrep", set_to_none=False)
    gap = (ours_now[:, ~shared] - old_torch[:, ~shared]).abs().max()
    assert gap > 1e-4
