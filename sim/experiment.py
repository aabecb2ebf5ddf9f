"""From a resolved config to the parts of one run, checking every value before any work starts.

``validate_config`` runs the checks that need no data (it is also what the command line runs on
every job of a sweep before Hydra launches the first one); ``build_experiment`` then loads the data
(whose own checks need the data, e.g. more clients than rows) and assembles model, backend, strategy
and participation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from strategies import Strategy, build_strategy

from .async_fl.config import check_async_fl_run, check_async_fl_strategy, is_async_fl
from .attacks import Attack, AttackConfig, flip_labels
from .attacks.tolerance import check_fl_tolerance, check_gossip_tolerance
from .backends import Backend, TrainingSetup, build_backend
from .client_eval.config import check_eval_config, check_eval_data
from .compress.config import check_compress_run
from .data import FederatedData, load_federated_data, validate_data_config
from .errors import ConfigError
from .gossip.compressed import check_gossip_compress_run
from .gossip.config import GossipConfig
from .layout import Layout
from .models import build_model, check_model_output, validate_model_config
from .participation import build_participation
from .resume import checkpoint_settings
from .schema import check_keys, config_dict
from .system.checks import check_system_run
from .system.deadline import check_deadline
from .tracking import validate_tracker_config
from .training import TrainConfig, image_shape
from .validation import boolean, choice, integer
from .wrapping import wrap_strategy

MODES = ("federated", "gossip")
MAX_EVALS_PER_ROUND = 100  # async gossip: evaluations per wake_interval of simulated time


def _int_at_least(cfg: DictConfig, field: str, minimum: int) -> int:
    return integer(field, cfg.get(field), minimum)


def _build_topology(cfg: DictConfig, seed: int):
    from topologies import build_topology

    return build_topology(cfg.topology, int(cfg.num_clients), seed)


def validate_config(cfg: DictConfig) -> None:
    """Every check that needs no data; raises ConfigError on the first bad value.

    Keys no config file declares come first (a typo must not be reported as some other value's
    problem); the ``gossip`` block is checked in FL runs too, so that a bad value is refused
    whichever mode a sweep runs first.
    """
    check_keys(cfg)
    mode = choice("mode", cfg.get("mode"), MODES)
    topology = cfg.get("topology", {}).get("name")
    if mode == "federated" and topology != "star":
        raise ConfigError(
            "topology.name",
            topology,
            "star in mode=federated (FL is gossip on a star); for other graphs set mode=gossip",
        )
    num_clients = _int_at_least(cfg, "num_clients", 1)
    rounds = _int_at_least(cfg, "rounds", 1)
    if mode == "gossip":
        from topologies import (
            validate_topology_config,  # networkx and scipy: only gossip needs them
        )

        validate_topology_config(cfg.topology, num_clients)
    gossip = GossipConfig.from_config(cfg.get("gossip"))
    _check_gossip_run(gossip, rounds, active=mode == "gossip")
    attack = AttackConfig.from_config(cfg.get("attack"), num_clients)
    _check_attack_run(attack, cfg, mode, gossip)
    check_async_fl_run(cfg)  # federated.schedule (any mode) and, when async, the async_fl block (sim/async_fl)
    _int_at_least(cfg, "eval_every", 1)
    _int_at_least(cfg, "seed", 0)
    boolean("save_model", cfg.get("save_model"), "(write the final model as model.safetensors)")
    boolean("progress", cfg.get("progress", True), "(one progress bar line per run)")
    checkpoint_settings(cfg)
    check_system_run(cfg, mode, num_clients)  # simulated time (sim/system/)
    resume = cfg.get("resume")
    if resume is not None and resume is not True and not isinstance(resume, str):
        raise ConfigError(
            "resume", resume, "null, the folder of a run to continue, or true (continue this command's own folder)"
        )
    validate_tracker_config(cfg.get("logger"))
    validate_data_config(cfg.dataset, cfg.partition, num_clients)
    validate_model_config(cfg.model)
    init = cfg.model.get("init_checkpoint")
    if init and not Path(str(init)).is_file():
        raise ConfigError(
            "model.init_checkpoint",
            str(init),
            "null or the path of an existing .safetensors file",
            "No file exists there.",
        )
    TrainConfig.from_config(cfg.train)
    strategy = wrap_strategy(build_strategy(cfg.strategy), cfg)
    if strategy.offline_only:
        raise ConfigError("strategy", strategy.name, "a rule for FL or gossip runs", strategy.offline_only)
    if mode == "federated" and strategy.gossip_only:
        raise ConfigError("strategy", strategy.name, "a rule for gossip runs (mode=gossip)", strategy.gossip_only)
    if mode == "gossip" and strategy.needs_server:
        raise ConfigError(
            "strategy", strategy.name, "a rule a gossip node can run, or mode=federated", strategy.needs_server
        )
    if mode == "gossip" and strategy.client_side and cfg.get("gossip", {}).get("schedule") == "async":
        raise ConfigError(
            "gossip.schedule",
            "async",
            "sync for a strategy that changes local training",
            f"Strategy {strategy.name} adds a term to every local gradient; asynchronous gossip trains without it.",
        )
    # gossip nodes all take part (its clients_per_round may exceed a small num_clients); asynchronous FL draws its own
    if mode == "federated" and not is_async_fl(cfg):
        build_participation(cfg.participation, num_clients, cfg.seed, rounds=rounds)
        check_fl_tolerance(strategy, cfg.participation, num_clients, attack.num_byzantine)
    check_async_fl_strategy(cfg, strategy)
    check_compress_run(cfg, mode, strategy)  # compress= (sim/compress/): the block, and what FL cannot compress
    check_gossip_compress_run(cfg, mode, strategy)  # strategy=choco and compressed gossip (sim/gossip/compressed.py)
    check_eval_config(cfg)  # the eval block: per-client evaluation and local test rows (sim/client_eval)
    build_backend(cfg.backend)


def _check_attack_run(attack: AttackConfig, cfg: DictConfig, mode: str, gossip: GossipConfig) -> None:
    """Refuse an attack that the run's schedule or backend cannot carry out, before any work."""
    if attack.name == "none":
        return
    if mode == "gossip" and gossip.schedule == "async":
        raise ConfigError(
            "attack.name",
            attack.name,
            "none with gossip.schedule=async",
            "Byzantine nodes run in FL and in synchronous gossip (gossip.schedule=sync) only.",
        )
    if attack.name == "label_flip" and cfg.get("backend", {}).get("noop_train"):
        raise ConfigError(
            "attack.name",
            attack.name,
            "an attack other than label_flip with backend.noop_train=true",
            "Label flipping acts through training, which noop_train skips.",
        )


def _check_gossip_run(gossip: GossipConfig, rounds: int, active: bool) -> None:
    """Asynchronous settings that would leave nothing to report, or queue more evaluations than any run needs.

    The asynchronous run lasts ``rounds * wake_interval``; an evaluation interval longer than that
    would give a run with only the time-0 evaluation, a delay never shorter than the run would
    deliver no model at all, and an interval far below ``wake_interval`` (say wake_interval=1e12
    with eval_interval=1) would queue billions of evaluations. All are refused before any work.
    """
    if not active or gossip.schedule != "async":
        return
    horizon = rounds * gossip.wake_interval
    if gossip.eval_interval < gossip.wake_interval / MAX_EVALS_PER_ROUND:
        raise ConfigError(
            "gossip.eval_interval",
            gossip.eval_interval,
            f"at least gossip.wake_interval / {MAX_EVALS_PER_ROUND} = {gossip.wake_interval / MAX_EVALS_PER_ROUND:g}",
            f"That is {horizon / gossip.eval_interval:.3g} evaluations of every node; time is in units "
            "of gossip.wake_interval, so scale both together.",
        )
    if gossip.eval_interval > horizon:
        raise ConfigError(
            "gossip.eval_interval",
            gossip.eval_interval,
            f"at most the run's length, rounds * gossip.wake_interval = {horizon:g}",
            "Otherwise no evaluation would happen after time 0.",
        )
    shortest = {"constant": gossip.delay_value, "uniform": gossip.delay_low}.get(gossip.delay, 0.0)
    if shortest >= horizon:
        field = "gossip.delay_low" if gossip.delay == "uniform" else "gossip.delay_value"
        raise ConfigError(
            field,
            shortest,
            f"a delay below the run's length, rounds * gossip.wake_interval = {horizon:g}",
            "No message would arrive before the run ends.",
        )


@dataclass
class Experiment:
    """The assembled parts of one run."""

    cfg: DictConfig
    data: FederatedData
    model: torch.nn.Module
    layout: Layout
    initial_params: torch.Tensor
    train: TrainConfig
    strategy: Strategy
    participation: Any
    backend: Backend
    topology: Any = None  # mode=gossip: the communication graph
    gossip: Any = None  # mode=gossip: the GossipConfig
    attack: Attack | None = None  # the Byzantine clients and what they send; None without an attack

    @property
    def setup(self) -> TrainingSetup:
        return TrainingSetup(self.model, self.layout, self.data, self.train, int(self.cfg.seed))

    def validation_fn(self):
        """Held-out accuracy of a flat model on the server's validation split, if there is one."""
        if len(self.data.y_val) == 0:
            return None
        from .training import evaluate

        def validate(params: torch.Tensor) -> float:
            return evaluate(self.model, self.layout, params, self.data.x_val, self.data.y_val)[0]

        return validate


def label_counts(data: FederatedData) -> np.ndarray:
    """``[N, C]`` rows of each label per client (participation may be correlated with it)."""
    client_of_row = torch.repeat_interleave(torch.arange(data.num_clients), data.client_sizes)
    flat = client_of_row * data.num_classes + data.y
    return np.asarray(
        torch.bincount(flat, minlength=data.num_clients * data.num_classes).reshape(data.num_clients, data.num_classes)
    )


def initial_from_checkpoint(path: str, layout: Layout) -> torch.Tensor:
    """Start from a saved model (fine-tuning a pre-trained one); its layout must match the model's."""
    from .checkpoint import load_checkpoint

    saved_layout, params, _ = load_checkpoint(path, "model.init_checkpoint")
    if saved_layout != layout:
        # strict=False: the layouts may differ in length; the first mismatch within the shorter one is reported
        pairs = list(zip(layout.specs, saved_layout.specs, strict=False))
        first = next(((a, b) for a, b in pairs if a.name != b.name or a.shape != b.shape), None)
        detail = (
            f"The first mismatched tensor is {first[0].name} {list(first[0].shape)} (model) against "
            f"{first[1].name} {list(first[1].shape)} (checkpoint)."
            if first
            else f"The model has {len(layout)} tensors, the checkpoint {len(saved_layout)}."
        )
        raise ConfigError("model.init_checkpoint", path, "a checkpoint of the same model", detail)
    return params


def build_experiment(cfg: DictConfig) -> Experiment:
    validate_config(cfg)
    seed = int(cfg.seed)
    strategy = wrap_strategy(build_strategy(cfg.strategy), cfg)
    eval_conf = check_eval_config(cfg)
    data = load_federated_data(cfg.dataset, cfg.partition, int(cfg.num_clients), seed, eval_conf.local_test_fraction)
    check_eval_data(eval_conf, data.local_sizes)
    if strategy.needs_validation and len(data.y_val) == 0:
        raise ConfigError(
            "dataset.val_fraction",
            cfg.dataset.get("val_fraction"),
            "a fraction > 0",
            f"Strategy {strategy.name} scores models on the server-held validation split.",
        )
    gossip = cfg.mode == "gossip"
    if gossip and strategy.requires and cfg.get("gossip", {}).get("schedule") == "async":
        raise ConfigError(
            "gossip.schedule",
            "async",
            "sync for a strategy that needs per-client extras",
            f"Strategy {strategy.name} needs {sorted(strategy.requires)} from every model it "
            "merges; asynchronous gossip does not compute them.",
        )
    attack = _build_attack(cfg, data.num_clients, seed)
    counts = None if gossip else label_counts(data)  # participation follows the clients' true labels
    if attack is not None and attack.name == "label_flip":
        data = flip_labels(data, attack.ids)
    model = build_model(cfg.model, data.spec, data.num_classes, seed)
    # a trial forward pass on two stored rows: a model that cannot take this data set fails here, named
    field = "model.target" if cfg.model.name == "custom" else "model.name"
    check_model_output(model, data.x[:2], data.num_classes, field)
    train = TrainConfig.from_config(cfg.train)
    image_shape(model, train)  # augmentation on data that are not images: refused before any training
    layout = Layout.from_module(model)
    strategy.shared_mask(layout)  # local layers (FedPer, FedBN) naming no tensor or every tensor: refused here
    initial_params = layout.flatten(model)
    if cfg.model.get("init_checkpoint"):
        initial_params = initial_from_checkpoint(cfg.model.init_checkpoint, layout)
    check_deadline(cfg, data.client_sizes, train, layout.size * initial_params.element_size(), data, model)  # system
    topology = _build_topology(cfg, seed) if gossip else None
    if topology is not None and cfg.get("gossip", {}).get("schedule") != "async":
        check_gossip_tolerance(strategy, topology, None if attack is None else attack.mask)
    return Experiment(
        cfg=cfg,
        data=data,
        model=model,
        layout=layout,
        initial_params=initial_params,
        train=train,
        strategy=strategy,
        participation=None
        if gossip or is_async_fl(cfg)
        else build_participation(cfg.participation, int(cfg.num_clients), seed, counts, int(cfg.rounds)),
        backend=build_backend(cfg.backend),
        topology=topology,
        gossip=GossipConfig.from_config(cfg.get("gossip")) if gossip else None,
        attack=attack,
    )


def _build_attack(cfg: DictConfig, num_clients: int, seed: int) -> Attack | None:
    """The run's attack, or None when there is none (or f resolves to no Byzantine client)."""
    config = AttackConfig.from_config(cfg.get("attack"), num_clients)
    return Attack(config, num_clients, seed) if config.active else None


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return config_dict(cfg)
