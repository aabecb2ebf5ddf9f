"""The run's data, model and strategy, built by gossipsoup from the app's run config.

Server and clients compose gossipsoup's own Hydra config (the ``configs`` package) with the same
overrides and seed, so every client derives the same split and partition without any data moving,
and the server's test split and initial model are the ones gossipsoup's simulator would use.
Each process builds the experiment once (``sim.flower_client.cached_experiment``).
"""

from __future__ import annotations

from pathlib import Path

from sim.experiment import Experiment
from sim.flower_client import cached_experiment

try:
    import tomllib
except ImportError:  # Python 3.10; flwr depends on tomli
    import tomli as tomllib


def run_config(context) -> dict:
    """The run config; Flower's Python ``run_simulation()`` passes none, so the app's defaults then."""
    if context.run_config:
        return dict(context.run_config)
    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


def overrides(run_config, num_clients: int) -> tuple[str, ...]:
    rc = run_config
    return (
        "progress=false",
        f"dataset={rc['dataset']}",
        f"partition={rc['partition']}",
        f"model={rc['model']}",
        f"strategy={rc['strategy']}",
        f"num_clients={int(num_clients)}",
        f"seed={int(rc['seed'])}",
        f"train.epochs={int(rc['local-epochs'])}",
        f"train.batch_size={int(rc['batch-size'])}",
        f"train.lr={float(rc['lr'])}",
        f"rounds={int(rc['num-server-rounds'])}",
        # Flower samples the nodes and runs the clients: gossipsoup's participation model and
        # backend go unused (the cheapest ones are built)
        "backend=sequential",
        "participation=uniform",
        f"participation.clients_per_round={int(num_clients)}",
    )


def experiment(run_config, num_clients: int) -> Experiment:
    """gossipsoup's experiment for this run config, split among ``num_clients`` clients."""
    return cached_experiment(overrides(run_config, num_clients))
