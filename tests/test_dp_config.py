"""The ``dp`` config group: checks before any work, the accountant, target epsilon, a whole run."""

import math

import pandas as pd
import pytest

from sim.errors import ConfigError
from sim.experiment import validate_config
from sim.privacy import WITHOUT_REPLACEMENT, epsilon_after, noise_for_target
from sim.run import run_experiment
from strategies import build_strategy
from strategies.dp import CentralDP, LocalDP, build_dp

SMALL = ("num_clients=6", "participation.clients_per_round=3", "rounds=3", "model.hidden=[16]")


def _refused(make_cfg, field, *overrides):
    with pytest.raises(ConfigError) as info:
        validate_config(make_cfg(*overrides))
    assert info.value.field == field, str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    "override,field",
    [
        ("dp.noise_multiplier=-0.1", "dp.noise_multiplier"),
        ("dp.clipping_norm=0", "dp.clipping_norm"),
        ("dp.clipping_norm=-1", "dp.clipping_norm"),
        ("dp.delta=0", "dp.delta"),
        ("dp.delta=1", "dp.delta"),
        ("dp.target_epsilon=0", "dp.target_epsilon"),
        ("dp.target_epsilon=inf", "dp.target_epsilon"),
        ("dp.side=middle", "dp.side"),
        ("dp.sampling_amplification=1", "dp.sampling_amplification"),
    ],
)
def test_bad_central_values_are_refused(make_cfg, override, field):
    _refused(make_cfg, field, "dp=central_fixed", override)


@pytest.mark.parametrize(
    "override,field",
    [
        ("dp.target_quantile=1.5", "dp.target_quantile"),
        ("dp.target_quantile=-0.1", "dp.target_quantile"),
        ("dp.clip_lr=0", "dp.clip_lr"),
        ("dp.clipped_count_stddev=-1", "dp.clipped_count_stddev"),
        ("dp.variant=tff", "dp.variant"),
    ],
)
def test_bad_adaptive_values_are_refused(make_cfg, override, field):
    _refused(make_cfg, field, "dp=central_adaptive", override)


@pytest.mark.parametrize("override,field", [("dp.epsilon=0", "dp.epsilon"), ("dp.sensitivity=-1", "dp.sensitivity")])
def test_bad_local_values_are_refused(make_cfg, override, field):
    _refused(make_cfg, field, "dp=local", override)


def test_unreachable_target_epsilon_is_refused_before_any_work(make_cfg):
    message = _refused(make_cfg, "dp.target_epsilon", "dp=central_fixed", "dp.target_epsilon=1e-9")
    assert "50 round(s)" in message


def test_adaptive_noise_too_large_for_the_count_noise_is_refused(make_cfg):
    # 10 clients per round: sigma_b = 0.5 by default, so z must stay below 1
    message = _refused(make_cfg, "dp.clipped_count_stddev", "dp=central_adaptive", "dp.noise_multiplier=1.0")
    assert "z = 1" in message


def test_gossip_and_history_dependent_participation_are_refused(make_cfg):
    _refused(make_cfg, "dp", "dp=central_fixed", "mode=gossip", "topology=ring")
    _refused(make_cfg, "participation", "dp=central_fixed", "participation=markov")


def test_sampling_rate_and_clients_per_round_come_from_the_participation(make_cfg):
    cfg = make_cfg("dp=central_fixed", "num_clients=20", "participation.clients_per_round=5")
    uniform = build_dp(cfg.dp, build_strategy(cfg.strategy), cfg)
    cfg = make_cfg(
        "dp=central_fixed", "participation=bernoulli", "participation.probability=constant", "participation.p=0.2"
    )
    bernoulli = build_dp(cfg.dp, build_strategy(cfg.strategy), cfg)
    cfg = make_cfg("dp=central_fixed", "dp.sampling_amplification=false")
    no_amplification = build_dp(cfg.dp, build_strategy(cfg.strategy), cfg)

    assert isinstance(uniform, CentralDP) and (uniform.num_sampled_clients, uniform.accounting.sample_rate) == (5, 0.25)
    assert isinstance(bernoulli, CentralDP) and bernoulli.num_sampled_clients == pytest.approx(4.0)
    assert bernoulli.accounting.sample_rate == 0.2
    assert isinstance(no_amplification, CentralDP) and no_amplification.accounting.sample_rate == 1.0


def test_target_epsilon_sets_the_noise_for_the_runs_rounds(make_cfg):
    """10 of 20 clients a round: replace-one sensitivity 2 C / m, so the accountant sees z / 2."""
    cfg = make_cfg("dp=central_fixed", "dp.target_epsilon=3.0", "rounds=40", "num_clients=20")
    dp = build_dp(cfg.dp, build_strategy(cfg.strategy), cfg)
    z = dp.accounting.noise_multiplier

    assert epsilon_after(40, 0.5, z / 2, 1e-5, WITHOUT_REPLACEMENT) <= 3.0
    assert epsilon_after(40, 0.5, z * 0.97 / 2, 1e-5, WITHOUT_REPLACEMENT) > 3.0  # not much more noise than needed
    assert z == 2 * noise_for_target(3.0, 1e-5, 0.5, 40, WITHOUT_REPLACEMENT) and dp.noise_std(1.0) == pytest.approx(
        z / 10
    )


def test_local_dp_noise_is_localdpmods(make_cfg):
    cfg = make_cfg("dp=local", "dp.sensitivity=0.5", "dp.epsilon=2.0", "dp.delta=1e-4")
    dp = build_dp(cfg.dp, build_strategy(cfg.strategy), cfg)
    assert isinstance(dp, LocalDP)
    assert dp.std == pytest.approx(0.5 * math.sqrt(2 * math.log(1.25 / 1e-4)) / 2.0, rel=1e-12)


@pytest.mark.slow
def test_central_fixed_run_reports_growing_epsilon(make_cfg, tmp_path):
    run_experiment(make_cfg(*SMALL, "dp=central_fixed", "dp.noise_multiplier=0.8", "dp.clipping_norm=5.0"), tmp_path)
    metrics = pd.read_csv(tmp_path / "metrics.csv")

    eps = metrics["dp_epsilon"].tolist()
    assert eps[0] != eps[0] or eps[0] == 0  # round 0: nothing released (empty cell)
    assert 0 < eps[1] < eps[2] < eps[3]
    assert eps[3] == pytest.approx(epsilon_after(3, 0.5, 0.4, 1e-5, WITHOUT_REPLACEMENT), rel=1e-9)
    assert metrics["dp_delta"].iloc[1:].eq(1e-5).all()


@pytest.mark.slow
def test_a_resumed_adaptive_dp_run_equals_the_uninterrupted_run(tmp_path):
    """The adaptive norm and the accountant's total travel in the checkpoint; the noise is a function of the round."""
    from tests.test_resume import _run, assert_same_run

    args = (*SMALL[:2], "model.hidden=[8]", "save_model=true", "progress=false", "train.epochs=1", "checkpoint.every=1")
    args += ("dp=central_adaptive", "dp.noise_multiplier=0.5", "dp.clipped_count_stddev=1.0")
    assert _run(tmp_path, *args, "rounds=4", "hydra.run.dir=long").returncode == 0
    assert _run(tmp_path, *args, "rounds=2", "hydra.run.dir=short").returncode == 0
    extended = _run(tmp_path, "resume=short", "rounds=4")

    assert extended.returncode == 0, extended.stderr[-2000:]
    assert_same_run(tmp_path / "short", tmp_path / "long")
    clip = pd.read_csv(tmp_path / "long" / "metrics.csv")["dp_clip_norm"]
    assert clip.iloc[1:].nunique() == 4  # the norm moved every round


@pytest.mark.slow
def test_a_target_epsilon_run_records_its_noise_and_final_epsilon(tmp_path):
    """``python -m sim`` with dp.target_epsilon: the noise found is in summary.json and the log, the final
    epsilon in summary.json's ``final`` and in the report's tables; dp_clip_norm is filled under fixed clipping."""
    import json

    from forked_cli import run_module  # a real `python -m` process without 2-3 s of imports

    args = ("dataset=digits", "model=logreg", "num_clients=20", "participation.clients_per_round=5", "rounds=2")
    args += ("progress=false", "dp=central_fixed", "dp.target_epsilon=4", "dp.clipping_norm=0.5", "hydra.run.dir=run")
    done = run_module("sim", list(args), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")

    z = noise_for_target(4.0, 1e-5, 0.25, 2, WITHOUT_REPLACEMENT) * 2
    assert summary["dp"]["noise_multiplier"] == pytest.approx(z, rel=1e-12)
    assert summary["dp"]["neighbouring"] == "replace one client's data" and summary["dp"]["sample_rate"] == 0.25
    assert f"noise multiplier {z:.6g} meets dp.target_epsilon=4" in done.stderr + done.stdout
    assert summary["final"]["dp_epsilon"] == metrics["dp_epsilon"].iloc[-1] <= 4.0
    assert summary["final"]["dp_epsilon"] > 3.9  # the search stops within 0.1% of the noise needed
    assert metrics["dp_clip_norm"].iloc[1:].eq(0.5).all()

    report = run_module("sim.report", ["run", "--out", "report"], tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    runs = pd.read_parquet(tmp_path / "report" / "runs.parquet")
    assert runs["dp_epsilon"].iloc[0] == pytest.approx(summary["final"]["dp_epsilon"], rel=1e-12)
    assert f"{summary['final']['dp_epsilon']:.3f}" in (tmp_path / "report" / "report.md").read_text()
