"""The run's data, model and strategy, built by gossipsoup from the app's run config.

Server and clients compose gossipsoup's own Hydra config (the ``configs`` package) with the same
overrides and seed, so every client derives the same split and partition without any data moving,
and the server's test split and initial model are the ones gossipsoup's simulator would use.
Each process builds the experiment once (``lru_cache``): Flower calls the ClientApp per message.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from sim.experiment import Experiment, build_experiment

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
    return ("progress=false", f"dataset={rc['dataset']}", f"partition={rc['partition']}", f"model={rc['model']}",
            f"strategy={rc['strategy']}", f"num_clients={int(num_clients)}", f"seed={int(rc['seed'])}",
            f"train.epochs={int(rc['local-epochs'])}", f"train.batch_size={int(rc['batch-size'])}",
            f"train.lr={float(rc['lr'])}", f"rounds={int(rc['num-server-rounds'])}",
            # Flower samples the nodes; gossipsoup's own participation model is unused but must be valid
            "participation=uniform", f"participation.clients_per_round={int(num_clients)}")


@lru_cache(maxsize=4)
def _build(items: tuple[str, ...]) -> Experiment:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(items))
    return build_experiment(cfg)


def experiment(run_config, num_clients: int) -> Experiment:
    """gossipsoup's experiment for this run config, split among ``num_clients`` clients."""
    return _build(overrides(run_config, num_clients))
