"""Ditto and local-only training in runs: checkpoints and resume, per-client scores, local-only, refusals.

The algorithm itself (global and personal models over rounds, both backends) is checked against the authors' code
in tests/test_ditto_ref.py. Tiny runs (digits, 5 clients, 3 rounds, an 8-unit MLP), in-process.
"""

from pathlib import Path

import pandas as pd
import pytest
import torch

from sim.backends import SequentialBackend, VectorizedBackend
from sim.errors import ConfigError
from sim.experiment import build_experiment
from sim.federated import run_federated
from sim.results import MetricsLog
from sim.resume import read_checkpoint
from sim.run import run_experiment
from sim.run_state import load_state
from sim.training import evaluate
from strategies.ditto import Ditto, LocalOnly

TINY = ("num_clients=5", "participation.clients_per_round=3", "model.hidden=[8]", "train.local_steps=4")
TINY += ("partition=dirichlet", "partition.alpha=0.3", "rounds=3", "checkpoint.every=null")
EVAL = ("eval.local_test_fraction=0.2", "eval.clients=all")
TIMES = ["wall_s", "client_eval_s"]


def compose_cfg(*overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", *overrides])


def loop(exp, backend):
    """The real FL loop in-process: (final global model, final strategy state, metrics rows)."""
    exp.backend = backend
    backend.setup(exp.setup)
    log, seen = MetricsLog(Path("/nonexistent/metrics.csv")), {}
    try:
        params = run_federated(exp, log, round_end=lambda r, p, s: seen.update(state=s))
    finally:
        backend.close()
    return params, seen["state"], log.rows


@pytest.fixture(scope="module")
def ditto_run(tmp_path_factory):
    """A Ditto run that scores every client and keeps a checkpoint after each round."""
    out = tmp_path_factory.mktemp("ditto")
    extra = (*TINY, *EVAL, "strategy=ditto", "strategy.lam=0.3", "checkpoint.every=1", "checkpoint.keep_every=1")
    run_experiment(compose_cfg(*extra), out)
    return out, extra


def metrics_without_times(run: Path) -> bytes:
    return pd.read_csv(run / "metrics.csv").drop(columns=TIMES).to_csv(index=False).encode()


def test_a_resumed_run_gives_the_uninterrupted_runs_numbers_and_personal_models(ditto_run, tmp_path):
    run, extra = ditto_run
    state = load_state(run / "checkpoint_round1.safetensors")
    assert state["round"] == 1 and state["strategy"]["personal"].shape[0] == 5
    run_experiment(compose_cfg(*extra), tmp_path, resume_state=state)
    assert metrics_without_times(tmp_path) == metrics_without_times(run)
    assert (tmp_path / "clients.csv").read_bytes() == (run / "clients.csv").read_bytes()
    resumed, uninterrupted = read_checkpoint(tmp_path), read_checkpoint(run)
    assert torch.equal(resumed["params"], uninterrupted["params"])
    assert torch.equal(resumed["strategy"]["personal"], uninterrupted["strategy"]["personal"])


def test_per_client_scores_are_the_personal_models_on_their_own_rows(ditto_run):
    run, extra = ditto_run
    exp = build_experiment(compose_cfg(*extra))
    personal = read_checkpoint(run)["strategy"]["personal"]
    table = pd.read_csv(run / "clients.csv")
    last = table[table["round"] == 3]
    assert last["client"].tolist() == list(range(5))
    for k, acc, loss in zip(last["client"], last["accuracy"], last["loss"], strict=True):
        ref_acc, ref_loss = evaluate(exp.model, exp.layout, personal[int(k)], *exp.data.local(int(k)))
        assert acc == ref_acc and loss == pytest.approx(ref_loss, rel=1e-5)
    glob = read_checkpoint(run)["params"]  # the global model scores differently: the columns are the personal ones
    scores = [evaluate(exp.model, exp.layout, glob, *exp.data.local(k))[0] for k in range(5)]
    assert scores != last["accuracy"].tolist()


def test_the_global_model_is_fedavgs(ditto_run):
    """Ditto's server part is FedAvg: the same global model, train loss and bytes as strategy=fedavg."""
    _, extra = ditto_run
    ditto = build_experiment(compose_cfg(*TINY, "strategy=ditto", "strategy.lam=0.3"))
    fedavg = build_experiment(compose_cfg(*TINY, "strategy=fedavg"))
    d_params, _, d_rows = loop(ditto, VectorizedBackend())
    f_params, _, f_rows = loop(fedavg, VectorizedBackend())
    assert torch.equal(d_params, f_params)
    for d, f in zip(d_rows[1:], f_rows[1:], strict=True):
        assert {k: d[k] for k in ("train_loss", "bytes_up", "bytes_down")} == pytest.approx(
            {k: f[k] for k in ("train_loss", "bytes_up", "bytes_down")}, nan_ok=True
        )


@pytest.mark.parametrize("backend", [SequentialBackend, VectorizedBackend])
def test_local_only_trains_dittos_lam_0_personal_models_and_sends_nothing(backend):
    local = build_experiment(compose_cfg(*TINY, "strategy=local_only"))
    ditto = build_experiment(compose_cfg(*TINY, "strategy=ditto", "strategy.lam=0"))
    params, state, rows = loop(local, backend())
    _, d_state, _ = loop(ditto, VectorizedBackend())
    assert torch.equal(params, local.initial_params)  # nothing aggregated
    assert torch.allclose(state["personal"], d_state["personal"], atol=1e-6, rtol=0)
    assert (state["personal"] != local.initial_params).any(1).sum() >= 3  # the participants trained
    assert [r["bytes_up"] for r in rows] == [0] * 4 and [r["bytes_down"] for r in rows] == [0] * 4
    assert all(r["train_loss"] > 0 for r in rows[1:])  # the personal trainings' loss


@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf"), True, "1"])
def test_bad_lambda_is_refused_naming_the_field(lam):
    with pytest.raises(ConfigError) as err:
        Ditto(lam=lam)
    assert err.value.field == "strategy.lam"


def test_lam_0_and_local_only_take_no_pull():
    assert Ditto(lam=0).lam == 0.0 and LocalOnly().lam == 0.0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("mode=gossip",), "strategy"),
        (("mode=gossip", "gossip.schedule=async"), "strategy"),
        (("federated.schedule=async", "async_fl.concurrency=2", "async_fl.buffer_size=2"), "federated.schedule"),
        (("dp=central_fixed",), "dp.name"),
        (("preagg=nnm",), "preagg.name"),
    ],
)
@pytest.mark.parametrize("strategy", ["ditto", "local_only"])
def test_engines_that_cannot_carry_personal_models_refuse_before_any_work(strategy, overrides, field):
    with pytest.raises(ConfigError) as err:
        build_experiment(compose_cfg(*TINY, f"strategy={strategy}", *overrides))
    assert err.value.field == field


@pytest.mark.parametrize("strategy", [Ditto(), LocalOnly()])
def test_flower_refuses_personal_models(strategy):
    from sim.layout import Layout
    from strategies.flower import ReplyAggregator

    with pytest.raises(ConfigError, match="keeps state on each client") as err:  # its own reason, not SCAFFOLD's
        ReplyAggregator(strategy, Layout.from_module(torch.nn.Linear(2, 2)))
    assert err.value.field == "strategy" and err.value.value == strategy.name


def test_server_options_are_fedavgs_and_the_defaults_are_the_shipped_config():
    from strategies import AggregationInfo, FedAvg
    from strategies.client_state import sum_stats as _sum_stats

    exp = build_experiment(compose_cfg(*TINY, "strategy=ditto"))
    assert (exp.strategy.lam, exp.strategy.weighting, exp.strategy.server_lr) == (1.0, "samples", 1.0)
    d = Ditto()
    assert (d.lam, d.weighting, d.server_lr) == (1.0, "samples", 1.0)
    models, ref = torch.tensor([[1.0, 2.0], [3.0, -4.0]]), torch.tensor([0.5, 0.5])
    info = AggregationInfo(torch.tensor([0, 1]), torch.tensor([1, 3]), 1, 2, exp.layout, ref)
    ours = Ditto(server_lr=0.5, weighting="uniform").aggregate(models, info, {})[0]
    assert torch.equal(ours, FedAvg(server_lr=0.5, weighting="uniform").aggregate(models, info, {})[0])
    assert torch.equal(ours, torch.tensor([1.25, -0.25]))  # 0.5 + 0.5 * ([2, -1] - 0.5)
    assert _sum_stats({"retries": 1}, {"retries": 2, "other": 1}) == {"retries": 3, "other": 1}
    mask = LocalOnly().shared_mask(exp.layout)
    assert mask is not None and mask.dtype == torch.bool and mask.shape == (exp.layout.size,) and not mask.any()
