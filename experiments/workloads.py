"""The benchmark workloads the issues define, as Hydra overrides shared by every bench script.

Scripts under experiments/ run as ``python experiments/NAME.py``, so this folder is on sys.path and
they ``import workloads``. Keeping one definition means the ray, vectorized and Flower figures
are measured on the very same data and model.
"""

from __future__ import annotations

from hydra import compose, initialize_config_module

#: W1: FedAvg on Synthetic(1,1), 1000 clients of 10 + floor(lognormal(3, 1)) rows capped at 300,
#: 20% of each client's rows pooled as the test set, 50 clients per round, MLP 60-64-10,
#: 1 local epoch of batch 10, SGD lr 0.05, 50 rounds.
W1 = (
    "progress=false",
    "dataset=synthetic",
    "dataset.alpha=1",
    "dataset.beta=1",
    "num_clients=1000",
    "dataset.size_offset=10",
    "dataset.size_lognormal_mean=3",
    "dataset.size_lognormal_sigma=1",
    "dataset.size_cap=300",
    "dataset.val_fraction=0",
    "dataset.test_fraction=0.2",
    "participation=uniform",
    "participation.clients_per_round=50",
    "model=mlp",
    "model.hidden=[64]",
    "train.epochs=1",
    "train.batch_size=10",
    "train.lr=0.05",
    "strategy=fedavg",
    "rounds=50",
)

#: The client sizes of W1, used by every workload (the issue fixes them for W1 only; Synthetic's own
#: default, 50 + lognormal(4, 2) uncapped, would give 10,000 nodes millions of rows).
W1_SIZES = (
    "dataset.size_offset=10",
    "dataset.size_lognormal_mean=3",
    "dataset.size_lognormal_sigma=1",
    "dataset.size_cap=300",
)

#: W2: synchronous gossip, 1000 nodes on a random 4-regular graph, MLP 60-32-10, Synthetic(1,1),
#: every node trains every round (1 epoch, batch 10, lr 0.05, gossip averaging), 30 rounds.
W2 = (
    "progress=false",
    "mode=gossip",
    "dataset=synthetic",
    "dataset.alpha=1",
    "dataset.beta=1",
    *W1_SIZES,
    "num_clients=1000",
    "dataset.val_fraction=0",
    "dataset.test_fraction=0.2",
    "topology=random_regular",
    "topology.degree=4",
    "model=mlp",
    "model.hidden=[32]",
    "train.epochs=1",
    "train.batch_size=10",
    "train.lr=0.05",
    "strategy=gossip_avg",
    "rounds=30",
)


def gossip_scale(nodes: int, rounds: int, model: str = "mlp") -> tuple[str, ...]:
    """The scale runs: W2's gossip on ``nodes`` nodes; accuracy of 100 sampled nodes, first and last round.

    ``model="mlp"`` is MLP 60-32-10 (the 10,000-node run), ``"logreg"`` logistic regression (100,000).
    """
    model_args = ("model=mlp", "model.hidden=[32]") if model == "mlp" else ("model=logreg",)
    base = tuple(a for a in W2 if not a.startswith("model"))
    return (
        *base,
        f"num_clients={nodes}",
        f"rounds={rounds}",
        *model_args,
        f"eval_every={rounds}",
        "gossip.eval_nodes=100",
    )


def compose_workload(workload: tuple[str, ...], *overrides: str):
    """The project's config for a workload, with extra overrides applied last."""
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose(config_name="config", overrides=[*workload, *overrides])
