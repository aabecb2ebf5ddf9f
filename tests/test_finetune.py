"""Fine-tuning before per-client evaluation (eval.finetune_steps): scores of models trained k more steps by hand
with sim.training.local_train, the run's own numbers unchanged, resume, gossip nodes, refusals. Tiny runs."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from sim.backends import SequentialBackend, VectorizedBackend
from sim.client_eval import client_models
from sim.errors import ConfigError
from sim.experiment import build_experiment
from sim.resume import read_checkpoint
from sim.run import run_experiment
from sim.run_state import load_state
from sim.seeding import torch_generator
from sim.training import evaluate, local_train

TINY = ("num_clients=4", "participation.clients_per_round=2", "model.hidden=[8]", "train.local_steps=3")
TINY += ("partition=dirichlet", "partition.alpha=0.3", "rounds=2", "eval.local_test_fraction=0.2")
EVAL = ("eval.clients=all", "checkpoint.every=1", "checkpoint.keep_every=1")
K = 3


def compose_cfg(*overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", *overrides])


def by_hand(exp, start: torch.Tensor, client: int, steps: int, index: int) -> torch.Tensor:
    """Client ``client`` after ``steps`` local steps from ``start``, batches from ("finetune", index, client)."""
    x, y = exp.data.client(client)
    cfg = replace(exp.train, local_steps=steps, local_steps_min=None)
    return local_train(
        exp.model, exp.layout, start, x, y, cfg, torch_generator(exp.cfg.seed, "finetune", index, client)
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    out = {}
    for k in (0, K):
        run_experiment(compose_cfg(*TINY, *EVAL, f"eval.finetune_steps={k}"), root / str(k))
        out[k] = root / str(k)
    return out


def test_the_runs_own_numbers_and_models_do_not_change(runs):
    plain, tuned = (pd.read_csv(runs[k] / "metrics.csv") for k in (0, K))
    shared = [c for c in plain.columns if not c.startswith("client") and c != "wall_s"]
    assert plain[shared].equals(tuned[shared])
    assert torch.equal(read_checkpoint(runs[0])["params"], read_checkpoint(runs[K])["params"])
    assert not plain["client_accuracy_mean"].equals(tuned["client_accuracy_mean"])


@pytest.mark.parametrize("k", [0, K])
def test_each_client_is_scored_after_k_steps_of_local_train_from_the_global_model(runs, k):
    exp = build_experiment(compose_cfg(*TINY, *EVAL, f"eval.finetune_steps={k}"))
    table = pd.read_csv(runs[k] / "clients.csv")
    for round_ in (0, 2):  # the metrics row's index is the round in synchronous FL
        params = exp.initial_params if round_ == 0 else read_checkpoint(runs[k])["params"]
        rows = table[table["round"] == round_]
        assert rows["client"].tolist() == [0, 1, 2, 3]
        for c, acc, loss in zip(rows["client"], rows["accuracy"], rows["loss"], strict=True):
            model = by_hand(exp, params, int(c), k, round_).params if k else params
            ref_acc, ref_loss = evaluate(exp.model, exp.layout, model, *exp.data.local(int(c)))
            assert acc == pytest.approx(ref_acc, abs=1e-9) and loss == pytest.approx(ref_loss, rel=1e-4, abs=1e-6)


def test_a_resumed_run_draws_the_same_finetuning_batches(runs, tmp_path):
    state = load_state(runs[K] / "checkpoint_round1.safetensors")
    run_experiment(compose_cfg(*TINY, *EVAL, f"eval.finetune_steps={K}"), tmp_path, resume_state=state)
    assert (tmp_path / "clients.csv").read_bytes() == (runs[K] / "clients.csv").read_bytes()


@pytest.mark.parametrize("backend", [SequentialBackend, VectorizedBackend])
def test_personal_models_are_the_start_and_every_backend_agrees(backend):
    exp = build_experiment(compose_cfg(*TINY, "eval.clients=all", "strategy=ditto"))
    exp.backend = backend()
    exp.backend.setup(exp.setup)
    ids = torch.tensor([0, 2, 3])
    state = exp.strategy.init_state(exp.initial_params, 4)
    state["personal"] = state["personal"] + 0.05 * torch.arange(4.0).unsqueeze(1)  # each client its own model
    tuned = client_models(exp, ids, exp.initial_params, state, finetune_steps=2, index=7)
    assert tuned is not None
    for row, c in enumerate(ids.tolist()):
        ref = by_hand(exp, state["personal"][c], c, 2, 7)
        assert ref.steps == 2 and torch.allclose(tuned[row], ref.params, atol=1e-6, rtol=0)
    assert torch.equal(client_models(exp, ids, exp.initial_params, state), state["personal"][ids])  # k = 0
    exp.backend.close()


def test_gossip_nodes_are_fine_tuned_from_their_own_models(tmp_path):
    from sim.gossip import run_gossip
    from sim.results import MetricsLog

    cfg = compose_cfg(*TINY, "eval.clients=all", "eval.finetune_steps=2", "mode=gossip", "topology=ring")
    exp = build_experiment(cfg)
    exp.backend.setup(exp.setup)
    log = MetricsLog(tmp_path / "metrics.csv")
    params = run_gossip(exp, log, lambda row: None)
    log.flush()
    table = pd.read_csv(tmp_path / "clients.csv")
    last = table[table["round"] == 2]
    for c, acc, pooled in zip(last["client"], last["accuracy"], last["test_accuracy"], strict=True):
        model = by_hand(exp, params[int(c)], int(c), 2, 2).params
        assert acc == pytest.approx(evaluate(exp.model, exp.layout, model, *exp.data.local(int(c)))[0], abs=1e-9)
        assert pooled == pytest.approx(evaluate(exp.model, exp.layout, model, exp.data.x_test, exp.data.y_test)[0])


@pytest.mark.parametrize(
    ("block", "value"),
    [("eval.finetune_steps=-1", -1), ("eval.finetune_steps=1.5", 1.5), ("eval.finetune_steps=true", True)],
)
def test_bad_finetune_steps_are_refused_naming_the_field(block, value):
    with pytest.raises(ConfigError) as err:
        build_experiment(compose_cfg(*TINY, "eval.clients=all", block))
    assert err.value.field == "eval.finetune_steps" and err.value.value == value


def test_finetuning_without_per_client_evaluation_is_refused_before_any_work():
    from sim.experiment import validate_config  # the config check that runs before any data are loaded

    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg(*TINY, "eval.finetune_steps=2"))
    assert err.value.field == "eval.finetune_steps" and err.value.value == 2


def test_the_finetuning_config_is_exactly_k_steps_for_every_client():
    from sim.finetune import finetune_config
    from sim.training import TrainConfig

    train = TrainConfig(epochs=3, lr=0.2, momentum=0.5, local_steps=8, local_steps_min=2)
    assert finetune_config(train, 3) == replace(train, local_steps=3, local_steps_min=None)
